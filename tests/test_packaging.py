"""The package as users get it: CPU check, sdist contents, an installed wheel that runs."""
from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from smallmind._cpu import REQUIRED, check_cpu, missing_features
from smallmind.errors import CPUFeatureError

REPO = Path(__file__).resolve().parent.parent


def test_cpu_without_avx2_gets_a_clear_import_error():
    features = {name: True for name in REQUIRED}
    check_cpu(features)  # all present: fine
    features["AVX2"] = False
    with pytest.raises(ImportError, match="AVX2"):
        check_cpu(features)
    with pytest.raises(CPUFeatureError):
        check_cpu({})
    assert missing_features({"AVX2": True}) == ["FMA3", "F16C"]


def test_import_checks_cpu_before_any_kernel(tmp_path):
    """On a CPU lacking AVX2 (simulated through numpy's feature table, which is what
    smallmind reads), `import smallmind` raises ImportError and loads no compiled kernel."""
    code = (
        "import sys, numpy\n"
        "try:\n"
        "    import numpy._core._multiarray_umath as m\n"
        "except ImportError:\n"
        "    import numpy.core._multiarray_umath as m\n"
        "m.__cpu_features__['AVX2'] = False\n"
        "try:\n"
        "    import smallmind\n"
        "except ImportError as e:\n"
        "    assert 'AVX2' in str(e), e\n"
        "    assert not [k for k in sys.modules if k.startswith('smallmind._core.')]\n"
        "    print('refused')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=_env())
    assert "refused" in out.stdout, out.stderr


def _env():
    import os
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.mark.slow
def test_sdist_holds_cython_sources_and_model(tmp_path):
    # Run from tmp_path: in the checkout, setuptools' build/ folder would shadow `build`.
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, cwd=tmp_path)
    (sdist,) = tmp_path.glob("smallmind-*.tar.gz")
    names = tarfile.open(sdist).getnames()
    for stem in ("_gelu", "_attention", "_pool", "_matmul", "_norm"):
        assert any(n.endswith(f"smallmind/_core/{stem}.pyx") for n in names), stem
        assert any(n.endswith(f"smallmind/_core/{stem}.pxd") for n in names) or stem == "_pool", stem
    for source in ("_layer.pyx", "_layer.pxd", "_gpt2.pyx", "_llama.pyx", "_llama.pxd", "_gemma3.pyx",
                   "_rope_step.pyx", "_rope_step.pxd"):
        assert any(n.endswith(f"smallmind/models/{source}") for n in names), source
    assert any(n.endswith("smallmind/py.typed") for n in names)
    assert any(n.endswith("smallmind/data/default.gguf") for n in names)
    assert any(n.endswith("/LICENSE") for n in names)


@pytest.mark.slow
def test_wheel_contains_model_and_runs_from_an_install(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheel_dir), str(REPO)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheel_dir.glob("smallmind-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "smallmind/data/default.gguf" in names
    assert "smallmind/py.typed" in names
    assert any(n.startswith("smallmind/_core/_matmul") and n.endswith(".so") for n in names)
    # Release-grade: small, MIT licence inside, jinja2 a dependency, binaries that link no
    # OpenMP runtime (nothing for auditwheel to bundle) and carry no symbols or debug info.
    assert wheel.stat().st_size <= 3_000_000
    zf = zipfile.ZipFile(wheel)
    assert "MIT License" in zf.read(next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))).decode()
    metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist: jinja2" in metadata and "License-Expression: MIT" in metadata
    for name in (n for n in names if n.endswith(".so")):
        elf = zf.read(name)
        assert b"libgomp" not in elf, name
        assert b".symtab" not in elf and b".debug_info" not in elf, name
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import smallmind, sys; assert smallmind.__file__.startswith(sys.argv[1]), smallmind.__file__;"
            "e = smallmind.Engine.default(); r = e.generate('ROMEO:', max_new_tokens=40, seed=0);"
            "print(len(r.tokens), e.source)")
    import os
    env = dict(os.environ)
    env["PYTHONPATH"] = str(target)
    out = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("40 ") and "default.gguf" in out.stdout
