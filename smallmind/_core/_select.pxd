# Token selection kernels (argmax, top-k, top-p, min-p): the filters of the sampler chain
# in smallmind._core._sampling.
#
# Every function works on caller-owned buffers (the Sampler allocates them once), never
# allocates, and runs without the GIL. "Weights" are unnormalised probabilities
# exp(logit - max_logit): the largest is exactly 1 and a token with a logit of -inf
# (banned) has weight exactly 0.
from libc.stdint cimport int32_t


# One surviving token of a filtered distribution.
ctypedef struct Candidate:
    float logit
    float weight
    int32_t token


cdef enum:
    TOP_P_BUCKETS = 1024   # entries of the bucket_mass / hist scratch below
    TOP_K_HEAP_MAX = 128   # top_k_select: larger k gathers and rank-selects (needs side, hist)


# Largest of x[0:n] (-inf when n == 0); sets *has_nan when any element is NaN.
cdef float max_scan(const float* x, Py_ssize_t n, bint* has_nan) noexcept nogil
# Index of the first element equal to `value` (n when none).
cdef Py_ssize_t first_index_of(const float* x, Py_ssize_t n, float value) noexcept nogil

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
