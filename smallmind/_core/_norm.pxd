# Normalisations over one row of n float32 values; out may alias x.
cdef void layernorm(const float* x, const float* w, const float* b, float* out,
                    Py_ssize_t n, float eps) noexcept nogil          # b may be NULL
cdef void rmsnorm(const float* x, const float* w, float* out,
                  Py_ssize_t n, float eps) noexcept nogil
# Fused residual: x += delta (x updated in place), then out = norm(x).
cdef void residual_layernorm(float* x, const float* delta, const float* w, const float* b,
                             float* out, Py_ssize_t n, float eps) noexcept nogil
cdef void residual_rmsnorm(float* x, const float* delta, const float* w, float* out,
                           Py_ssize_t n, float eps) noexcept nogil
