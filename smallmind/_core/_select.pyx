"""Token selection: the filters of the sampler chain (argmax, top-k, top-p, min-p).

Each works on caller-owned buffers over a float32 logits row, allocates nothing and
runs without the GIL (declared in ``_select.pxd``, used by ``_sampling.SamplerCore``).
How each avoids wasting time:

* argmax / max: one AVX2 pass for the max (with the NaN check), then a compare scan;
* top-k, small k: a size-k min-heap fed by an AVX2 filter that skips 8 logits at a time
  when none beats the heap's floor, so it costs little more than one pass;
* top-k, large k: vector counting passes find a floor that about k logits reach, only
  those are gathered, and an exact rank selection runs on them;
* top-p: no sort. Without top-k, the pass that computes the weights also measures the
  mass above a few weight floors, so only the tokens above the highest floor that
  already holds mass p are gathered; the kept set is then found by a histogram of mass
  over logit buckets (branch-free) followed by a weighted quickselect over the one
  bucket where the running mass crosses p;
* min-p: one pass over the candidates.

The vector loops are C (``_sampling.h``).
"""
from libc.math cimport INFINITY, ceil, logf
from libc.stdint cimport int32_t


cdef extern from "_sampling.h" nogil:
    float sm_max_scan(const float* x, Py_ssize_t n, int* has_nan)
    void sm_count_at_least(const float* x, Py_ssize_t n, const float* floors, Py_ssize_t* counts)
    unsigned sm_gt_mask(const float* x, float floor)
    unsigned sm_ge_mask(const float* x, float floor)
    unsigned sm_eq_mask(const float* x, float value)
    double sm_level_weights(const float* x, float* w, Py_ssize_t n, float x_max, double* level_mass)
    const int SM_N_LEVELS
    const float SM_LEVELS[]
    const float FLT_TRUE_MIN
    int __builtin_ctz(unsigned int x)


# ---------------------------------------------------------------------------------------
# Scans (argmax)


cdef float max_scan(const float* x, Py_ssize_t n, bint* has_nan) noexcept nogil:
    cdef int nan = 0
    cdef float best = sm_max_scan(x, n, &nan)
    has_nan[0] = nan != 0
    return best


cdef Py_ssize_t first_index_of(const float* x, Py_ssize_t n, float value) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef unsigned mask
    while i + 8 <= n:
        mask = sm_eq_mask(x + i, value)
        if mask:
            return i + __builtin_ctz(mask)
        i += 8
    while i < n:
        if x[i] == value:
            return i
        i += 1
    return n


# ---------------------------------------------------------------------------------------
# Filters


cdef enum:
    _QUICKSELECT_MAX = 512        # larger candidate sets are bucketed first (_bucket_split)


cdef inline void _put(Candidate* c, float logit, float weight, Py_ssize_t token) noexcept nogil:
    c.logit = logit
    c.weight = weight
    c.token = <int32_t>token


cdef inline void _swap(Candidate* c, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef Candidate t = c[a]
    c[a] = c[b]
    c[b] = t


cdef inline bint _heap_less(const Candidate* a, const Candidate* b) noexcept nogil:
    # Root = smallest logit; among equal logits the higher token id counts as smaller, so
    # it is evicted first and ties resolve toward lower ids, like greedy argmax.
    return a.logit < b.logit or (a.logit == b.logit and a.token > b.token)


cdef inline void _sift_down(Candidate* heap, Py_ssize_t k, Py_ssize_t i) noexcept nogil:
    cdef Candidate item = heap[i]
    cdef Py_ssize_t child
    while True:
        child = 2 * i + 1
        if child >= k:
            break
        if child + 1 < k and _heap_less(&heap[child + 1], &heap[child]):
            child += 1
        if not _heap_less(&heap[child], &item):
            break
        heap[i] = heap[child]
        i = child
    heap[i] = item


cdef inline void _heap_offer(Candidate* heap, Py_ssize_t k, const float* x, Py_ssize_t j) noexcept nogil:
    # Strictly greater: an equal logit arriving later has a higher id and loses the tie.
    if x[j] > heap[0].logit:
        heap[0].logit = x[j]
        heap[0].token = <int32_t>j
        _sift_down(heap, k, 0)


cdef float top_k_select(const float* x, Py_ssize_t n, Py_ssize_t k, float x_max,
                        Candidate* out, Candidate* side, double* hist) noexcept nogil:
    if k <= TOP_K_HEAP_MAX:
        return _top_k_heap(x, n, k, out)
    return _top_k_gather(x, n, k, x_max, out, side, hist)


cdef float _top_k_heap(const float* x, Py_ssize_t n, Py_ssize_t k, Candidate* out) noexcept nogil:
    cdef Py_ssize_t i
    cdef unsigned mask
    for i in range(k):
        _put(&out[i], x[i], 0, i)
    for i in range(k // 2 - 1, -1, -1):
        _sift_down(out, k, i)
    i = k
    # Once the heap holds typical top-k values almost no logit beats its floor, so testing
    # 8 at a time against the floor skips nearly the whole vocabulary.
    while i + 8 <= n:
        mask = sm_gt_mask(x + i, out[0].logit)
        while mask:
            _heap_offer(out, k, x, i + __builtin_ctz(mask))  # rechecks: the floor may have risen
            mask &= mask - 1
        i += 8
    while i < n:
        _heap_offer(out, k, x, i)
        i += 1
    return out[0].logit  # the root is the smallest kept logit


cdef float _top_k_gather(const float* x, Py_ssize_t n, Py_ssize_t k, float x_max,
                         Candidate* out, Candidate* side, double* hist) noexcept nogil:
    # A heap costs O(k log k) sifts with unpredictable branches, too slow for k in the
    # hundreds or thousands. Instead: find a floor that about k logits reach by counting
    # (vector passes: 8 floors at distances 0.5..32 below the max, then 8 floors evenly
    # inside the bracket that holds the k-th logit), gather the logits at or above it,
    # and put the k best first with an exact selection over just those.
    cdef float floors[8]
    cdef Py_ssize_t counts[8]
    cdef Py_ssize_t i, j, m = 0, kept, n_side
    cdef float floor = -INFINITY, above = x_max, lowest
    cdef double need
    cdef unsigned mask
    for j in range(7):
        floors[j] = x_max - 0.5 * (1 << j)
    floors[7] = -INFINITY  # always reached by all n >= k logits
    sm_count_at_least(x, n, floors, counts)
    for j in range(8):
        if counts[j] >= k:
            floor = floors[j]
            if j > 0:
                above = floors[j - 1]
            break
    if floor != -INFINITY and counts[j] > 2 * k:
        # k-th logit lies in [floor, above): split that bracket 8 ways and count again
        for i in range(8):
            floors[i] = above - (above - floor) * (i + 1) / 8.0
        floors[7] = floor  # exact, whatever the rounding above
        sm_count_at_least(x, n, floors, counts)
        for i in range(8):
            if counts[i] >= k:
                floor = floors[i]
                break
    i = 0
    while i + 8 <= n:
        mask = sm_ge_mask(x + i, floor)
        while mask:
            j = i + __builtin_ctz(mask)
            _put(&out[m], x[j], 0, j)
            m += 1
            mask &= mask - 1
        i += 8
    while i < n:
        if x[i] >= floor:
            _put(&out[m], x[i], 0, i)
            m += 1
        i += 1
    if m > _QUICKSELECT_MAX and floor != -INFINITY and floor < x_max:
        need = <double>k
        kept = _bucket_split(out, m, x_max, floor, side, hist, False, &need, &n_side)
        _rank_select(side, n_side, k - kept)
        for i in range(k - kept):
            out[kept + i] = side[i]
    else:
        _rank_select(out, m, k)
    lowest = out[0].logit
    for i in range(1, k):
        lowest = min(lowest, out[i].logit)
    return lowest


cdef inline bint _ranks_before(const Candidate* a, const Candidate* b) noexcept nogil:
    # the total order of top-k: higher logit first, ties to the lower token id
    return a.logit > b.logit or (a.logit == b.logit and a.token < b.token)


cdef void _rank_select(Candidate* c, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    # Hoare-style quickselect (nth_element): afterwards c[0:k] are the k first in
    # _ranks_before order, unordered among themselves.
    cdef Py_ssize_t lo = 0, hi = n, mid, store, i
    cdef Candidate pivot
    if k >= n:
        return
    while hi - lo > 1:
        mid = lo + (hi - lo) // 2
        # median of three as pivot, moved to hi - 1
        if _ranks_before(&c[mid], &c[lo]):
            _swap(c, mid, lo)
        if _ranks_before(&c[hi - 1], &c[lo]):
            _swap(c, hi - 1, lo)
        if _ranks_before(&c[mid], &c[hi - 1]):
            _swap(c, mid, hi - 1)
        pivot = c[hi - 1]
        store = lo
        for i in range(lo, hi - 1):
            if _ranks_before(&c[i], &pivot):
                _swap(c, i, store)
                store += 1
        _swap(c, store, hi - 1)
        if store == k:
            return
        if store < k:
            lo = store + 1
        else:
            hi = store


cdef Py_ssize_t top_p_candidates(const float* x, Py_ssize_t n, float x_max, double p,
                                 float* w, Candidate* out, double* total,
                                 float* lowest) noexcept nogil:
    cdef double level_mass[16]
    cdef double need
    cdef float floor = FLT_TRUE_MIN  # default: every token with a positive weight
    cdef Py_ssize_t i, j, count = 0
    cdef unsigned mask
    total[0] = sm_level_weights(x, w, n, x_max, level_mass)
    # The tokens at or above a floor are a prefix of the descending order; if that prefix
    # already holds mass p, the top-p set lies inside it. The small margin keeps float
    # rounding in the level sums from choosing a floor that is just too high.
    need = p * total[0] * (1.0 + 1e-5)
    for j in range(SM_N_LEVELS):
        if level_mass[j] >= need:
            floor = SM_LEVELS[j]
            break
    lowest[0] = x_max + logf(floor)
    i = 0
    while i + 8 <= n:
        mask = sm_ge_mask(w + i, floor)
        if mask == 0xFF:  # dense stretches (flat distributions) copy without bit scans
            for j in range(i, i + 8):
                _put(&out[count], x[j], w[j], j)
                count += 1
            i += 8
            continue
        while mask:
            j = i + __builtin_ctz(mask)
            _put(&out[count], x[j], w[j], j)
            count += 1
            mask &= mask - 1
        i += 8
    while i < n:
        if w[i] >= floor:
            _put(&out[count], x[i], w[i], i)
            count += 1
        i += 1
    return count


cdef inline float _median3(float a, float b, float c) noexcept nogil:
    if a > b:
        a, b = b, a
    if b > c:
        b = c
    return a if a > b else b


cdef Py_ssize_t _top_p_quickselect(Candidate* c, Py_ssize_t n, double need) noexcept nogil:
    # Quickselect on mass instead of rank: partition around a pivot weight into
    # (> pivot | == pivot | < pivot); if the heavier part alone reaches `need` the answer
    # lies inside it, otherwise it is all kept and the search continues below the pivot
    # for the mass still missing. c[0:lo] is always kept.
    cdef Py_ssize_t lo = 0, hi = n, lt, i, gt, n_eq, take
    cdef float pivot, w
    cdef double mass_gt
    while lo < hi:
        pivot = _median3(c[lo].weight, c[lo + (hi - lo) // 2].weight, c[hi - 1].weight)
        lt = lo
        i = lo
        gt = hi
        mass_gt = 0.0
        while i < gt:
            w = c[i].weight
            if w > pivot:
                mass_gt += w
                _swap(c, lt, i)
                lt += 1
                i += 1
            elif w < pivot:
                gt -= 1
                _swap(c, i, gt)
            else:
                i += 1
        if mass_gt >= need:
            hi = lt
            continue
        n_eq = gt - lt
        if mass_gt + n_eq * <double>pivot >= need:
            # keep just enough of the tied tokens (pivot > 0 here, or the sum could not grow)
            take = <Py_ssize_t>ceil((need - mass_gt) / pivot)
            if take < 1:
                take = 1
            elif take > n_eq:
                take = n_eq
            return lt + take
        need -= mass_gt + n_eq * <double>pivot
        lo = gt
    # Only reached when rounding left a sliver of `need` unmet: keep all that was kept.
    return lo if lo > 0 else 1


cdef Py_ssize_t top_p_select(Candidate* c, Py_ssize_t n, double need, float x_max,
                             float lowest, Candidate* side, double* bucket_mass) noexcept nogil:
    cdef Py_ssize_t i, kept, n_side, take
    if n <= _QUICKSELECT_MAX:
        return _top_p_quickselect(c, n, need)
    # weights below exp(-104) are 0 in float32, so a lower floor only wastes buckets
    lowest = max(lowest, x_max - 104.0)
    if not lowest < x_max:
        return _top_p_quickselect(c, n, need)
    kept = _bucket_split(c, n, x_max, lowest, side, bucket_mass, True, &need, &n_side)
    take = _top_p_quickselect(side, n_side, need) if n_side else 0
    for i in range(take):
        c[kept + i] = side[i]
    return max(kept + take, 1)


cdef Py_ssize_t _bucket_split(Candidate* c, Py_ssize_t n, float x_max, float lowest,
                              Candidate* side, double* hist, bint by_mass, double* need,
                              Py_ssize_t* n_side) noexcept nogil:
    # Quickselect's partitions branch unpredictably on every element, which is slow on the
    # thousands of candidates a flat distribution or a large k produces. This histogram
    # does the bulk of the work in two branch-free passes: logits fall into TOP_P_BUCKETS
    # equal buckets over [lowest, x_max] (logits below lowest join the last one); the
    # bucket where the running total (weights if by_mass, else counts) first reaches
    # *need is the crossing bucket. Candidates of earlier buckets move to the front of c
    # (their number is returned), the crossing bucket's to side[0:*n_side], and *need
    # drops by what the front holds, leaving an exact selection over side only.
    # Requires lowest < x_max, both finite.
    cdef Py_ssize_t i, b, crossing = TOP_P_BUCKETS, kept = 0, count = 0
    cdef float scale = (TOP_P_BUCKETS - 0.5) / (x_max - lowest)
    cdef double cum = 0.0
    for b in range(TOP_P_BUCKETS):
        hist[b] = 0.0
    if by_mass:
        for i in range(n):
            hist[_bucket_of(c[i].logit, x_max, scale)] += c[i].weight
    else:
        for i in range(n):
            hist[_bucket_of(c[i].logit, x_max, scale)] += 1.0
    for b in range(TOP_P_BUCKETS):
        if cum + hist[b] >= need[0]:
            crossing = b
            break
        cum += hist[b]
    if crossing == TOP_P_BUCKETS:  # rounding left `need` just out of reach: keep all
        n_side[0] = 0
        need[0] = 0.0
        return n
    for i in range(n):
        # Every candidate is written to both places and only the right counter advances,
        # so there is no branch to mispredict. kept <= i: c[kept] was already read.
        b = _bucket_of(c[i].logit, x_max, scale)
        side[count] = c[i]
        count += b == crossing
        c[kept] = c[i]
        kept += b < crossing
    n_side[0] = count
    need[0] -= cum
    return kept


cdef inline Py_ssize_t _bucket_of(float logit, float x_max, float scale) noexcept nogil:
    # Monotone in the logit: a higher logit never lands in a later bucket. -inf and very
    # low logits clamp into the last bucket (before the int conversion, which would be
    # undefined for inf).
    cdef float pos = (x_max - logit) * scale
    if not pos < <float>(TOP_P_BUCKETS - 1):  # also catches NaN (0 * inf on tiny ranges)
        return TOP_P_BUCKETS - 1
    return <Py_ssize_t>pos


cdef Py_ssize_t keep_at_least(Candidate* c, Py_ssize_t n, float keep_from) noexcept nogil:
    cdef Py_ssize_t i, kept = 0
    for i in range(n):
        if c[i].logit >= keep_from:
            c[kept] = c[i]
            kept += 1
    return kept
