"""The layers call only down (docs/architecture.md#layers): a package imports only the packages below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each product package and what it may import, bottom first.
ALLOWED: dict[str, set[str]] = {
    "core": set(),  # the wire types, the error type, the settings
    "store": {"core"},  # the state processes share: transcripts, holds, rate windows, usage
    "engines": {"core"},
    "multimodal": {"core"},
    "sessions": {"core", "store"},
    "tools": {"core", "engines"},
    "chat": {"core", "engines", "multimodal", "sessions", "store", "tools"},
    "app": {"core", "engines", "multimodal", "sessions", "store", "tools", "chat"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a module imports, anywhere in it (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(ALLOWED)


@pytest.mark.parametrize("package", ALLOWED)
def test_a_package_imports_only_the_layers_below(package: str) -> None:
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"{package}/ has no modules"
    wrong = {str(m.relative_to(ROOT)): sorted(imported_packages(m) - ALLOWED[package] - {package}) for m in modules}
    assert not {m: p for m, p in wrong.items() if p}, f"{package}/ imports a layer above it"


def test_every_product_package_has_a_layer() -> None:
    not_product = ("tests", "bench", "fixtures", "scripts")
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name not in not_product}
    assert packages == set(ALLOWED), packages ^ set(ALLOWED)
