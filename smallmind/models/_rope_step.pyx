# cython: language_level=3
"""The rotary-position step of Llama and Gemma 3: each row's q and k heads turn by its
position's angles, from per-frequency tables the workspace keeps (``Workspace.rope``) so that
the cos/sin of a call's positions are computed once, not once per layer."""
from libc.string cimport memcmp, memcpy

from smallmind._core._attention cimport rope_angles, rope_rotate
from smallmind.models._layer cimport Call, Layer, RopeTable, Segment, Workspace, over_rows


cdef RopeTable* _rope_table(Workspace ws, Layer L, const Segment* seg, long long call) noexcept nogil:
    """The table of L's frequencies for segment `seg`'s positions (call < 0), or for every
    segment of call `call` at its own rows; NULL if none holds them yet (the least recently
    used table then sits in ws.rope[0], for the caller to fill)."""
    cdef size_t freq_bytes = (L.n_rot // 2) * sizeof(float)
    cdef RopeTable* t
    cdef RopeTable* oldest = &ws.rope[0]
    cdef int i
    ws.rope_uses += 1
    for i in range(ws.rope_n_slots):
        t = &ws.rope[i]
        if (t.n_rot == L.n_rot and (t.call == call if call >= 0 else
                                    t.call < 0 and t.rows == seg.n and t.pos0 == seg.pos0)
                and memcmp(t.freq, L.inv_freq, freq_bytes) == 0):
            t.used = ws.rope_uses
            return t
        if t.used < oldest.used:
            oldest = t
    if oldest != &ws.rope[0]:  # swap it to the front: the tables' buffers move with them
        ws.rope[0], oldest[0] = oldest[0], ws.rope[0]
    return NULL


cdef RopeTable* _rope_fill(Workspace ws, Layer L, long long call) noexcept nogil:
    """ws.rope[0] (see _rope_table), marked as holding L's frequencies; the caller computes
    its angles."""
    cdef RopeTable* t = &ws.rope[0]
    memcpy(t.freq, L.inv_freq, (L.n_rot // 2) * sizeof(float))
    t.n_rot, t.call, t.used = L.n_rot, call, ws.rope_uses
    return t


cdef RopeTable* _segment_table(Workspace ws, Layer L, const Segment* seg) noexcept nogil:
    """The angles of segment `seg`'s positions, row i at row i (looked up, or computed now)."""
    cdef RopeTable* t = _rope_table(ws, L, seg, -1)
    if t == NULL:
        t = _rope_fill(ws, L, -1)
        rope_angles(t.cs, t.sn, seg.n, L.n_rot, seg.pos0, L.inv_freq)
        t.rows, t.pos0 = seg.n, seg.pos0
    return t


cdef void _rope_rows(Workspace ws, Layer L, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Rows [r0, r1) of the call, by the angles at the same rows of ws.rope_now."""
    cdef Py_ssize_t half = L.n_rot // 2
    # k follows q in each row, so one pass turns the n_head query and n_kv_head key heads.
    rope_rotate(ws.q + r0 * ws.ldqkv, r1 - r0, ws.ldqkv, ws.n_head + ws.n_kv_head, ws.head_dim,
                L.n_rot, ws.rope_now.cs + r0 * half, ws.rope_now.sn + r0 * half, L.neox)


cdef void rope_segments(Workspace ws, Layer L, const Call* c) noexcept nogil:
    # The sequences of a batch sit at different positions: one table for a single position
    # range would be recomputed for every segment of every layer (cos/sin in double, most of
    # a batched step's rope). Instead each row's angles go to the row's own place in the
    # tables, once per call; rows turn by the same angles as alone (rope_angles per position).
    cdef Py_ssize_t half = L.n_rot // 2
    cdef const Segment* seg
    cdef RopeTable* t
    cdef int i
    if L.n_rot == 0:
        return
    if c.n_segs == 1:
        t = _segment_table(ws, L, &c.segs[0])
    else:
        t = _rope_table(ws, L, NULL, ws.n_calls)
        if t == NULL:
            t = _rope_fill(ws, L, ws.n_calls)
            for i in range(c.n_segs):
                seg = &c.segs[i]
                rope_angles(t.cs + seg.row0 * half, t.sn + seg.row0 * half, seg.n, L.n_rot, seg.pos0,
                            L.inv_freq)
            t.rows = 0  # the table holds no one segment's angles from row 0
    # The segments tile the call's rows from row 0 (_run), so either table holds the angles of
    # call row r at its row r, and the rows turn independently: a prompt's are shared out.
    ws.rope_now = t
    over_rows(ws, L, c, _rope_rows, 2 * (ws.n_head + ws.n_kv_head) * ws.head_dim)
