"""The package's modules import only those below them in the data flow.

middleware -> consumers -> tracker -> (heartbeat, events) -> store, and api ->
events -> store: a module may import only modules listed before it here, and
never through an import inside a function (which would only hide a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "channels_presence"

#: Lowest first: each module may import only those before it.
ORDER = [
    "exceptions",
    "logs",
    "loops",
    "signals",
    "names",
    "conf",
    "stores.base",
    "stores.local",
    "stores.sentinel",
    "stores.redis",
    "stores.cluster",
    "stores",
    "checks",
    "closing",
    "listeners",
    "events",
    "heartbeat",
    "tracker",
    "metrics",
    "middleware",
    "consumers",
    "api",
    "receivers",
    "templatetags.channels_presence",
    "management.commands.presence",
    "admin_views",
    "admin",
    "apps",
]
#: Imports inside functions that are there for Django's app registry or an
#: optional dependency, not to dodge a cycle.
ALLOWED_LATE = {
    ("apps", "checks"),
    ("apps", "conf"),
    ("apps", "receivers"),
    ("stores", "stores.redis"),
    ("stores", "stores.cluster"),
    ("", "api"),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def imported(node: ast.ImportFrom | ast.Import, here: str, is_package: bool) -> list[str]:
    """The package modules an import statement names."""
    found = []
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = here.split(".") if is_package else here.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            target = ".".join([*base, *([node.module] if node.module else [])]).strip(".")
        elif node.module and node.module.startswith("channels_presence"):
            target = node.module.removeprefix("channels_presence").strip(".")
        else:
            return []
        candidates = [target] if node.module else []
        candidates += [f"{target}.{a.name}".strip(".") for a in node.names]
        found = [c for c in candidates if c in ORDER or c == ""]
    return found


def top_level_imports(tree: ast.Module) -> list[ast.ImportFrom | ast.Import]:
    out: list[ast.ImportFrom | ast.Import] = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue  # types only: no import at run time
    return out


def late_imports(tree: ast.Module) -> list[ast.ImportFrom | ast.Import]:
    out: list[ast.ImportFrom | ast.Import] = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.extend(n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return out


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p) or "__init__")
def test_imports_go_only_down(path: Path) -> None:
    here = module_name(path)
    if here in ("", "management", "management.commands", "templatetags"):
        return
    assert here in ORDER, f"{here} is not placed in tests/test_layout.py ORDER"
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    for node in top_level_imports(tree):
        for target in imported(node, here, is_package):
            if target in ("", here):
                continue
            assert ORDER.index(target) < ORDER.index(here), (
                f"{here} imports {target}, which comes later in the data flow"
            )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p) or "__init__")
def test_no_import_inside_a_function_dodges_a_cycle(path: Path) -> None:
    here = module_name(path)
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    for node in late_imports(tree):
        for target in imported(node, here, is_package):
            assert (here, target) in ALLOWED_LATE, (
                f"{here} imports {target} inside a function (line {node.lineno})"
            )
