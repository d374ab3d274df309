# Elementwise float32 kernels; out may alias an input.
cdef void add(const float* a, const float* b, float* out, Py_ssize_t n) noexcept nogil
cdef void scale(const float* a, float s, float* out, Py_ssize_t n) noexcept nogil
# SwiGLU: out[i] = silu(gate[i]) * up[i]
cdef void swiglu(const float* gate, const float* up, float* out, Py_ssize_t n) noexcept nogil
# Numerically stable softmax of x[0:n] in place.
cdef void softmax_inplace(float* x, Py_ssize_t n) noexcept nogil
# The same, out of place: out[0:n] = softmax(x[0:n]); out may alias x.
cdef void softmax_row(const float* x, float* out, Py_ssize_t n) noexcept nogil

# Boundary checks shared by the def wrappers of _elementwise, _gelu and _norm: each
# raises smallmind.errors.ShapeError naming the offending argument.
cimport numpy as cnp
# `array` as a C-contiguous native float32 ndarray with min_ndim <= ndim <= max_ndim.
cdef cnp.ndarray _f32_array(object array, str name, int min_ndim, int max_ndim, bint writable)
# `out` checked to have the shape of `like` (or a new empty array when out is None).
cdef cnp.ndarray _f32_out(object out, cnp.ndarray like, str name)
# `array` checked to have the shape of `like` (named like_name in the message).
cdef cnp.ndarray _same_shape_input(object array, str name, cnp.ndarray like, str like_name)
# Refuse memory overlap between out and array, except (if may_alias) being the same array.
cdef int _check_overlap(cnp.ndarray out, str out_name, cnp.ndarray array, str name,
                        bint may_alias) except -1
# An elementwise op on two same-shape arrays: validates (a, b, out) (out may be a or b,
# None allocates it), runs kernel over them without the GIL and returns out.
ctypedef void (*binary_kernel)(const float* a, const float* b, float* out, Py_ssize_t n) noexcept nogil
cdef cnp.ndarray _apply_binary(binary_kernel kernel, object a, str a_name, object b, str b_name,
                               object out)
# Whether the dispatching kernels (here and in _gelu) take their AVX-512 paths.
cdef bint simd_avx512() noexcept nogil
