"""The layers import downwards only: physics/ needs nothing but itself, numpy and scipy; physics/ and model/
never import uncertainty/."""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_cvdm"


def imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports (also inside functions), absolute, e.g. ``napari_cvdm.physics.optics``."""
    package = ["napari_cvdm", *path.parent.relative_to(PACKAGE).parts]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            names += [module] if node.module else [f"{module}.{alias.name}" for alias in node.names]
    return names


def files(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


@pytest.mark.parametrize("path", files("physics"), ids=lambda p: p.name)
def test_physics_imports_only_itself_numpy_scipy_and_the_standard_library(path):
    allowed = {"numpy", "scipy", "__future__", *sys.stdlib_module_names}
    for module in imported_modules(path):
        top = module.split(".")[0]
        assert module.startswith("napari_cvdm.physics") or (top != "napari_cvdm" and top in allowed), module


@pytest.mark.parametrize("path", files("physics") + files("model"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_physics_and_model_do_not_import_uncertainty(path):
    assert not [m for m in imported_modules(path) if m.startswith("napari_cvdm.uncertainty")]


def test_the_import_parser_resolves_relative_imports():
    consistency = imported_modules(PACKAGE / "physics" / "consistency.py")
    assert "napari_cvdm.physics.noise" in consistency and "napari_cvdm.physics.optics" in consistency
    assert "napari_cvdm.uncertainty.conformal" in imported_modules(PACKAGE / "uncertainty" / "apply.py")
