# Causal attention over a KV cache, and rotary position embeddings.
#
# KV cache layout for one layer: k and v are (n_kv_head, capacity, head_dim) float32,
# so one head's keys are contiguous; `head_stride` = capacity * head_dim.
# q is (n_q, n_head * head_dim) with rows ldq floats apart; out likewise with ldo.
# Query row i sits at position pos0 + i and attends to cache slots
# [max(0, pos0 + i - window + 1), pos0 + i] (window <= 0: no window).
# Query head h reads KV head h // (n_head // n_kv_head) (grouped-query attention).
# out must not overlap q, k or v. n_threads <= 1 runs on the calling thread; more
# split (tile of rows, set of query heads) tasks over the thread pool of the matrix products
# when the call is large enough to gain from it. A row's result is the same bits whatever
# n_q, pos0 (the chunk it is in) or n_threads.
cdef void attention(const float* q, Py_ssize_t n_q, Py_ssize_t ldq,
                    const float* k, const float* v, Py_ssize_t head_stride, Py_ssize_t pos0,
                    int n_head, int n_kv_head, int head_dim, float scale, Py_ssize_t window,
                    float* out, Py_ssize_t ldo, int n_threads) noexcept nogil
# Whether a call of n_q rows at pos0 runs on the calling thread alone whatever n_threads is
# (too little work to gain from the pool).
cdef bint attention_single_threaded(Py_ssize_t n_q, Py_ssize_t pos0, int n_head,
                                    int head_dim) noexcept nogil

# Rotate x in place: n_rows rows (ldx floats apart) of n_heads heads of head_dim values,
# row i at position pos0 + i * pos_step (pos_step 0 rotates every row by the same angle,
# which is how a shifted KV cache re-positions its keys). The first n_rot dims of each
# head rotate with frequencies inv_freq[0 : n_rot/2]: angle = position * inv_freq[j].
# neox=False: pairs (2j, 2j+1) (GGUF "llama"); neox=True: pairs (j, j + n_rot/2).
cdef void rope(float* x, Py_ssize_t n_rows, Py_ssize_t ldx, int n_heads, int head_dim,
               int n_rot, double pos0, double pos_step, const float* inv_freq,
               bint neox) noexcept nogil

# The same rotation in two halves, for callers that rotate several row sets (q and k, and
# every layer of a model) at the same positions and frequencies: rope_angles fills tables
# cs, sn of n_rows x n_rot/2 floats (row i at position pos0 + i) with exactly the values
# rope computes, and rope_rotate applies them, so the result is rope's bit for bit.
cdef void rope_angles(float* cs, float* sn, Py_ssize_t n_rows, int n_rot, double pos0,
                      const float* inv_freq) noexcept nogil
cdef void rope_rotate(float* x, Py_ssize_t n_rows, Py_ssize_t ldx, int n_heads, int head_dim,
                      int n_rot, const float* cs, const float* sn, bint neox) noexcept nogil
