# Matrix products against a weight stored in any supported GGML type.
#
# A weight is rows x cols (out_features x in_features); each row is `row_bytes` bytes
# of `type` blocks (GGML type ids, see smallmind.tensors.GGMLType).

ctypedef struct WeightView:
    int type
    const char* data
    Py_ssize_t rows
    Py_ssize_t cols
    Py_ssize_t row_bytes

cdef class Weight:
    cdef WeightView view
    cdef readonly object data      # keeps the storage (often a memory map view) alive
    cdef readonly tuple shape
    cdef readonly int type

# y[t, r] (+)= sum_c W[r, c] * x[t, c] (+ bias[r]) for t < n, r < rows.
# x rows are ldx floats apart, y rows ldy floats apart; bias may be NULL.
# accumulate: add into y instead of overwriting it (fuses the residual add).
# scratch: at least matmul_scratch_bytes(w, n) bytes (for activations quantised on the
# fly), or NULL to let the kernel allocate. n_threads <= 1 runs on the calling thread.
cdef void matmul(const WeightView* w, const float* x, Py_ssize_t n, Py_ssize_t ldx,
                 float* y, Py_ssize_t ldy, const float* bias, bint accumulate,
                 int n_threads, void* scratch) noexcept nogil
cdef Py_ssize_t matmul_scratch_bytes(const WeightView* w, Py_ssize_t n) noexcept nogil
# matmul for rows that are segments of several sequences. Which float kernel computes a row
# depends on n (the packed GEMM from packed_min_rows() rows), so rows [0, n_packed) take the
# packed kernel and [n_packed, n) the row kernel, each row exactly as in a matmul of its own
# segment. Quantised weights run as one matmul: their rows never depend on n. The scratch
# must hold matmul_scratch_bytes(w, max(n, packed_min_rows())).
cdef void matmul_split(const WeightView* w, const float* x, Py_ssize_t n, Py_ssize_t n_packed,
                       Py_ssize_t ldx, float* y, Py_ssize_t ldy, const float* bias, bint accumulate,
                       int n_threads, void* scratch) noexcept nogil
cdef Py_ssize_t packed_min_rows() noexcept nogil
# y[i][t, r] = sum_c W_i[r, c] * x[t, c] for i < count (<= 4 weights with equal cols; y[i]
# rows ldy[i] floats apart; no bias, no accumulate): exactly `count` matmul calls, but when
# the weights are quantised alike x is quantised once and all rows are one thread-pool job.
# scratch: at least the largest matmul_scratch_bytes(w[i], n), or NULL.
cdef void matmul_many(int count, const WeightView** w, const float* x, Py_ssize_t n, Py_ssize_t ldx,
                      float** y, const Py_ssize_t* ldy, int n_threads, void* scratch) noexcept nogil
# Dequantise row `row` of w into out[0:cols] (embedding lookup).
cdef void get_row(const WeightView* w, Py_ssize_t row, float* out) noexcept nogil

# Runs fn(arg, c) for every c in [0, n_chunks) on the calling thread and up to
# n_threads - 1 workers of the pool the products use (_threadpool.h), returning when
# all are done: other kernels (attention) share the one pool through this. Chunks must
# be independent; n_chunks <= 65535 (more run on the calling thread).
ctypedef void (*chunk_fn)(const void* arg, Py_ssize_t chunk) noexcept nogil
cdef void parallel_chunks(int n_threads, Py_ssize_t n_chunks, chunk_fn fn, const void* arg) noexcept nogil
# Runs fn(arg, u0, u1) over ranges that together cover [0, n_units) once each, on the same
# pool, claimed in shrinking pieces of at least min_take units (the products' own split, so
# threads finish within about min_take of each other). n_units <= 65535.
ctypedef void (*range_fn)(const void* arg, Py_ssize_t u0, Py_ssize_t u1) noexcept nogil
cdef void parallel_ranges(int n_threads, Py_ssize_t n_units, Py_ssize_t min_take, range_fn fn,
                          const void* arg) noexcept nogil
# Rows [r0, r1) of w as a weight of their own in *out, when its layout allows it (rows of
# blocks, or the 8-row groups of a repacked weight), r0 is a multiple of 16 and there are at
# least cut_min_rows(w) rows: a product with it gives each of those rows bit for bit as the
# product with w does. Else False.
cdef bint weight_rows(const WeightView* w, Py_ssize_t r0, Py_ssize_t r1, WeightView* out) noexcept nogil
# The fewest rows of such a cut: 1, but a float weight that streams its rows (a large one) takes
# another kernel than a small one, whose sums differ: its cuts must be large too.
cdef Py_ssize_t cut_min_rows(const WeightView* w) noexcept nogil
# whether the pool's workers spin between jobs (a small job is worth splitting only then)
cdef bint pool_workers_spin() noexcept nogil
