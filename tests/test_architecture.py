"""The package's shape, read from its source (docs/architecture.md describes it).

Every ``import`` and ``from ... import`` of every module counts, wherever it stands: at the top,
inside a function, or under ``if TYPE_CHECKING:`` (a type-only cycle is still a cycle to read
around, and a checker follows it). Importing ``a.b.c`` also runs ``a/__init__`` and
``a/b/__init__``: those count too, except a module's own packages (Python runs them first).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tileseg"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# What counts as a local-vs-store branch: asking which kind a place is, by URL or by type
BRANCH_CALLS = {"is_store_url", "is_store_zarr"}
BRANCH_TYPES = {"LocalLocation", "StoreLocation", "LocalStaging", "StoreStaging",
                "LocalWorkDir", "StoreWorkDir", "StoreURL"}
# The layers of docs/architecture.md, lowest first: a module imports from its own package (or
# module) and from lower layers only. Units of one layer are independent of each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "text", "progress", "_version", "yaml_bounds", "metrics"),
    ("choices",),
    ("deps", "logs"),
    ("tiling",),
    ("sources",),
    ("config",),
    ("models",),
    ("outputs",),
    ("scenes", "samples"),
    ("inference",),
    ("execution",),
    ("plan", "preview", "evaluation", "vectorization", "training"),
    ("memory", "info", "run_report", "batch_report", "batch_lock"),
    ("pipeline",),
    ("batch",),
    ("cli",),
    ("__main__", "workflows"),
)
# the store side of tileseg/outputs, which only that package uses
STORE_MODULES = {"tileseg.outputs.store", "tileseg.outputs.store_objects",
                 "tileseg.outputs.store_staging"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _packages_of(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _imported(module: str, path: Path) -> list[tuple[int, str, str]]:
    """(line, what the statement names, the tileseg module it loads) for every import."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*kept, *([node.module] if node.module else [])])
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.append((node.lineno, name, name if name in MODULES else base))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, alias.name) for alias in node.names]
    return [(line, named, target) for line, named, target in found
            if target.split(".")[0] == "tileseg"]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        deps = set()
        for _, _, target in _imported(module, path):
            for dep in {target} | _packages_of(target):
                if dep in MODULES and dep != module and dep not in _packages_of(module):
                    deps.add(dep)
        graph[module] = deps
    return graph


def _a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)) is not None:
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    cycle = _a_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_is_found_where_there_is_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _a_cycle(graph) == ["a", "b", "c", "a"]
    assert _a_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_the_package_root() -> None:
    """``tileseg/__init__`` names the whole public API: a module that imported it (for
    ``__version__``, say: that lives in ``tileseg._version``) would depend on all the others."""
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {named}"
             for module, path in MODULES.items() if module != "tileseg"
             for line, named, target in _imported(module, path) if target == "tileseg"]
    assert not wrong, wrong


def _unit(module: str) -> str:
    """The top-level package or module ``module`` belongs to (``tileseg.outputs.store`` ->
    ``outputs``); the package root itself is ``""``."""
    return module.split(".")[1] if "." in module else ""


def test_every_package_and_top_level_module_has_a_layer() -> None:
    layered = [unit for layer in LAYERS for unit in layer]
    assert len(layered) == len(set(layered))
    assert {_unit(m) for m in MODULES} - {""} == set(layered)


def test_packages_import_only_from_lower_layers() -> None:
    """The folders show the architecture: sources and models below the destinations, those
    below inference, inference below the run (plan, pipeline), the run below batch and the CLI.
    (The package root, which names the public API, stands above all.)"""
    layer_of = {unit: n for n, layer in enumerate(LAYERS) for unit in layer}
    wrong = []
    for module, path in MODULES.items():
        if module == "tileseg":
            continue
        for line, _, target in _imported(module, path):
            mine, theirs = _unit(module), _unit(target if target in MODULES else module)
            if theirs and theirs != mine and layer_of[theirs] >= layer_of[mine]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {target}")
    assert not wrong, "\n".join(wrong)


def _branches(module: str, path: Path) -> list[str]:
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        name = (node.id if isinstance(node, ast.Name) else
                node.attr if isinstance(node, ast.Attribute) else None)
        if name in BRANCH_CALLS and isinstance(node.ctx, ast.Load):
            found.append(f"{where}:{node.lineno} {name}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "isinstance" and len(node.args) == 2):
            kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            for kind in kinds:
                kind_name = kind.id if isinstance(kind, ast.Name) else getattr(kind, "attr", "")
                if kind_name in BRANCH_TYPES:
                    found.append(f"{where}:{node.lineno} isinstance {kind_name}")
    return found


def _stated_branch_count() -> int:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    stated = re.search(r"Local-vs-store branches outside `tileseg/outputs/`: \*\*(\d+)\*\*", text)
    assert stated is not None, f"{ARCHITECTURE} states no branch count"
    return int(stated.group(1))


def test_local_vs_store_branches_stay_in_the_outputs_package() -> None:
    """Outside ``tileseg/outputs/`` code asks a :class:`~tileseg.outputs.location.Location`
    to act; it does not ask which kind of place it is. The few branches left are counted in
    docs/architecture.md, with why each stays; one more fails here."""
    found = [branch for module, path in MODULES.items()
             if not module.startswith("tileseg.outputs")
             for branch in _branches(module, path)]
    assert len(found) <= _stated_branch_count(), "\n".join(found)


def test_the_branch_count_sees_each_kind_of_branch(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("if is_store_url(x):\n    pass\nok = isinstance(s, (int, StoreStaging))\n"
                      "y = store.is_store_zarr\n")
    assert len(_branches("sample", sample)) == 3


def test_only_the_outputs_package_uses_its_store_side() -> None:
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {target}"
             for module, path in MODULES.items() if not module.startswith("tileseg.outputs")
             for line, _, target in _imported(module, path) if target in STORE_MODULES]
    assert not wrong, wrong
