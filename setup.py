"""Build the Cython kernels.

Every ``smallmind/_core/*.pyx`` (kernels) and ``smallmind/models/*.pyx`` (the layers built
from them) becomes an extension compiled with AVX2+FMA+F16C
(``smallmind/_cpu.py`` refuses to import them on a CPU without those). Threads come from
the package's own pool (``_core/_threadpool.h``), not OpenMP, so a wheel links nothing but
libc and libm and needs no bundled ``libgomp``. Release binaries carry no debug info and
no symbol table (``-g0``, ``-Wl,--strip-all``): 5 times smaller, and a traceback never
needed them.

Modules are translated and compiled in parallel, one per core (``SMALLMIND_BUILD_JOBS=N``
overrides), so ``pip install .`` takes as long as the largest module, not all of them.

``SMALLMIND_ONLY=_gelu,_norm python setup.py build_ext --inplace`` builds a subset,
handy while working on one kernel.
"""
import os
import re
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CORE = Path("smallmind") / "_core"
COMPILE_ARGS = ["-O3", "-g0", "-mavx2", "-mfma", "-mf16c", "-fno-math-errno", "-Wno-unused-function"]
LINK_ARGS = ["-g0", "-Wl,--strip-all"]
JOBS = int(os.environ.get("SMALLMIND_BUILD_JOBS", "0")) or os.cpu_count() or 1


class ParallelBuildExt(build_ext):
    """``build_ext`` compiling one extension per core unless ``-j`` says otherwise."""

    def finalize_options(self):
        if self.parallel is None:
            self.parallel = JOBS
        super().finalize_options()


def source_bytes(path, seen=None):
    """Bytes of a source file and of the local headers it includes, transitively: a proxy
    for how long it takes to compile."""
    seen = set() if seen is None else seen
    total = path.stat().st_size
    for name in re.findall(r'"(_\w+\.h)"', path.read_text()):
        header = CORE / name
        if header.exists() and header not in seen:
            seen.add(header)
            total += source_bytes(header, seen)
    return total


only = {name for name in os.environ.get("SMALLMIND_ONLY", "").split(",") if name}
extensions = [
    Extension(
        ".".join(pyx.with_suffix("").parts),
        [str(pyx)],
        include_dirs=[np.get_include(), str(CORE)],
        extra_compile_args=COMPILE_ARGS,
        extra_link_args=LINK_ARGS,
        # Link libm explicitly: otherwise expf/tanhf bind to an unversioned, slower symbol.
        libraries=["m"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # The kernels live partly in C headers: a changed header must rebuild the module.
        depends=[str(h) for h in sorted(CORE.glob("*.h"))],
    )
    # Longest compile first (_matmul takes half the CPU time): the parallel build then ends
    # on short jobs instead of starting the longest one last.
    for pyx in sorted([*CORE.glob("*.pyx"), *(Path("smallmind") / "models").glob("*.pyx")],
                      key=lambda pyx: (-source_bytes(pyx), pyx.name))
    if not only or pyx.stem in only
]

setup(
    cmdclass={"build_ext": ParallelBuildExt},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        nthreads=JOBS,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)
