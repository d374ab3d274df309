# Elementwise float32 kernels; out may alias an input.
cdef void add(const float* a, const float* b, float* out, Py_ssize_t n) noexcept nogil
cdef void scale(const float* a, float s, float* out, Py_ssize_t n) noexcept nogil
# SwiGLU: out[i] = silu(gate[i]) * up[i]
cdef void swiglu(const float* gate, const float* up, float* out, Py_ssize_t n) noexcept nogil
# Numerically stable softmax of x[0:n] in place.
cdef void softmax_inplace(float* x, Py_ssize_t n) noexcept nogil
