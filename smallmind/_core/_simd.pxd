# The SIMD layer as Cython sees it: the AVX2 intrinsics the .pyx kernels use, the shared
# helpers of _simd.h / _activations.h, and the one instruction-set switch
# (_simd_dispatch.h). Declared once here; `from smallmind._core._simd cimport ...`.
# There is no _simd module: these are C declarations only.

cdef extern from "_activations.h" nogil:
    # Opaque to Cython: it only passes these values between the intrinsics.
    ctypedef float __m256
    ctypedef int __m256i
    __m256 _mm256_loadu_ps(const float* p)
    void _mm256_storeu_ps(float* p, __m256 v)
    __m256 _mm256_maskload_ps(const float* p, __m256i mask)
    void _mm256_maskstore_ps(float* p, __m256i mask, __m256 v)
    __m256 _mm256_set1_ps(float v)
    __m256 _mm256_setzero_ps()
    __m256 _mm256_add_ps(__m256 a, __m256 b)
    __m256 _mm256_sub_ps(__m256 a, __m256 b)
    __m256 _mm256_mul_ps(__m256 a, __m256 b)
    __m256 _mm256_fmadd_ps(__m256 a, __m256 b, __m256 c)
    __m256 _mm256_max_ps(__m256 a, __m256 b)
    __m256 _mm256_and_ps(__m256 a, __m256 b)
    __m256 _mm256_blendv_ps(__m256 a, __m256 b, __m256 mask)
    __m256 _mm256_castsi256_ps(__m256i v)

    # _simd.h
    __m256i sm_tail_mask(Py_ssize_t count)      # lanes [0, count) set
    float sm_hsum(__m256 v)
    float sm_hmax(__m256 v)
    __m256 sm_exp(__m256 x)                     # exp; 0 below -87.33 (and for -inf)
    float sm_exp_ss(float x)                    # the same for one float, bit-identical

    # _activations.h: whole arrays, 8 lanes (sm_) or 16 (sm512_, only when smm_isa() says so)
    void sm_gelu_tanh_array(const float* x, float* out, Py_ssize_t n)
    void sm_gelu_erf_array(const float* x, float* out, Py_ssize_t n)
    void sm_gelu_fast_array(const float* x, float* out, Py_ssize_t n)
    void sm_geglu_array(const float* gate, const float* up, float* out, Py_ssize_t n)
    void sm_swiglu_array(const float* gate, const float* up, float* out, Py_ssize_t n)
    void sm512_gelu_tanh_array(const float* x, float* out, Py_ssize_t n)
    void sm512_gelu_erf_array(const float* x, float* out, Py_ssize_t n)
    void sm512_gelu_fast_array(const float* x, float* out, Py_ssize_t n)
    void sm512_geglu_array(const float* gate, const float* up, float* out, Py_ssize_t n)
    void sm512_swiglu_array(const float* gate, const float* up, float* out, Py_ssize_t n)


# The instruction-set switch shared with the matmul kernels (SMM_ISA_AVX2 or
# SMM_ISA_AVX512): what the CPU supports, lowered by smm_set_isa.
cdef extern from "_simd_dispatch.h" nogil:
    enum:
        SMM_ISA_AVX2
        SMM_ISA_AVX512
    int smm_isa()
    int smm_set_isa(int level)
