# Token sampling kernels: the weights, the draw and the penalties of
# smallmind.sampling.Sampler (the filters are in _select.pxd).
#
# Every function works on caller-owned buffers (the Sampler allocates them once), never
# allocates, and runs without the GIL. "Weights" are unnormalised probabilities
# exp((logit - max_logit) / temperature): the largest is exactly 1 and a token with a
# logit of -inf (banned) has weight exactly 0, so it can never be drawn.
from libc.stdint cimport int32_t, int64_t

from smallmind._core._select cimport Candidate


# Weights are summed in blocks of SAMPLE_BLOCK tokens so a draw walks n / SAMPLE_BLOCK
# block sums and then one block, instead of the whole vocabulary.
cdef extern from "_sampling.h":
    enum: SAMPLE_BLOCK "SM_SAMPLE_BLOCK"


ctypedef fused token_t:
    int32_t
    int64_t


# The plain (unfiltered) distribution has weights
#   w[i] = x[i] >= keep_from ? exp((x[i] - x_max) * inv_temp) : 0
# (keep_from = -inf keeps everything; min-p passes x_max + log(min_p)).
# plain_weights stores only block_sums[b] = sum of w over block b of SAMPLE_BLOCK tokens
# (ceil(n / SAMPLE_BLOCK) entries) and returns the total, the same bits on any n_threads
# (threads of the matmul pool, used for a large vocabulary); pick_plain, given the same
# arguments and a target (a uniform draw in [0, 1) times the total), returns the token
# whose cumulative weight first exceeds it, recomputing the weights of one block only.
# A zero-weight token is never returned.
cdef double plain_weights(const float* x, float* block_sums, Py_ssize_t n,
                          float x_max, float inv_temp, float keep_from, int n_threads) noexcept nogil
cdef Py_ssize_t pick_plain(const float* x, const float* block_sums, Py_ssize_t n,
                           float x_max, float inv_temp, float keep_from,
                           double target) noexcept nogil

# weight = exp((logit - x_max) * inv_temp) for each candidate; returns the sum.
cdef double candidate_weights(Candidate* c, Py_ssize_t n, float x_max, float inv_temp) noexcept nogil
# Index into c of the candidate whose cumulative weight first exceeds `target`.
cdef Py_ssize_t pick_candidate(const Candidate* c, Py_ssize_t n, double target) noexcept nogil

# llama.cpp-style penalties over the token window hist[0:n], in place on x:
# a token seen c > 0 times gets logit / rep (logit > 0) or logit * rep (logit <= 0), then
# logit -= c * frequency + presence. counts (vocab int32, all zero) is scratch and is all
# zero again on return. Returns -1, or the position in hist of an id outside [0, vocab).
cdef Py_ssize_t apply_penalties(float* x, Py_ssize_t vocab, const token_t* hist, Py_ssize_t n,
                                int32_t* counts, float rep, float presence,
                                float frequency) noexcept nogil
