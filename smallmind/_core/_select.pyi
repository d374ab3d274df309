"""Token selection kernels (argmax, top-k, top-p, min-p) for SamplerCore (compiled: _select.pyx).

Everything here is ``cdef`` (declared in _select.pxd, cimported by _sampling): the module
has no Python-level API.
"""
