"""Matrix products against weights stored in GGML formats (F32, F16, BF16, Q4_0, Q4_1,
Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, Q8_K).

A :class:`Weight` wraps the raw storage of a ``rows x cols`` matrix (``out_features x
in_features``), usually a read-only view into a memory-mapped model file, and never
copies or dequantises it. ``y[t, r] (+)= dot(W[r, :], x[t, :]) (+ bias[r])``.

The kernels live in C headers next to this file (``_matmul_impl.h`` and the headers it
includes). Float weights use FMA in float32 (error ~1e-7 relative to sum |w x|).
Quantised weights use integer dot products against the activations quantised on the
fly to int8 per block (32 elements, or 256 for K-quants), ``d = amax/127``; the integer
part is exact, so the only approximation is that rounding of x: the error is at most
``sqrt(B-1)/254 * |w| |x|`` (0.022 for B = 32, 0.063 for B = 256) and typically 1e-3 of
it, as in llama.cpp. AVX-512 (VNNI, VBMI, GFNI) kernels are chosen at run time when the
CPU has them, AVX2 ones otherwise; ``SMALLMIND_ISA=avx2`` forces the AVX2 ones for the whole
process (the switch in _simd_dispatch.h) and :func:`kernel_paths` says which path each type uses.

Threads (``n_threads > 1``) split the weight rows in chunks claimed from a small thread
pool (_threadpool.h), the caller included, so a worker whose core is busy never holds the
call up; ``n_threads <= 1`` and matrices under 65536 elements never use the pool. ``scratch`` may be NULL (the kernel
then mallocs ``matmul_scratch_bytes`` itself; on allocation failure y is filled with NaN,
as a void nogil function cannot raise).
"""
import mmap
import os

import numpy as np
from posix.mman cimport MADV_DONTNEED, madvise
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from smallmind.errors import CPUFeatureError, ShapeError, UnsupportedModelError
from smallmind.tensors import GGMLType, read_only_file_map

cdef extern from "_matmul_impl.h" nogil:
    int smm_block_elems(int type)
    Py_ssize_t smm_float_stream_min_bytes
    int smm_r8_panel_mode
    int smm_block_bytes(int type)
    int smm_isa()
    int smm_set_isa(int level)
    int smm_isa_detected
    int smm_vnni_active
    int smm_vnni_detected
    int smm_set_vnni(int mode)
    unsigned long long smm_read_bandwidth(const unsigned char* p, Py_ssize_t nbytes, int n_threads)
    Py_ssize_t smm_scratch_bytes(int type, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t n)
    void smm_matmul(int type, const unsigned char* w, Py_ssize_t rows, Py_ssize_t cols,
                    Py_ssize_t row_bytes, const float* x, Py_ssize_t n, Py_ssize_t ldx,
                    float* y, Py_ssize_t ldy, const float* bias, int accumulate, int n_threads,
                    void* scratch)
    void smm_matmul_kernel(int packed, int type, const unsigned char* w, Py_ssize_t rows,
                           Py_ssize_t cols, Py_ssize_t row_bytes, const float* x, Py_ssize_t n,
                           Py_ssize_t ldx, float* y, Py_ssize_t ldy, const float* bias,
                           int accumulate, int n_threads, void* scratch)
    void smm_get_row(int type, const unsigned char* w, Py_ssize_t rows, Py_ssize_t cols,
                     Py_ssize_t row_bytes, Py_ssize_t row, float* out)
    int SMM_R8
    int smm_r8_supported(int type)
    void smm_r8_repack(int type, const unsigned char* src, Py_ssize_t rows, Py_ssize_t row_bytes,
                       unsigned char* dst)
    int smm_family(int type)
    int SMM_FAMILY_FLOAT
    int SMM_GEMM_MIN_N
    ctypedef struct smm_target:
        int type
        const unsigned char* w
        Py_ssize_t rows, row_bytes
        float* y
        Py_ssize_t ldy
    enum: SMM_MANY_MAX
    void smm_matmul_many(int count, const smm_target* t, Py_ssize_t cols, const float* x, Py_ssize_t n,
                         Py_ssize_t ldx, int n_threads, void* scratch)

# Weight storage types the kernels multiply, by GGML type id.
SUPPORTED_TYPES = tuple(t for t in GGMLType if smm_block_elems(int(t)) > 0)

smm_isa()  # probe the CPU once at import, not inside the first threaded call

ISA_NAMES = {1: "avx2", 2: "avx512"}
VNNI_NAMES = {0: None, 1: "avx512-vnni", 2: "avx-vnni", 3: "emulated"}


def _check_isa_request():
    """SMALLMIND_ISA (read by the C switch in _simd_dispatch.h) must name a path this CPU has."""
    value = os.environ.get("SMALLMIND_ISA", "")
    if value in ("", "auto"):
        return
    if value not in ("avx2", "avx512"):
        raise ValueError(f"SMALLMIND_ISA must be 'auto', 'avx2' or 'avx512', got {value!r}")
    if value == "avx512" and smm_isa_detected < 2:
        raise CPUFeatureError(
            "SMALLMIND_ISA=avx512, but this CPU (or OS) lacks AVX-512 F/BW/VL/DQ/VNNI/VBMI, GFNI "
            "or BMI2; unset it or use SMALLMIND_ISA=avx2")


_check_isa_request()


cdef extern from "_threadpool.h" nogil:
    ctypedef void (*smp_chunk_fn)(const void* arg, Py_ssize_t chunk) noexcept nogil
    ctypedef void (*smp_range_fn)(const void* arg, Py_ssize_t u0, Py_ssize_t u1) noexcept nogil
    void smp_parallel(int n_threads, Py_ssize_t n_chunks, smp_chunk_fn fn, const void* arg)
    void smp_parallel_range(int n_threads, Py_ssize_t n_units, Py_ssize_t min_take, smp_range_fn fn,
                            const void* arg)
    int smp_workers_spin()
    unsigned long long smp_stat_jobs, smp_stat_quiet_jobs, smp_stat_wait_cycles
    unsigned long long __rdtsc()


cdef void parallel_chunks(int n_threads, Py_ssize_t n_chunks, chunk_fn fn, const void* arg) noexcept nogil:
    smp_parallel(n_threads, n_chunks, fn, arg)


cdef void parallel_ranges(int n_threads, Py_ssize_t n_units, Py_ssize_t min_take, range_fn fn,
                          const void* arg) noexcept nogil:
    smp_parallel_range(n_threads, n_units, min_take, fn, arg)


cdef bint weight_rows(const WeightView* w, Py_ssize_t r0, Py_ssize_t r1, WeightView* out) noexcept nogil:
    cdef int plain = w.type & ~SMM_R8  # rows of row_bytes, or the 8-row groups of smm_r8_repack
    if r0 < 0 or r1 > w.rows or r0 >= r1 or r0 % 16 or plain >= SMM_R8 \
            or (plain != w.type and not smm_r8_supported(plain)) or r1 - r0 < cut_min_rows(w):
        return False
    out[0] = w[0]
    out.data, out.rows = w.data + r0 * w.row_bytes, r1 - r0
    return True


cdef Py_ssize_t cut_min_rows(const WeightView* w) noexcept nogil:
    # smm_float_small_range: a float matrix of more than smm_float_stream_min_bytes streams its
    # rows one at a time, a smaller one (a cut of it too) takes the 4-row kernel
    if smm_family(w.type) != SMM_FAMILY_FLOAT or w.rows * w.row_bytes <= smm_float_stream_min_bytes:
        return 1
    return smm_float_stream_min_bytes // w.row_bytes + 1


cdef bint pool_workers_spin() noexcept nogil:
    return smp_workers_spin() != 0


cdef void matmul(const WeightView* w, const float* x, Py_ssize_t n, Py_ssize_t ldx,
                 float* y, Py_ssize_t ldy, const float* bias, bint accumulate,
                 int n_threads, void* scratch) noexcept nogil:
    smm_matmul(w.type, <const unsigned char*>w.data, w.rows, w.cols, w.row_bytes, x, n, ldx,
               y, ldy, bias, accumulate, n_threads, scratch)


cdef void matmul_split(const WeightView* w, const float* x, Py_ssize_t n, Py_ssize_t n_packed,
                       Py_ssize_t ldx, float* y, Py_ssize_t ldy, const float* bias, bint accumulate,
                       int n_threads, void* scratch) noexcept nogil:
    cdef const unsigned char* data = <const unsigned char*>w.data
    if smm_family(w.type) != SMM_FAMILY_FLOAT:  # rows never depend on n: one pass over W
        smm_matmul(w.type, data, w.rows, w.cols, w.row_bytes, x, n, ldx, y, ldy, bias, accumulate,
                   n_threads, scratch)
        return
    if n_packed > 0:
        smm_matmul_kernel(1, w.type, data, w.rows, w.cols, w.row_bytes, x, n_packed, ldx, y, ldy,
                          bias, accumulate, n_threads, scratch)
    if n_packed < n:
        smm_matmul_kernel(0, w.type, data, w.rows, w.cols, w.row_bytes, x + n_packed * ldx,
                          n - n_packed, ldx, y + n_packed * ldy, ldy, bias, accumulate, n_threads,
                          scratch)


cdef Py_ssize_t packed_min_rows() noexcept nogil:
    return SMM_GEMM_MIN_N


cdef void matmul_many(int count, const WeightView** w, const float* x, Py_ssize_t n, Py_ssize_t ldx,
                      float** y, const Py_ssize_t* ldy, int n_threads, void* scratch) noexcept nogil:
    cdef smm_target t[SMM_MANY_MAX]
    cdef int i
    if count > SMM_MANY_MAX:  # more than the fused kernel takes: one product at a time
        for i in range(count):
            matmul(w[i], x, n, ldx, y[i], ldy[i], NULL, False, n_threads, scratch)
        return
    for i in range(count):
        t[i].type = w[i].type
        t[i].w = <const unsigned char*>w[i].data
        t[i].rows = w[i].rows
        t[i].row_bytes = w[i].row_bytes
        t[i].y = y[i]
        t[i].ldy = ldy[i]
    smm_matmul_many(count, t, w[0].cols, x, n, ldx, n_threads, scratch)


cdef Py_ssize_t matmul_scratch_bytes(const WeightView* w, Py_ssize_t n) noexcept nogil:
    return smm_scratch_bytes(w.type, w.rows, w.cols, n)


cdef void get_row(const WeightView* w, Py_ssize_t row, float* out) noexcept nogil:
    smm_get_row(w.type, <const unsigned char*>w.data, w.rows, w.cols, w.row_bytes, row, out)


def _type_name(int type):
    try:
        return GGMLType(type).name
    except ValueError:
        return f"GGML type {type}"


# dtypes accepted for the storage of each float type besides raw uint8 bytes
_FLOAT_DTYPES = {
    int(GGMLType.F32): (np.dtype(np.float32),),
    int(GGMLType.F16): (np.dtype(np.float16), np.dtype(np.uint16)),
    int(GGMLType.BF16): (np.dtype(np.uint16),),
}


cdef size_t _PAGE = mmap.PAGESIZE
# SMALLMIND_REPACK=0 keeps every weight in its plain layout (benchmarks compare the two)
_REPACK_ENABLED = os.environ.get("SMALLMIND_REPACK", "1") != "0"


def _repack_default():
    """Whether Weight(..., repack=None) repacks (the 32-element block types and the K-quants):
    unless SMALLMIND_REPACK=0, on every CPU. The repacked kernels are AVX2 (256-bit, no
    cross-lane shuffles), the ones measured at the read bandwidth (benchmarks/roofline.py);
    AVX-512 CPUs run them too, rather than the plain layout's kernels, which streamed at a
    third of the bandwidth on a Zen 4 (shared/perf, issue #7), compute-bound even in L2."""
    return _REPACK_ENABLED


cdef void _drop_pages(const unsigned char* p, Py_ssize_t nbytes) noexcept nogil:
    """Unmaps the whole pages of [p, p + nbytes) of a read-only file map: a repacked copy
    replaces the original in the resident set. They stay in the page cache (reclaiming them,
    MADV_PAGEOUT, cost 0.5-0.9 s of Gemma 3's load and evicted the file); what fault-around
    maps back goes when Engine.load unmaps the whole file (LoadedModel.release_pages)."""
    cdef size_t page = _PAGE
    cdef size_t start = (<size_t>p + page - 1) & ~(page - 1)
    cdef size_t end = (<size_t>p + <size_t>nbytes) & ~(page - 1)
    if end > start:
        madvise(<void*>start, end - start, MADV_DONTNEED)


cdef void _repack(int type, const unsigned char* src, Py_ssize_t rows, Py_ssize_t row_bytes,
                  unsigned char* dst, bint drop) noexcept nogil:
    """smm_r8_repack in pieces of ~4 MB (whole 8-row groups; the last takes the tail rows, at
    least 8), each piece's source pages dropped right after it when `drop`: the resident set
    grows by a piece at a time, not by a second copy of the largest matrix (Gemma 3's 178 MB)."""
    cdef Py_ssize_t step = max(8, (4 << 20) // row_bytes // 8 * 8), r0 = 0, n
    while r0 < rows:
        n = rows - r0 if rows - r0 < step + 8 else step  # never leave a piece of < 8 rows
        smm_r8_repack(type, src + r0 * row_bytes, n, row_bytes, dst + r0 * row_bytes)
        if drop:
            _drop_pages(src + r0 * row_bytes, n * row_bytes)
        r0 += n


cdef class Weight:
    """A ``rows x cols`` weight matrix in GGML storage ``type`` (see GGMLType).

    ``data`` holds the raw storage: float32 ``(rows, cols)`` for F32, float16/uint16 for
    F16, uint16 for BF16, or uint8 blocks (flat, or ``(rows, row_bytes)``) for quantised
    types; uint8 bytes are accepted for every type. It must be C-contiguous and may be
    read-only; it is referenced, never copied, except that Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
    Q5_K and Q6_K weights of 8 rows or more are repacked (``repack=True``): groups of 8 rows
    are rewritten into a row-interleaved copy of the same size that the fastest kernels
    read (_matmul_r8.h, K-quants _matmul_rk.h). ``data`` is then that copy, and when the
    original is a read-only file map its pages are released after the one pass that reads
    them. ``repack=None`` (the default) repacks unless SMALLMIND_REPACK=0 (_repack_default).
    """

    def __cinit__(self, int type, shape, data, *, repack=None):
        cdef int block = smm_block_elems(type)
        if block == 0:
            supported = ", ".join(t.name for t in SUPPORTED_TYPES)
            raise UnsupportedModelError(
                f"weight type {_type_name(type)} is not supported by the matmul kernels "
                f"(supported: {supported})")
        try:
            rows, cols = (int(v) for v in shape)
        except (TypeError, ValueError):
            raise ShapeError(f"shape must be a (rows, cols) pair of ints, got {shape!r}") from None
        if rows <= 0 or cols <= 0:
            raise ShapeError(f"shape must be positive, got {(rows, cols)}")
        if cols % block:
            raise ShapeError(f"{_type_name(type)} needs cols to be a multiple of {block}, got {cols}")
        cdef Py_ssize_t row_bytes = cols // block * smm_block_bytes(type)
        if not isinstance(data, np.ndarray):
            raise ShapeError(f"data must be a numpy array, got {data.__class__.__name__}")
        arr = <object>data
        if not arr.flags.c_contiguous:
            raise ShapeError("data must be C-contiguous")
        allowed = _FLOAT_DTYPES.get(type, ()) + (np.dtype(np.uint8),)
        if arr.dtype not in allowed:
            raise ShapeError(f"data for {_type_name(type)} must have dtype "
                             f"{' or '.join(str(d) for d in allowed)}, got {arr.dtype}")
        if arr.nbytes != rows * row_bytes:
            raise ShapeError(f"data has {arr.nbytes} bytes, a {rows}x{cols} {_type_name(type)} "
                             f"weight needs {rows * row_bytes}")
        if arr.ndim == 2 and arr.shape[0] != rows:
            raise ShapeError(f"data has shape {arr.shape}, expected {rows} rows")
        if arr.ndim > 2:
            raise ShapeError(f"data must be 1-D or 2-D, got shape {arr.shape}")
        cdef const unsigned char[::1] raw = arr.reshape(-1).view(np.uint8)
        cdef unsigned char[::1] packed
        cdef Py_ssize_t nrows = rows
        self.data = data
        self.shape = (rows, cols)
        self.type = type
        self.view.type = type
        if repack is None:
            repack = _repack_default()
        if repack and rows >= 8 and smm_r8_supported(type):
            buf = np.empty(rows * row_bytes + 64, np.uint8)  # 64-byte aligned inside
            start = -buf.ctypes.data % 64
            out = buf[start:start + rows * row_bytes]
            packed = out
            _repack(type, &raw[0], nrows, row_bytes, &packed[0], read_only_file_map(arr) is not None)
            out.flags.writeable = False
            raw = out
            self.data = out.reshape(rows, row_bytes)
            self.view.type = type | SMM_R8
        self.view.data = <const char*>&raw[0]
        self.view.rows = rows
        self.view.cols = cols
        self.view.row_bytes = row_bytes

    @property
    def nbytes(self):
        """Bytes of storage (rows * row_bytes)."""
        return self.view.rows * self.view.row_bytes

    @property
    def row_bytes(self):
        return self.view.row_bytes

    @property
    def repacked(self):
        """Whether the storage is in the row-interleaved layout (see the class doc)."""
        return bool(self.view.type & SMM_R8)

    def __repr__(self):
        return f"Weight({_type_name(self.type)}, shape={self.shape})"

    def scratch_bytes(self, Py_ssize_t n):
        """Scratch bytes matmul needs for n activation rows."""
        return smm_scratch_bytes(self.view.type, self.view.rows, self.view.cols, n)

    def matmul(self, x, out=None, bias=None, bint accumulate=False, int n_threads=1):
        """``out[t, r] (+)= dot(W[r], x[t]) (+ bias[r])`` for x of shape (cols,) or (n, cols).

        Returns ``out`` (allocated when None; required when ``accumulate``), of shape
        (rows,) or (n, rows). 2-D x and out may have padded rows (inner stride 1).
        """
        cdef Py_ssize_t rows = self.view.rows, cols = self.view.cols
        if not isinstance(x, np.ndarray) or (<object>x).dtype != np.float32:
            raise ShapeError(f"x must be a float32 numpy array, got "
                             f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim not in (1, 2) or x.shape[x.ndim - 1] != cols:
            raise ShapeError(f"x must have shape ({cols},) or (n, {cols}), got {x.shape}")
        cdef bint vector = x.ndim == 1
        x2 = x.reshape(1, cols) if vector else x
        cdef Py_ssize_t n = x2.shape[0]
        cdef tuple expected = (rows,)
        if not vector:
            expected = (n, rows)
        if x2.strides[1] != 4 or x2.strides[0] % 4 or (n > 1 and x2.strides[0] < 4 * cols):
            raise ShapeError("x rows must be contiguous and must not overlap")
        if out is None:
            if accumulate:
                raise ShapeError("accumulate=True needs out (the array to add into)")
            out = np.empty(expected, dtype=np.float32)
        elif not isinstance(out, np.ndarray) or out.dtype != np.float32:
            raise ShapeError("out must be a float32 numpy array")
        if out.shape != expected:
            raise ShapeError(f"out must have shape {expected}, got {out.shape}")
        if not out.flags.writeable:
            raise ShapeError("out must be writable")
        y2 = out.reshape(1, rows) if vector else out
        if y2.strides[1] != 4 or y2.strides[0] % 4 or (n > 1 and y2.strides[0] < 4 * rows):
            raise ShapeError("out rows must be contiguous and must not overlap")
        if np.may_share_memory(out, x):
            raise ShapeError("out must not overlap x")
        cdef const float[::1] b
        cdef const float* bias_ptr = NULL
        if bias is not None:
            if not isinstance(bias, np.ndarray) or bias.dtype != np.float32 or bias.shape != (rows,):
                raise ShapeError(f"bias must be a float32 array of shape ({rows},)")
            if not bias.flags.c_contiguous:
                raise ShapeError("bias must be contiguous")
            b = bias
            bias_ptr = &b[0]
        cdef const float[:, :] xv = x2
        cdef float[:, :] yv = y2
        cdef Py_ssize_t ldx = xv.strides[0] // 4
        cdef Py_ssize_t ldy = yv.strides[0] // 4
        with nogil:
            matmul(&self.view, &xv[0, 0], n, ldx, &yv[0, 0], ldy, bias_ptr, accumulate, n_threads, NULL)
        return out

    def get_row(self, Py_ssize_t i, out=None):
        """Row i as float32 (an embedding lookup); written into ``out`` if given."""
        cdef Py_ssize_t rows = self.view.rows
        if i < 0:
            i += rows
        if i < 0 or i >= rows:
            raise ShapeError(f"row {i} is out of range for a weight with {rows} rows")
        if out is None:
            out = np.empty(self.view.cols, dtype=np.float32)
        elif (not isinstance(out, np.ndarray) or out.dtype != np.float32
              or out.shape != (self.view.cols,) or not out.flags.c_contiguous):
            raise ShapeError(f"out must be a contiguous float32 array of shape ({self.view.cols},)")
        cdef float[::1] o = out
        with nogil:
            get_row(&self.view, i, &o[0])
        return out

    def dequantize(self):
        """The whole matrix as float32 (rows, cols): for tests and debugging only."""
        out = np.empty(self.shape, dtype=np.float32)
        cdef float[:, ::1] o = out
        cdef Py_ssize_t r
        with nogil:
            for r in range(self.view.rows):
                get_row(&self.view, r, &o[r, 0])
        return out


def _isa():
    """Instruction set the kernels use now: 1 = AVX2, 2 = AVX-512 (VNNI)."""
    return smm_isa()


def _detected_isa():
    """Best instruction set this CPU supports: 1 = AVX2, 2 = AVX-512 (VNNI)."""
    smm_isa()
    return smm_isa_detected


def kernel_paths():
    """Which instruction-set path multiplies each weight type in this process.

    ``{"cpu": "avx512", "active": "avx2", "vnni": None, "types": {"Q4_1": "avx2-r8", ...}}``:
    ``cpu`` is the best path the CPU has, ``active`` the one in use (SMALLMIND_ISA=avx2 lowers
    it, and turns vnni off), ``vnni`` the vpdpbusd form of repacked batches and prompts (see
    _vnni), and every supported type maps to the kernel family that runs it (``-r8``: weights
    repacked at load into 8-row interleaved groups, see Weight).
    """
    types = {}
    for t in SUPPORTED_TYPES:
        if t == GGMLType.Q8_K:  # an activation format, never a model weight
            continue
        # weights loaded now (repack=None) take the row-interleaved layout when _repack_default()
        types[t.name] = _kernel_path(int(t), smm_r8_supported(int(t)) and _repack_default())
    return {"cpu": ISA_NAMES[_detected_isa()], "active": ISA_NAMES[smm_isa()],
            "vnni": VNNI_NAMES[smm_vnni_active], "types": types}


def _kernel_path(int gtype, bint repacked, Py_ssize_t nbytes=-1):
    """The kernel family that multiplies a weight of this type and layout now (nbytes: a float
    matrix's size; -1: say what happens past the streaming threshold)."""
    cdef str active = ISA_NAMES[smm_isa()], stream = "avx2-stream"
    if repacked:  # repacked weights run the AVX2 group kernels (_matmul_r8.h) on every CPU
        return "avx2-r8"
    if smm_block_elems(gtype) != 1:
        return active + ("-vnni" if active == "avx512" else "")
    if active != "avx512" or 0 <= nbytes <= smm_float_stream_min_bytes:  # _matmul_impl.h
        return active
    return stream if nbytes > 0 else f"{active}, {stream} over {smm_float_stream_min_bytes / 2 ** 20:g} MiB"


def _vnni(bint detected=False):
    """The vpdpbusd form the repacked kernels' tiles of several activation rows use (detected: the
    CPU's own): 0 none, 1 AVX512-VNNI (EVEX), 2 AVX-VNNI (VEX), 3 emulated by AVX2 (tests)."""
    return smm_vnni_detected if detected else smm_vnni_active


def _set_vnni(int mode):
    """Tests, benchmarks: use vpdpbusd form `mode` (see _vnni); returns the previous one,
    CPUFeatureError for a form this CPU lacks. Not thread-safe against matmuls."""
    old = _vnni()
    if mode not in VNNI_NAMES:
        raise ValueError(f"mode must be one of {sorted(VNNI_NAMES)}, got {mode}")
    if smm_set_vnni(mode) != mode:
        raise CPUFeatureError(f"this CPU has no {VNNI_NAMES[mode]} (vpdpbusd) instruction")
    return old


def _set_isa(int level):
    """Use at most `level` (1 = AVX2, 2 = AVX-512); returns the level now active. For tests
    and benchmarks (the AVX2 kernels on an AVX-512 machine); not thread-safe against matmuls."""
    return smm_set_isa(level)


cdef long long _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000000000LL + ts.tv_nsec


cdef void _busy_chunk(const void* arg, Py_ssize_t chunk) noexcept nogil:
    cdef long long end = _now_ns() + (<const long long*>arg)[0]
    while _now_ns() < end:
        pass


def _set_float_stream_min_bytes(Py_ssize_t nbytes):
    """Tests: float matrices above `nbytes` (default 1 MiB) take the one-stream-per-row AVX2
    kernel on every ISA, smaller ones the ISA's 4-row kernel. Returns the previous value."""
    global smm_float_stream_min_bytes
    old = smm_float_stream_min_bytes
    smm_float_stream_min_bytes = nbytes
    return old


def _set_r8_panel(mode):
    """Tests, benchmarks: repacked products of several rows run through unpacked panels always
    (True), never (False: 8 x 4 tiles) or from the measured sizes (None). Returns the old mode."""
    global smm_r8_panel_mode
    old = {-1: None, 0: False, 1: True}[smm_r8_panel_mode]
    smm_r8_panel_mode = -1 if mode is None else int(bool(mode))
    return old


def _bench_pool(int n_threads, Py_ssize_t n_chunks, double chunk_us, Py_ssize_t iters=1):
    """Seconds for `iters` pool jobs of n_chunks chunks that each busy-wait chunk_us: what a
    job costs beyond its work (publishing it, waking or finding the workers, the join)."""
    import time
    cdef long long ns = <long long>(chunk_us * 1e3)
    cdef Py_ssize_t i
    t0 = time.perf_counter()
    with nogil:
        for i in range(iters):
            smp_parallel(n_threads, n_chunks, _busy_chunk, &ns)
    return time.perf_counter() - t0


cdef extern from *:
    int __atomic_fetch_add(int* p, int v, int order) nogil
    int __ATOMIC_RELAXED


cdef void _count_units(const void* arg, Py_ssize_t u0, Py_ssize_t u1) noexcept nogil:
    cdef int* counts = <int*>arg
    cdef Py_ssize_t u
    for u in range(u0, u1):
        __atomic_fetch_add(&counts[u], 1, __ATOMIC_RELAXED)


def _pool_range_counts(int n_threads, Py_ssize_t n_units, Py_ssize_t min_take):
    """How many times a range job of the pool (smp_parallel_range) ran each unit (tests: once)."""
    counts = np.zeros(max(n_units, 0), dtype=np.int32)
    cdef int[::1] c = counts
    with nogil:
        smp_parallel_range(n_threads, n_units, min_take, _count_units, &c[0] if n_units > 0 else NULL)
    return counts


def _pool_counters():
    """The thread pool's counters since the process started: jobs run with workers, jobs run
    while the workers slept between jobs (contention seen), the TSC cycles the calling thread
    waited for workers at the ends of jobs, and the TSC now (to turn cycles into seconds)."""
    return {"jobs": smp_stat_jobs, "quiet_jobs": smp_stat_quiet_jobs,
            "wait_cycles": smp_stat_wait_cycles, "tsc": __rdtsc()}


def _bench_read(buf, int n_threads=1, Py_ssize_t iters=1, bint cpu_time=False):
    """Seconds for `iters` reads of the 64-byte aligned uint8 `buf` on n_threads of the pool (4
    loads in flight per thread): the read bandwidth the kernels can reach."""
    import time
    cdef const unsigned char[::1] b = buf
    cdef Py_ssize_t nbytes = b.shape[0], i
    if (<size_t>&b[0]) % 64:
        raise ShapeError("buf must be 64-byte aligned")
    cdef unsigned long long check = 0
    clock = time.thread_time if cpu_time else time.perf_counter
    t0 = clock()
    with nogil:
        for i in range(iters):
            check += smm_read_bandwidth(&b[0], nbytes, n_threads)
    return clock() - t0


def _matmul_many(list weights, x, int n_threads=1):
    """[w.matmul(x) for w in weights] through matmul_many (tests); x: (n, cols) float32, C order."""
    cdef Py_ssize_t k, m = len(weights)
    cdef Weight w
    if not 1 <= m <= SMM_MANY_MAX:
        raise ShapeError(f"1 to {SMM_MANY_MAX} weights, got {m}")
    cdef const float[:, ::1] xv = x
    cdef const WeightView* views[SMM_MANY_MAX]
    cdef float* ys[SMM_MANY_MAX]
    cdef Py_ssize_t lds[SMM_MANY_MAX]
    cdef float[:, ::1] yv
    outs = []
    for k in range(m):
        w = weights[k]
        if w.view.cols != xv.shape[1]:
            raise ShapeError(f"weight {k} has {w.view.cols} columns, x has {xv.shape[1]}")
        out = np.empty((xv.shape[0], w.view.rows), np.float32)
        yv = out
        views[k] = &w.view
        ys[k] = &yv[0, 0]
        lds[k] = w.view.rows
        outs.append(out)
    with nogil:
        matmul_many(<int>m, views, &xv[0, 0], xv.shape[0], xv.shape[1], ys, lds, n_threads, NULL)
    return outs


def _bench_sweep(list weights, Py_ssize_t n, int n_threads=1, Py_ssize_t iters=1, bint cpu_time=False):
    """Seconds for `iters` passes of n-row products with every weight in turn (a forward pass's
    matmuls: each weight streams from memory)."""
    import time
    cdef Py_ssize_t k, i, m = len(weights), max_cols = 1, max_rows = 1, max_scratch = 1
    cdef Weight w
    views = np.empty(m * sizeof(WeightView), dtype=np.uint8)
    cdef WeightView* v = <WeightView*><size_t>views.ctypes.data
    for k in range(m):
        w = weights[k]
        v[k] = w.view
        max_cols = max(max_cols, w.view.cols)
        max_rows = max(max_rows, w.view.rows)
        max_scratch = max(max_scratch, w.scratch_bytes(n))
    x = np.random.default_rng(0).standard_normal((n, max_cols), dtype=np.float32)
    y = np.empty((n, max_rows), dtype=np.float32)
    scratch = np.empty(max_scratch, dtype=np.uint8)
    cdef float[:, ::1] xv = x
    cdef float[:, ::1] yv = y
    cdef unsigned char[::1] s = scratch
    clock = time.thread_time if cpu_time else time.perf_counter
    t0 = clock()
    with nogil:
        for i in range(iters):
            for k in range(m):
                matmul(&v[k], &xv[0, 0], n, v[k].cols, &yv[0, 0], v[k].rows, NULL, False, n_threads, &s[0])
    return clock() - t0


def _bench(Weight w, x, out, int n_threads=1, Py_ssize_t iters=1, bint cpu_time=False):
    """Seconds for `iters` back-to-back matmuls through the cdef path (no Python per call);
    cpu_time: the calling thread's CPU time (robust on a busy machine; for n_threads=1 only)."""
    import time
    cdef const float[:, ::1] xv = x
    cdef float[:, ::1] yv = out
    cdef Py_ssize_t n = xv.shape[0], i
    if xv.shape[1] != w.view.cols or yv.shape[0] != n or yv.shape[1] != w.view.rows:
        raise ShapeError("x must be (n, cols) and out (n, rows), both C-contiguous")
    scratch = np.empty(max(w.scratch_bytes(n), 1), dtype=np.uint8)
    cdef unsigned char[::1] s = scratch
    clock = time.thread_time if cpu_time else time.perf_counter
    t0 = clock()
    with nogil:
        for i in range(iters):
            matmul(&w.view, &xv[0, 0], n, xv.shape[1], &yv[0, 0], yv.shape[1], NULL, False,
                   n_threads, &s[0])
    return clock() - t0
