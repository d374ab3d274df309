# cython: language_level=3
"""Llama steps that Gemma 3 reuses (see _llama.pyx)."""
from smallmind.models._layer cimport Call, Layer, Workspace

cdef void attn_norm(Workspace ws, Layer L, const Call* c) noexcept nogil
cdef void qkv_matmul(Workspace ws, Layer L, const Call* c) noexcept nogil
cdef void rope_qk(Workspace ws, Layer L, const Call* c) noexcept nogil
cdef void ffn_norm(Workspace ws, Layer L, const Call* c) noexcept nogil
cdef void ffn_matmul(Workspace ws, Layer L, const Call* c) noexcept nogil
