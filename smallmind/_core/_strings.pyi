"""Type stubs of the compiled string-array reader (smallmind/_core/_strings.pyx)."""
from typing import Any

def read_strings(buf: Any, pos: int, count: int) -> tuple[list[str], int, int]: ...
