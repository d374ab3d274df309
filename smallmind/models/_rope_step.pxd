# cython: language_level=3
"""The rotary-position step (see _rope_step.pyx)."""
from smallmind.models._layer cimport Call, Layer, Workspace

# Rotate the q and k heads of each segment's rows by their positions (the layer's rotary
# frequencies), with the workspace's angle tables; the angles of a call of several segments
# are computed once per call, not once per segment and layer.
cdef void rope_segments(Workspace ws, Layer L, const Call* c) noexcept nogil
