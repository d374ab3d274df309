# GELU family. Pointers are float32, n elements, `out` may alias `x` (in place).
cdef void gelu_tanh(const float* x, float* out, Py_ssize_t n) noexcept nogil   # 0.5x(1+tanh(√(2/π)(x+0.044715x³)))
cdef void gelu_erf(const float* x, float* out, Py_ssize_t n) noexcept nogil    # exact 0.5x(1+erf(x/√2))
cdef void gelu_fast(const float* x, float* out, Py_ssize_t n) noexcept nogil   # cheapest approximation; error documented
# Gated variant (Gemma's GeGLU): out[i] = gelu_tanh(gate[i]) * up[i]; out may alias gate or up.
cdef void geglu(const float* gate, const float* up, float* out, Py_ssize_t n) noexcept nogil
