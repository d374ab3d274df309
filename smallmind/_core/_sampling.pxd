# Token sampling kernels: the hot path of smallmind.sampling.Sampler.
#
# Every function works on caller-owned buffers (the Sampler allocates them once), never
# allocates, and runs without the GIL. "Weights" are unnormalised probabilities
# exp((logit - max_logit) / temperature): the largest is exactly 1 and a token with a
# logit of -inf (banned) has weight exactly 0, so it can never be drawn.
from libc.stdint cimport int32_t, int64_t


# One surviving token of a filtered distribution.
ctypedef struct Candidate:
    float logit
    float weight
    int32_t token


# Weights are summed in blocks of this many tokens so a draw walks n / SAMPLE_BLOCK block
# sums and then one block, instead of the whole vocabulary.
cdef enum:
    SAMPLE_BLOCK = 64
    TOP_P_BUCKETS = 1024   # entries of the bucket_mass / hist scratch below


ctypedef fused token_t:
    int32_t
    int64_t


# Largest of x[0:n] (-inf when n == 0); sets *has_nan when any element is NaN.
cdef float max_scan(const float* x, Py_ssize_t n, bint* has_nan) noexcept nogil
# Index of the first element equal to `value` (n when none).
cdef Py_ssize_t first_index_of(const float* x, Py_ssize_t n, float value) noexcept nogil

# The plain (unfiltered) distribution has weights
#   w[i] = x[i] >= keep_from ? exp((x[i] - x_max) * inv_temp) : 0
# (keep_from = -inf keeps everything; min-p passes x_max + log(min_p)).
# plain_weights stores only block_sums[b] = sum of w over block b of SAMPLE_BLOCK tokens
# (ceil(n / SAMPLE_BLOCK) entries) and returns the total; pick_plain, given the same
# arguments and a target (a uniform draw in [0, 1) times the total), returns the token
# whose cumulative weight first exceeds it, recomputing the weights of one block only.
# A zero-weight token is never returned.
cdef double plain_weights(const float* x, float* block_sums, Py_ssize_t n,
                          float x_max, float inv_temp, float keep_from) noexcept nogil
cdef Py_ssize_t pick_plain(const float* x, const float* block_sums, Py_ssize_t n,
                           float x_max, float inv_temp, float keep_from,
                           double target) noexcept nogil

# The k largest x (ties go to the lower token id) into out[0:k], unordered, with their
# weights unset; returns the smallest of them. 0 < k <= n, x_max = the largest x.
# out and side have room for n candidates; hist holds TOP_P_BUCKETS doubles (side and
# hist are only touched for large k).
cdef float top_k_select(const float* x, Py_ssize_t n, Py_ssize_t k, float x_max,
                        Candidate* out, Candidate* side, double* hist) noexcept nogil
# Every token whose weight exp(x - x_max) could belong to the top-p set (mass `p`) into
# `out`, weights set; returns how many. `w` is scratch of n floats. *total gets the
# weight of the whole vocabulary, *lowest a lower bound on the gathered logits.
cdef Py_ssize_t top_p_candidates(const float* x, Py_ssize_t n, float x_max, double p,
                                 float* w, Candidate* out, double* total,
                                 float* lowest) noexcept nogil
# Reorders c[0:n] (weights set, relative to x_max; every logit >= lowest) so that c[0:m]
# is the smallest highest-weight set whose weight reaches `need`, and returns m (>= 1).
# O(n), no sort. Scratch: side (n Candidates), bucket_mass (TOP_P_BUCKETS doubles).
cdef Py_ssize_t top_p_select(Candidate* c, Py_ssize_t n, double need, float x_max,
                             float lowest, Candidate* side, double* bucket_mass) noexcept nogil
# Keeps (in place, order preserved) the candidates with logit >= keep_from; returns the count.
cdef Py_ssize_t keep_at_least(Candidate* c, Py_ssize_t n, float keep_from) noexcept nogil
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
