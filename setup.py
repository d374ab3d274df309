"""Build the Cython kernels.

Every ``smallmind/_core/*.pyx`` (kernels) and ``smallmind/models/*.pyx`` (the layers
built from them) becomes an extension compiled with AVX2+FMA+F16C
(``smallmind/_cpu.py`` refuses to import them on a CPU without those) and OpenMP,
which the matmul kernels use to split large matrices across threads.

``SMALLMIND_ONLY=_gelu,_norm python setup.py build_ext --inplace`` builds a subset,
handy while working on one kernel.
"""
import os
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

CORE = Path("smallmind") / "_core"
COMPILE_ARGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-fno-math-errno", "-Wno-unused-function"]
LINK_ARGS = ["-fopenmp"]

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
    for pyx in sorted(CORE.glob("*.pyx")) + sorted((Path("smallmind") / "models").glob("*.pyx"))
    if not only or pyx.stem in only
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)
