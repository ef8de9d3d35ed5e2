"""Architectural properties of the package, held by tests: dependencies point one way between
the subpackages (DESIGN.md's layout), no module imports another in a cycle (lazy imports
included), and a deprecated library API called from localdistil fails the suite."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "localdistil"
SHARED = {"config", "errors", "files", "spec", "prompts"}
#: What each part may import from the package (besides itself): the data flow of DESIGN.md,
#: cli -> serve, trace, training, sources -> inference -> models, records -> shared ground.
ALLOWED = {
    "shared": {"shared"},
    "records": {"shared"},
    "models": {"shared"},
    "inference": {"models", "records", "shared"},
    "trace": {"inference", "models", "records", "shared"},
    "training": {"inference", "models", "records", "shared"},
    "sources": {"inference", "models", "records", "shared"},
    "serve": {"inference", "models", "records", "shared"},
}


def _part(module: str) -> str:
    """The layer a dotted module name belongs to (``localdistil.inference.engine`` ->
    ``inference``; the top-level package, ``cli`` and ``__main__`` -> ``entry``)."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in {"__init__", "__main__", "cli"}:
        return "entry"
    return "shared" if parts[1] in SHARED else parts[1]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        dotted = ".".join(("localdistil", *path.relative_to(PACKAGE).with_suffix("").parts))
        modules[dotted.removesuffix(".__init__")] = path
    return modules


def _imports(module: str, path: Path) -> set[str]:
    """Every localdistil module ``module`` imports, at the top or inside a function."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    modules = _modules()
    return {name for name in found if name in modules and name != module}


def test_dependencies_point_one_way_between_the_subpackages():
    wrong = []
    for module, path in _modules().items():
        part = _part(module)
        if part == "entry":
            continue
        allowed = ALLOWED[part] | {part}
        wrong += [f"{module} imports {target} ({part} -> {_part(target)})"
                  for target in sorted(_imports(module, path)) if _part(target) not in allowed]
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_another_in_a_cycle():
    modules = _modules()
    graph = {module: _imports(module, path) for module, path in modules.items()}
    # a package's __init__ re-exporting its submodules is not a cycle with them
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_a_deprecation_from_a_library_localdistil_calls_fails_the_suite(fail_on_our_deprecations):
    library = {"warnings": warnings}
    exec(
        compile(
            "def old_api():\n"
            "    warnings.warn('old_api is going away', FutureWarning, stacklevel=2)\n",
            "/site-packages/somelib/api.py",
            "exec",
        ),
        library,
    )
    ours = {"old_api": library["old_api"]}
    exec(
        compile(
            "def our_call():\n    return old_api()\n",
            str(PACKAGE / "inference" / "fake.py"),
            "exec",
        ),
        ours,
    )

    with pytest.warns(FutureWarning):
        ours["our_call"]()
    assert len(fail_on_our_deprecations) == 1
    assert (
        "fake.py:2" in fail_on_our_deprecations[0]
        and "old_api is going away" in fail_on_our_deprecations[0]
    )
    fail_on_our_deprecations.clear()  # what the fixture would fail the test on

    with pytest.warns(FutureWarning):  # a test calling the library itself is not blamed on us
        library["old_api"]()
    assert fail_on_our_deprecations == []
