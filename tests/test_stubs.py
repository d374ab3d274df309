"""The .pyi stubs of the compiled modules: one per extension, naming only what exists."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import smallmind

CORE = Path(smallmind.__file__).parent / "_core"
MODULES = sorted(p.stem for p in CORE.glob("*.pyx"))


def _stub_names(tree: ast.Module) -> dict[str, ast.stmt]:
    names: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("smallmind._core"):
            for alias in node.names:  # re-exports: "import x as x"
                if alias.asname == alias.name:
                    names[alias.name] = node
    return names


@pytest.mark.parametrize("name", MODULES)
def test_stub_names_exist_at_runtime(name):
    stub = CORE / f"{name}.pyi"
    assert stub.exists(), f"{name}.pyx has no {name}.pyi"
    module = importlib.import_module(f"smallmind._core.{name}")
    stubbed = _stub_names(ast.parse(stub.read_text()))
    for attr, node in stubbed.items():
        if attr.startswith("_F32"):
            continue  # a type alias of the stub itself
        assert hasattr(module, attr), f"{name}.pyi declares {attr}, which the module lacks"
        if isinstance(node, ast.ClassDef):
            cls = getattr(module, attr)
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name != "__init__":
                    assert hasattr(cls, item.name), f"{name}.{attr}.{item.name} is not at runtime"


@pytest.mark.parametrize("name", MODULES)
def test_public_runtime_names_are_stubbed(name):
    module = importlib.import_module(f"smallmind._core.{name}")
    stubbed = _stub_names(ast.parse((CORE / f"{name}.pyi").read_text()))
    public = {a for a in vars(module) if not a.startswith("_")
              and getattr(getattr(module, a), "__module__", module.__name__) == module.__name__
              and a not in ("np", "cnp", "math", "os", "mmap", "operator", "threading", "dataclass")}
    missing = sorted(public - set(stubbed))
    assert not missing, f"{name}.pyi lacks {missing}"
