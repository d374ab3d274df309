"""``SamplerCore``, the compiled half of ``smallmind.sampling.Sampler``, and its kernels.

One ``sample()`` call runs llama.cpp's sampler chain over a float32 logits row:
logit bias -> penalties -> top-k -> top-p -> min-p -> temperature -> one uniform draw.
Nothing is allocated per call: the Sampler owns every scratch buffer, sized once for its
vocabulary, and the random draw reads the numpy bit generator's C state directly.

The filters (top-k, top-p, min-p, argmax) are in ``_select.pyx``. Here: the weights and
the draw. Unfiltered (temperature, maybe min-p), one pass sums exp weights per block of
64 tokens (nothing vocabulary-sized is written), then the draw walks the block sums and
recomputes one block's weights. The scalar and vector exp are the same function
(``sm_exp`` of ``_simd.h``, no libm in the hot loops), exactly 1 at the max and exactly
0 for a logit of -inf, so a banned token can never be drawn.
"""
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.math cimport INFINITY, logf
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

from smallmind._core._select cimport (TOP_K_HEAP_MAX, TOP_P_BUCKETS, Candidate, first_index_of,
                                      keep_at_least, max_scan, top_k_select, top_p_candidates,
                                      top_p_select)
from smallmind._core._simd cimport _mm256_loadu_ps, _mm256_storeu_ps, sm_exp, sm_exp_ss
from smallmind._core._matmul cimport parallel_chunks

cimport numpy as cnp

import numpy as np

from smallmind.errors import SamplingError, ShapeError, SmallMindError, TokenizerError

cnp.import_array()


cdef extern from "numpy/random/bitgen.h":
    ctypedef struct bitgen_t:
        void* state
        double (*next_double)(void* st) noexcept nogil


cdef extern from "_sampling.h" nogil:
    double sm_plain_weights(const float* x, float* block_sums, Py_ssize_t n,
                            float x_max, float inv_temp, float keep_from)
    void sm_weights_of_block(const float* x, float* w, Py_ssize_t n, float x_max,
                             float inv_temp, float keep_from)


# ---------------------------------------------------------------------------------------
# The unfiltered distribution


# The block sums of a large vocabulary on several threads of the matmul pool: each chunk of
# blocks is summed as in one pass (blocks start at the same tokens), and the total adds the
# block sums in order, as sm_plain_weights does, so the draw is the same bit for bit.
cdef struct _WeightsJob:
    const float* x
    float* block_sums
    Py_ssize_t n
    Py_ssize_t chunk_blocks
    float x_max, inv_temp, keep_from


cdef enum:
    _SPLIT_WEIGHTS_FROM = 32768   # tokens from which the weights are split over threads
    _WEIGHT_CHUNKS_PER_THREAD = 4


cdef void _weights_chunk(const void* arg, Py_ssize_t c) noexcept nogil:
    cdef const _WeightsJob* job = <const _WeightsJob*>arg
    cdef Py_ssize_t start = c * job.chunk_blocks * SAMPLE_BLOCK
    cdef Py_ssize_t end = min(start + job.chunk_blocks * SAMPLE_BLOCK, job.n)
    sm_plain_weights(job.x + start, job.block_sums + c * job.chunk_blocks, end - start, job.x_max,
                     job.inv_temp, job.keep_from)


cdef double plain_weights(const float* x, float* block_sums, Py_ssize_t n, float x_max,
                          float inv_temp, float keep_from, int n_threads) noexcept nogil:
    cdef _WeightsJob job
    cdef Py_ssize_t b, n_blocks = (n + SAMPLE_BLOCK - 1) // SAMPLE_BLOCK, n_chunks
    cdef double total = 0.0
    if n_threads <= 1 or n < _SPLIT_WEIGHTS_FROM:
        return sm_plain_weights(x, block_sums, n, x_max, inv_temp, keep_from)
    n_chunks = n_threads * _WEIGHT_CHUNKS_PER_THREAD
    job.x, job.block_sums, job.n = x, block_sums, n
    job.chunk_blocks = (n_blocks + n_chunks - 1) // n_chunks
    job.x_max, job.inv_temp, job.keep_from = x_max, inv_temp, keep_from
    parallel_chunks(n_threads, (n_blocks + job.chunk_blocks - 1) // job.chunk_blocks, _weights_chunk, &job)
    for b in range(n_blocks):
        total += block_sums[b]
    return total


cdef Py_ssize_t pick_plain(const float* x, const float* block_sums, Py_ssize_t n,
                           float x_max, float inv_temp, float keep_from,
                           double target) noexcept nogil:
    cdef Py_ssize_t n_blocks = (n + SAMPLE_BLOCK - 1) // SAMPLE_BLOCK
    cdef Py_ssize_t b, i, start, length, chosen = 0, last = 0
    cdef double cum = 0.0
    cdef bint crossed = False
    cdef float w[SAMPLE_BLOCK]
    # Invariant cum <= target: a zero-weight block or token leaves cum unchanged, so it
    # can never be the first to cross the target.
    for b in range(n_blocks):
        if block_sums[b] > 0:
            chosen = b
            if cum + block_sums[b] > target:
                crossed = True
                break
            cum += block_sums[b]
    start = chosen * SAMPLE_BLOCK
    length = min(<Py_ssize_t>SAMPLE_BLOCK, n - start)
    sm_weights_of_block(x + start, w, length, x_max, inv_temp, keep_from)
    for i in range(length):
        if w[i] > 0:
            cum += w[i]
            last = i
            if crossed and cum > target:
                return start + i
    # The target fell in a rounding gap (float block sums vs this double running sum):
    # the last token with weight in the block.
    return start + last


# ---------------------------------------------------------------------------------------
# Weights of the candidates, and the draw


cdef double candidate_weights(Candidate* c, Py_ssize_t n, float x_max, float inv_temp) noexcept nogil:
    # Eight candidates at a time through the vector exp: the logits are strided (one per
    # 12-byte Candidate), so they are staged through a small buffer.
    cdef Py_ssize_t i = 0, j
    cdef double total = 0.0
    cdef float staged[8]
    while i + 8 <= n:
        for j in range(8):
            staged[j] = (c[i + j].logit - x_max) * inv_temp
        _mm256_storeu_ps(staged, sm_exp(_mm256_loadu_ps(staged)))
        for j in range(8):
            c[i + j].weight = staged[j]
            total += staged[j]
        i += 8
    while i < n:
        c[i].weight = sm_exp_ss((c[i].logit - x_max) * inv_temp)
        total += c[i].weight
        i += 1
    return total


cdef inline double _weight_sum(const Candidate* c, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef double total = 0.0
    for i in range(n):
        total += c[i].weight
    return total


cdef Py_ssize_t pick_candidate(const Candidate* c, Py_ssize_t n, double target) noexcept nogil:
    cdef Py_ssize_t i, last = 0
    cdef double cum = 0.0
    for i in range(n):
        if c[i].weight > 0:
            cum += c[i].weight
            last = i
            if cum > target:
                return i
    return last


# ---------------------------------------------------------------------------------------
# Penalties


cdef Py_ssize_t apply_penalties(float* x, Py_ssize_t vocab, const token_t* hist, Py_ssize_t n,
                                int32_t* counts, float rep, float presence,
                                float frequency) noexcept nogil:
    cdef Py_ssize_t j, t
    cdef int32_t c
    cdef float v
    # Two passes over the window keep this O(n) with no O(vocab) clearing: count, then
    # penalise each distinct token once (at its first occurrence) and zero its count.
    for j in range(n):
        t = <Py_ssize_t>hist[j]
        if t < 0 or t >= vocab:
            for t in range(j):  # undo, so counts is all zero again for the next call
                counts[hist[t]] = 0
            return j
        counts[t] += 1
    for j in range(n):
        t = <Py_ssize_t>hist[j]
        c = counts[t]
        if c:
            v = x[t]
            v = v / rep if v > 0 else v * rep
            x[t] = v - (c * frequency + presence)
            counts[t] = 0
    return -1


# ---------------------------------------------------------------------------------------
# The sampler


cdef enum:
    _NAN_LOGITS = -1
    _ALL_BANNED = -2
    _RELEASE_GIL_FROM = 8192  # below this a call is too short to be worth dropping the GIL


cdef class SamplerCore:
    """Compiled state of a :class:`smallmind.sampling.Sampler`; use that class."""

    cdef readonly Py_ssize_t vocab_size
    cdef bint _configured
    cdef readonly object rng          # numpy Generator; its bit generator feeds the draws
    cdef object _bit_generator        # keeps `_bitgen` alive
    cdef bitgen_t* _bitgen
    cdef float _temperature
    cdef float _inv_temp
    cdef Py_ssize_t _top_k            # 0: off
    cdef double _top_p                # 1: off
    cdef float _log_min_p             # -inf: off
    cdef bint _penalize
    cdef float _rep
    cdef float _presence
    cdef float _frequency
    cdef Py_ssize_t _last_n           # -1: the whole history
    cdef Py_ssize_t _n_bias
    cdef int32_t* _bias_tokens
    cdef float* _bias_values
    cdef int32_t* _bias_order         # bias entries by token id (stable: repeats keep their order)
    cdef float* _work                 # logits after bias and penalties
    cdef float* _weights
    cdef float* _block_sums
    cdef Candidate* _cand
    cdef Candidate* _side             # the crossing bucket of _bucket_split
    cdef double* _bucket_mass
    cdef int32_t* _counts
    cdef int64_t* _hist
    cdef Py_ssize_t _hist_cap
    cdef int _n_threads               # threads of the unfiltered weights (see _set_threads)

    # No __cinit__ needed: Cython allocates the object with every C field 0 / NULL, so
    # __dealloc__ is safe whether or not _configure ran (or got as far as each buffer).

    def __dealloc__(self):
        free(self._bias_tokens)
        free(self._bias_values)
        free(self._bias_order)
        free(self._work)
        free(self._weights)
        free(self._block_sums)
        free(self._cand)
        free(self._side)
        free(self._bucket_mass)
        free(self._counts)
        free(self._hist)

    def _configure(self, Py_ssize_t vocab_size, double temperature, Py_ssize_t top_k,
                   double top_p, double min_p, double repetition_penalty,
                   double presence_penalty, double frequency_penalty, Py_ssize_t penalty_last_n,
                   const int32_t[::1] bias_tokens, const float[::1] bias_values, rng):
        """Set up once (called by Sampler.__init__ with validated values)."""
        if self._configured:
            raise RuntimeError("a Sampler is configured once")
        if vocab_size < 1 or vocab_size > 2**31 - 1:
            raise SamplingError(f"vocab_size must be in [1, 2**31 - 1], got {vocab_size}")
        self.vocab_size = vocab_size
        self._temperature = <float>temperature
        # 1/T is capped so a tiny temperature gives (x - max) * inv = 0 for the max, not
        # 0 * inf = NaN; the effect is greedy among the tied maxima, as intended.
        self._inv_temp = <float>min(1.0 / temperature, 1e30) if temperature > 0 else 0.0
        self._top_k = top_k if 0 < top_k < vocab_size else 0
        self._top_p = top_p if top_p < 1.0 else 1.0
        self._log_min_p = logf(<float>min_p) if min_p > 0 else -INFINITY
        self._rep = <float>repetition_penalty
        self._presence = <float>presence_penalty
        self._frequency = <float>frequency_penalty
        self._last_n = penalty_last_n
        self._penalize = penalty_last_n != 0 and (
            repetition_penalty != 1.0 or presence_penalty != 0.0 or frequency_penalty != 0.0)
        self._n_bias = bias_tokens.shape[0]
        if bias_values.shape[0] != self._n_bias:
            raise ShapeError("bias_tokens and bias_values differ in length")
        for i in range(self._n_bias):
            if bias_tokens[i] < 0 or bias_tokens[i] >= vocab_size:
                raise SamplingError(
                    f"logit_bias token id {bias_tokens[i]} is outside the vocabulary "
                    f"(vocab_size={vocab_size})")

        if self._n_bias or self._penalize:
            self._work = <float*>_alloc(vocab_size * sizeof(float))
        self._block_sums = <float*>_alloc(((vocab_size + SAMPLE_BLOCK - 1) // SAMPLE_BLOCK) * sizeof(float))
        if self._top_k or self._top_p < 1.0:
            self._cand = <Candidate*>_alloc(vocab_size * sizeof(Candidate))
        if self._top_p < 1.0 and not self._top_k:
            self._weights = <float*>_alloc(vocab_size * sizeof(float))
        if self._top_k > TOP_K_HEAP_MAX or self._top_p < 1.0:
            self._side = <Candidate*>_alloc(vocab_size * sizeof(Candidate))
            self._bucket_mass = <double*>_alloc(TOP_P_BUCKETS * sizeof(double))
        if self._penalize:
            self._counts = <int32_t*>_alloc(vocab_size * sizeof(int32_t))
            for i in range(vocab_size):
                self._counts[i] = 0
        if self._n_bias:
            self._bias_tokens = <int32_t*>_alloc(self._n_bias * sizeof(int32_t))
            self._bias_values = <float*>_alloc(self._n_bias * sizeof(float))
            memcpy(self._bias_tokens, &bias_tokens[0], self._n_bias * sizeof(int32_t))
            memcpy(self._bias_values, &bias_values[0], self._n_bias * sizeof(float))
            self._bias_order = <int32_t*>_alloc(self._n_bias * sizeof(int32_t))
            order = np.argsort(np.asarray(bias_tokens), kind="stable").astype(np.int32)
            for i in range(self._n_bias):
                self._bias_order[i] = order[i]

        bit_generator = rng.bit_generator
        self._bitgen = <bitgen_t*>PyCapsule_GetPointer(bit_generator.capsule, "BitGenerator")
        self._bit_generator = bit_generator
        self.rng = rng
        self._configured = True

    def _set_threads(self, int n_threads):
        """Threads (of the matmul pool) the unfiltered distribution's weights are computed
        on, for a large vocabulary: the draw is the same for any count."""
        if n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads}")
        self._n_threads = n_threads

    def sample(self, cnp.ndarray logits not None, history=None):
        """Draw one token id from ``logits`` (float32, shape ``(vocab_size,)``).

        ``history`` (a list or integer array of the token ids so far) feeds the
        repetition/presence/frequency penalties and is ignored when none is set.
        """
        return self._sample(logits, history, -1)

    def _sample_at(self, cnp.ndarray logits not None, history, Py_ssize_t peak):
        """sample(), told ``peak``: the first index of the largest of ``logits`` (no NaN
        among them), as the model's head found it while computing them (``Forward.peak``),
        or -1 when not known. The greedy choice then reads no logit but a few, and sampling
        skips its pass for the maximum. It must be right: it is not checked."""
        if peak < -1 or peak >= self.vocab_size:
            raise ValueError(f"peak must be -1 or a token id below {self.vocab_size}, got {peak}")
        return self._sample(logits, history, peak)

    cdef Py_ssize_t _sample(self, cnp.ndarray logits, history, Py_ssize_t peak) except? -3:
        cdef const float* src
        cdef Py_ssize_t token, i
        if not self._configured:
            raise RuntimeError("Sampler was not configured (call Sampler(params, vocab_size))")
        if (cnp.PyArray_TYPE(logits) != cnp.NPY_FLOAT32 or cnp.PyArray_NDIM(logits) != 1
                or cnp.PyArray_DIM(logits, 0) != self.vocab_size
                or not cnp.PyArray_IS_C_CONTIGUOUS(logits)
                or not cnp.PyArray_ISNOTSWAPPED(logits)):
            raise ShapeError(
                f"logits must be a contiguous native float32 array of shape "
                f"({self.vocab_size},), got dtype={logits.dtype} shape={(<object>logits).shape}"
                + ("" if logits.flags.c_contiguous else " (not contiguous)"))
        src = <const float*>cnp.PyArray_DATA(logits)
        if self._n_bias and self._temperature == 0 and not (self._penalize and history is not None):
            with nogil:
                token = self._greedy_biased(src, peak)
            if token < 0:
                self._raise_for(token, logits)
            return token
        if self._n_bias or (self._penalize and history is not None):
            memcpy(self._work, src, self.vocab_size * sizeof(float))
            for i in range(self._n_bias):
                self._work[self._bias_tokens[i]] += self._bias_values[i]
            if self._penalize and history is not None:
                self._apply_history(history)
                peak = -1  # of the logits before the penalties
            src = self._work
            # still the peak if no biased token reaches it
            for i in range(self._n_bias if peak >= 0 else 0):
                if self._bias_tokens[i] == peak or not src[self._bias_tokens[i]] < src[peak]:
                    peak = -1
                    break
        if self.vocab_size >= _RELEASE_GIL_FROM:
            with nogil:
                token = self._choose(src, peak)
        else:
            token = self._choose(src, peak)
        if token < 0:
            self._raise_for(token, logits)
        return token

    cdef float _biased(self, const float* x, Py_ssize_t* i) noexcept nogil:
        """x[t] + its bias entries, in their order, for t the token of bias entry
        _bias_order[i]; moves i past that token's entries."""
        cdef Py_ssize_t t = self._bias_tokens[self._bias_order[i[0]]]
        cdef float v = x[t]
        while i[0] < self._n_bias and self._bias_tokens[self._bias_order[i[0]]] == t:
            v = v + self._bias_values[self._bias_order[i[0]]]
            i[0] += 1
        return v

    cdef Py_ssize_t _greedy_biased(self, const float* x, Py_ssize_t peak) noexcept nogil:
        """Greedy choice over x plus the logit bias, without the vocabulary-sized copy:
        the biased tokens split x into runs scanned as they are, and each biased token
        is one scalar sum (the same float additions, in the same order, as the copy's).
        Then the first index holding the maximum, as _choose finds it in the copy.

        Given x's peak (see _sample_at), no scan: an unbiased peak above every biased
        token's value is the answer (no earlier token equals it: it is the first)."""
        cdef Py_ssize_t n = self.vocab_size, start = 0, i = 0, t, j
        cdef float best = -INFINITY, m, v
        cdef bint nan = False, run_nan = False
        if peak >= 0:
            m = x[peak]
            while i < self._n_bias:
                t = self._bias_tokens[self._bias_order[i]]
                v = self._biased(x, &i)
                if t == peak or not v < m:  # biased peak, a tie or more, or NaN: scan
                    break
            else:
                return peak
            i = 0
        while start < n:
            t = self._bias_tokens[self._bias_order[i]] if i < self._n_bias else n
            if t > start:
                m = max_scan(x + start, t - start, &run_nan)
                nan = nan or run_nan
                best = m if m > best else best
            if t < n:
                v = self._biased(x, &i)
                nan = nan or v != v
                best = v if v > best else best
            start = t + 1
        if nan:
            return _NAN_LOGITS
        if best == -INFINITY:
            return _ALL_BANNED
        start = i = 0
        while start < n:
            t = self._bias_tokens[self._bias_order[i]] if i < self._n_bias else n
            if t > start:
                j = first_index_of(x + start, t - start, best)
                if j < t - start:
                    return start + j
            if t < n and self._biased(x, &i) == best:
                return t
            start = t + 1
        return _NAN_LOGITS  # not reached: best is one of the values scanned

    cdef Py_ssize_t _choose(self, const float* x, Py_ssize_t peak) noexcept nogil:
        cdef Py_ssize_t n = self.vocab_size, count, i
        cdef bint has_nan = False
        cdef float x_max
        cdef float lowest, keep_from
        cdef double total
        if peak >= 0:  # x's largest, and no NaN (see _sample_at)
            if self._temperature == 0:
                return peak
            x_max = x[peak]
        else:
            x_max = max_scan(x, n, &has_nan)
        if has_nan:
            return _NAN_LOGITS
        if x_max == -INFINITY:
            return _ALL_BANNED
        if self._temperature == 0 or x_max == INFINITY:
            return first_index_of(x, n, x_max)  # greedy; no random number is drawn
        if self._top_k == 0 and self._top_p >= 1.0:
            keep_from = x_max + self._log_min_p
            total = plain_weights(x, self._block_sums, n, x_max, self._inv_temp, keep_from, self._n_threads)
            return pick_plain(x, self._block_sums, n, x_max, self._inv_temp, keep_from,
                              self._uniform() * total)

        if self._top_k:
            lowest = top_k_select(x, n, self._top_k, x_max, self._cand, self._side,
                                  self._bucket_mass)
            count = self._top_k
            total = candidate_weights(self._cand, count, x_max, 1.0)
        else:
            count = top_p_candidates(x, n, x_max, self._top_p, self._weights, self._cand,
                                     &total, &lowest)
        if self._top_p < 1.0:
            count = top_p_select(self._cand, count, self._top_p * total, x_max, lowest,
                                 self._side, self._bucket_mass)
        if self._log_min_p != -INFINITY:
            # the max itself always passes (log(min_p) <= 0), so count stays >= 1
            count = keep_at_least(self._cand, count, x_max + self._log_min_p)
        if self._inv_temp != 1.0:
            total = candidate_weights(self._cand, count, x_max, self._inv_temp)
        else:
            total = _weight_sum(self._cand, count)
        i = pick_candidate(self._cand, count, self._uniform() * total)
        return self._cand[i].token

    cdef inline double _uniform(self) noexcept nogil:
        return self._bitgen.next_double(self._bitgen.state)

    cdef int _apply_history(self, history) except -1:
        cdef cnp.ndarray arr
        cdef list items
        cdef Py_ssize_t n, start, bad, j, shift = 0
        cdef int64_t* grown
        if isinstance(history, np.ndarray):
            arr = history
            if arr.ndim != 1:
                raise ShapeError(f"history must be 1-D, got shape {(<object>arr).shape}")
            n = arr.shape[0]
            start = self._window_start(n)
            if (cnp.PyArray_TYPE(arr) not in (cnp.NPY_INT32, cnp.NPY_INT64)
                    or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISNOTSWAPPED(arr)):
                if arr.dtype.kind not in "iu":
                    raise TypeError(f"history must hold integer token ids, got dtype {arr.dtype}")
                arr = np.ascontiguousarray(arr[start:], dtype=np.int64)  # just the window
                shift = start
                start = 0
                n = arr.shape[0]
            if cnp.PyArray_TYPE(arr) == cnp.NPY_INT32:
                bad = apply_penalties(self._work, self.vocab_size,
                                      (<const int32_t*>cnp.PyArray_DATA(arr)) + start, n - start,
                                      self._counts, self._rep, self._presence, self._frequency)
            else:
                bad = apply_penalties(self._work, self.vocab_size,
                                      (<const int64_t*>cnp.PyArray_DATA(arr)) + start, n - start,
                                      self._counts, self._rep, self._presence, self._frequency)
            if bad >= 0:
                raise TokenizerError(
                    f"history[{shift + start + bad}] = {history[shift + start + bad]} is not "
                    f"a token id (vocab_size={self.vocab_size})")
            return 0
        items = history if type(history) is list else list(history)
        n = len(items)
        start = self._window_start(n)
        if n - start > self._hist_cap:
            j = max(n - start, 2 * self._hist_cap, 64)
            grown = <int64_t*>realloc(self._hist, j * sizeof(int64_t))
            if grown == NULL:
                raise MemoryError(f"cannot allocate a history window of {j} tokens")
            self._hist = grown
            self._hist_cap = j
        for j in range(start, n):
            self._hist[j - start] = items[j]
        bad = apply_penalties(self._work, self.vocab_size, <const int64_t*>self._hist, n - start,
                              self._counts, self._rep, self._presence, self._frequency)
        if bad >= 0:
            raise TokenizerError(
                f"history[{start + bad}] = {items[start + bad]} is not a token id "
                f"(vocab_size={self.vocab_size})")
        return 0

    cdef inline Py_ssize_t _window_start(self, Py_ssize_t n):
        return 0 if self._last_n < 0 or n <= self._last_n else n - self._last_n

    cdef _raise_for(self, Py_ssize_t code, cnp.ndarray logits):
        if code == _NAN_LOGITS:
            nan_at = np.flatnonzero(np.isnan(logits))
            if nan_at.size:
                raise SamplingError(
                    f"logits contain NaN ({nan_at.size} of {logits.shape[0]}, first at index "
                    f"{nan_at[0]}): the model produced invalid values")
            raise SamplingError("logit_bias or penalties turned an infinite logit into NaN")
        raise SamplingError("every token has a logit of -inf (all banned): nothing to sample")


cdef void* _alloc(size_t nbytes) except NULL:
    cdef void* p = malloc(nbytes if nbytes else 1)
    if p == NULL:
        raise MemoryError(f"cannot allocate {nbytes} bytes of sampler scratch")
    return p

