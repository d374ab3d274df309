"""Length-prefixed strings (a GGUF string array: u64 little-endian byte length, then the
UTF-8 bytes) decoded into a list of str in one pass of C.

A 262,144-token vocabulary is 262,144 strings: walked in Python (unpack the length, slice
the map into bytes, decode) it took a quarter of a second; here each string is decoded
straight from the buffer, with no intermediate bytes object.
"""
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint64_t
from libc.string cimport memcpy


def read_strings(const unsigned char[::1] buf, Py_ssize_t pos, Py_ssize_t count):
    """Decode up to ``count`` strings from ``buf`` starting at byte ``pos``; invalid UTF-8 is
    kept losslessly (``surrogateescape``).

    Returns ``(strings, pos, failed)``: the strings decoded, the position after the last of
    them, and ``failed``: -1 when all ``count`` were read, 0 when string ``len(strings)`` has
    no room for its 8-byte length at ``pos``, 1 when its length (read at ``pos``) runs past
    the end of ``buf``. Nothing is allocated for a string before its length is checked.
    """
    cdef Py_ssize_t size = buf.shape[0], i
    cdef uint64_t length
    cdef list out = []
    if pos < 0 or count < 0:
        raise ValueError(f"pos and count must not be negative, got {pos} and {count}")
    for i in range(count):
        if pos > size - 8:
            return out, pos, 0
        memcpy(&length, &buf[pos], 8)  # GGUF is little-endian, as are the hosts we build for
        if length > <uint64_t>(size - pos - 8):
            return out, pos, 1
        out.append(PyUnicode_DecodeUTF8(<const char*>&buf[pos + 8], <Py_ssize_t>length,
                                        "surrogateescape"))
        pos += 8 + <Py_ssize_t>length
    return out, pos, -1
