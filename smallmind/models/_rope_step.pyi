"""Type stub of the compiled _rope_step module: cdef functions only (see _rope_step.pxd)."""
