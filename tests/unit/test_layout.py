"""Dependencies point one way: every `sgm_bake` import (module level or inside a function) goes
from a layer to a layer below it, in the order the README's "Layout" section states. Read with
ast, so nothing is imported and a forbidden import inside a function is seen as well."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "sgm_bake"

# Top to bottom; a module may import only from layers below its own (and from its own folder).
# Keep in step with the README's "Layout" section.
LAYERS: list[set[str]] = [
    {"__main__", "_data"},
    {"cli"},
    {"pipeline"},
    {"evaluation"},
    {"publish"},
    {"record"},
    {"runtime"},
    {"organism"},
    {"datasets"},
    {"core", "io"},
    {"errors", "resources", "options", "text", "__init__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def part_of(module: str) -> str:
    """The top-level folder (or module) of `sgm_bake.<part>...`; the package itself is
    `__init__` (its `__version__`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported sgm_bake module) for every import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "sgm_bake":  # `from sgm_bake import x`: x is a part or a name
                found += [(node.lineno, f"sgm_bake.{alias.name}") for alias in node.names]
            elif node.module.startswith("sgm_bake."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("sgm_bake")]
    return found


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        own = relative.parts[0].removesuffix(".py")
        for line, module in imports(path):
            target = part_of(module)
            if target == "__version__":
                target = "__init__"
            if target == own:
                continue
            if target not in RANK or own not in RANK:
                found.append(f"{relative}:{line} {module}: a folder missing from LAYERS")
            elif RANK[target] <= RANK[own]:
                found.append(f"{relative}:{line} imports {module} (layer {own} -> {target})")
    return found


def test_every_folder_of_the_package_has_a_layer():
    parts = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert parts == set(RANK)


def test_imports_point_one_way():
    assert violations() == []


@pytest.mark.parametrize(
    ("source", "module", "ok"),
    [
        ("pipeline", "sgm_bake.record.store", True),
        ("record", "sgm_bake.publish.card", False),
        ("core", "sgm_bake.io.safetensors", False),
        ("publish", "sgm_bake.pipeline.record", False),
    ],
)
def test_the_rule_itself(source: str, module: str, ok: bool):
    assert (RANK[part_of(module)] > RANK[source]) == ok


def test_no_module_imports_private_names_of_another():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sgm_bake"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                private = [name for name in private if not name.startswith("__")]
                if private:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {private}")
    assert found == []
