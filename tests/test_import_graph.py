"""The package's import graph, read from the source with ``ast``: no import cycle among prunectl
modules at module level; no two modules importing each other and no import running up a floor
(``FLOORS``: foundation, model, passes, methods, recipe and project, steps, commands);
``modeling/`` (model structure and surgery) never reaching into ``methods/`` or ``evaluation/``,
``pipelines/`` never into ``methods/``, no method importing another method (what methods
share lives in ``methods/width/`` and the other non-method modules of ``methods/``), and
``methods/`` importing no pass (``pipelines/`` but the registry the method contract reads, the
whole-model perplexity): a method runs the passes its inputs hand it; the last five not even
inside a function.  No test module imports ``conftest`` (shared code is in
``tests/helpers.py``).

Imports under ``if TYPE_CHECKING:`` do not run and do not count.  An import of ``a.b.c`` is an
edge to ``a.b.c`` alone: Python initialises the parent packages first, so a package
``__init__`` that re-exports its submodules is not a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import prunectl

SRC = Path(prunectl.__file__).parent.parent


def _modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name → (file, is a package ``__init__``), for every ``.py`` under ``package``."""
    found = {}
    for file in (root / package).rglob("*.py"):
        parts = list(file.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (file, is_package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(body: list[ast.stmt], into_functions: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run: at import time (class bodies, ``try``, ``if`` included),
    or also inside functions with ``into_functions``; never those under ``if TYPE_CHECKING``."""
    found = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not into_functions:
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            found += _imports(node.orelse, into_functions)
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    found += _imports([child], into_functions)
                elif isinstance(child, ast.ExceptHandler):
                    found += _imports(child.body, into_functions)
    return found


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_package: bool,
             modules: dict) -> set[str]:
    """The package's modules an import statement loads (a name imported from a package is an
    edge to that package, a submodule imported from it an edge to the submodule)."""
    if isinstance(node, ast.Import):
        wanted = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = name.split(".")[: len(name.split(".")) - (not is_package) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        wanted = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    targets = set()
    for target in wanted:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            targets.add(target)
    return targets


def import_graph(root: Path, package: str, into_functions: bool = False) -> dict[str, set[str]]:
    """Module → the package's modules it imports."""
    modules = _modules(root, package)
    return {name: set().union(*[_targets(node, name, is_package, modules)
                                for node in _imports(ast.parse(file.read_text()).body,
                                                     into_functions)])
            for name, (file, is_package) in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def forbidden_imports(graph: dict[str, set[str]], inside: str, banned: tuple[str, ...]) -> list[str]:
    return sorted(f"{module} imports {target}" for module, targets in graph.items()
                  if module == inside or module.startswith(inside + ".")
                  for target in targets
                  if any(target == b or target.startswith(b + ".") for b in banned))


def method_units(package: str, registry: dict[str, str]) -> set[str]:
    """The method packages and modules, from the registry's ``module:Class`` entries: the first
    component under ``<package>.methods``."""
    prefix = f"{package}.methods."
    return {f"{prefix}{entry.split(':')[0][len(prefix):].split('.')[0]}"
            for entry in registry.values()}


def method_to_method_imports(graph: dict[str, set[str]], units: set[str]) -> list[str]:
    """``a imports b`` for each import from one method unit into another."""
    def unit(module: str) -> str | None:
        return next((u for u in units if module == u or module.startswith(u + ".")), None)

    return sorted(f"{module} imports {target}" for module, targets in graph.items()
                  if unit(module) for target in targets
                  if unit(target) not in (None, unit(module)))


#: the floors of ``prunectl``, lowest first (each a tuple of top-level modules or packages): a
#: module imports from its own floor and the floors below, never from one above, not even
#: inside a function.  The package root ``prunectl`` (``__version__``, and the Python API loaded
#: lazily on first use) stands outside the floors.  A new top-level module must be given one.
FLOORS = (
    # foundation: errors, files, progress, digests, plain data, the process group
    ("errors", "io", "ui", "digest", "plan", "schema", "distributed", "hub", "context"),
    ("modeling", "data"),  # the model's structure and surgery; calibration and eval text
    ("formats", "evaluation", "pipelines", "recovery"),  # files a model is written as; passes over a model
    ("methods",),  # pruning methods on the pipelines
    ("recipe", "memory_estimate", "project"),  # what a recipe says; what a project has done
    ("steps",),  # a step: recipe + project state + a method
    ("cli", "api", "__main__"),  # the commands and the Python API
)
#: upward imports kept on purpose, ``(importer, imported)``, each with its reason (none today)
UPWARD_EXCEPTIONS: set[tuple[str, str]] = set()


def floor_of(module: str, package: str, floors: tuple[tuple[str, ...], ...]) -> int | None:
    """The floor index of ``module`` (None for the package root); a module on no floor raises."""
    if module == package:
        return None
    top = module[len(package) + 1:].split(".")[0]
    for index, names in enumerate(floors):
        if top in names:
            return index
    raise AssertionError(f"{module} is on no floor: add {top!r} to FLOORS")


def upward_imports(graph: dict[str, set[str]], package: str,
                   floors: tuple[tuple[str, ...], ...]) -> list[str]:
    """``a imports b`` for each import from a floor into a higher one."""
    found = []
    for module, targets in graph.items():
        low = floor_of(module, package, floors)
        for target in targets:
            high = floor_of(target, package, floors)
            if low is not None and high is not None and high > low:
                found.append(f"{module} imports {target}")
    return sorted(found)


def mutual_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a <-> b`` for each pair of modules that import each other."""
    return sorted(f"{a} <-> {b}" for a, targets in graph.items() for b in targets
                  if a < b and a in graph.get(b, ()))


def test_no_module_level_import_cycle():
    cycle = find_cycle(import_graph(SRC, "prunectl"))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_modeling_never_imports_methods_or_evaluation():
    graph = import_graph(SRC, "prunectl", into_functions=True)
    assert forbidden_imports(graph, "prunectl.modeling",
                             ("prunectl.methods", "prunectl.evaluation")) == []


def test_pipelines_never_import_methods():
    graph = import_graph(SRC, "prunectl", into_functions=True)
    assert forbidden_imports(graph, "prunectl.pipelines", ("prunectl.methods",)) == []


#: the only imports of ``pipelines/`` from ``methods/`` that run: the method contract resolves a
#: kind to its registered pipeline (``Method.pipeline``, ``Inputs.pipeline``); every pass a
#: method runs comes from its inputs (``inputs.layers`` / ``.units`` / ``.gradients``), and
#: annotations of the pass types sit under ``if TYPE_CHECKING:``
PIPELINE_IMPORTS_FROM_METHODS = {("prunectl.methods.base", "prunectl.pipelines.registry"),
                                 ("prunectl.methods.inputs", "prunectl.pipelines.registry")}


def pass_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a imports b`` for each import from ``methods/`` of a pass module (anything in
    ``pipelines/`` beyond the allowed registry uses) or of the whole-model perplexity."""
    found = forbidden_imports(graph, "prunectl.methods",
                              ("prunectl.pipelines", "prunectl.evaluation.perplexity"))
    return [f for f in found if tuple(f.split(" imports ")) not in PIPELINE_IMPORTS_FROM_METHODS]


def test_methods_get_their_passes_from_their_inputs():
    graph = import_graph(SRC, "prunectl", into_functions=True)
    assert pass_imports(graph) == []
    assert all(b in graph[a] for a, b in PIPELINE_IMPORTS_FROM_METHODS), "a stale exception"
    graph["prunectl.methods.width.collect"].add("prunectl.pipelines.layers")  # as before
    graph["prunectl.methods.puzzle.verify"].add("prunectl.evaluation.perplexity")
    graph["prunectl.methods.puzzle.method"].add("prunectl.pipelines.registry")
    assert pass_imports(graph) == [
        "prunectl.methods.puzzle.method imports prunectl.pipelines.registry",
        "prunectl.methods.puzzle.verify imports prunectl.evaluation.perplexity",
        "prunectl.methods.width.collect imports prunectl.pipelines.layers"]


def test_no_method_imports_another_method():
    from prunectl.methods.registry import METHODS

    units = method_units("prunectl", METHODS)
    assert {"prunectl.methods.flap", "prunectl.methods.magnitude",
            "prunectl.methods.puzzle"} <= units
    assert "prunectl.methods.width" not in units
    graph = import_graph(SRC, "prunectl", into_functions=True)
    assert method_to_method_imports(graph, units) == []
    graph["prunectl.methods.slimgpt.method"].add("prunectl.methods.flap.method")  # as before
    assert method_to_method_imports(graph, units) == [
        "prunectl.methods.slimgpt.method imports prunectl.methods.flap.method"]


def conftest_imports(root: Path) -> list[str]:
    """The files under ``root`` that import ``conftest`` anywhere (shared test code lives in
    ``tests/helpers.py``; ``conftest.py`` holds fixtures only)."""
    return sorted(f"{file.relative_to(root).as_posix()}:{node.lineno}"
                  for file in root.rglob("*.py")
                  for node in ast.walk(ast.parse(file.read_text()))
                  if (isinstance(node, ast.ImportFrom) and node.module == "conftest")
                  or (isinstance(node, ast.Import)
                      and any(alias.name == "conftest" for alias in node.names)))


def test_no_test_module_imports_conftest(tmp_path):
    tests = Path(__file__).parent
    assert conftest_imports(tests) == []
    assert conftest_imports(tests.parent / "bench") == []
    assert conftest_imports(tests.parent / "scripts") == []
    (tmp_path / "test_x.py").write_text("def test():\n    from conftest import TEXT\n")
    (tmp_path / "test_y.py").write_text("import helpers\n")
    assert conftest_imports(tmp_path) == ["test_x.py:2"]


def test_no_two_modules_import_each_other():
    assert mutual_imports(import_graph(SRC, "prunectl", into_functions=True)) == []


def test_no_import_runs_up_a_floor():
    graph = import_graph(SRC, "prunectl", into_functions=True)
    found = upward_imports(graph, "prunectl", FLOORS)
    assert [f for f in found if tuple(f.split(" imports ")) not in UPWARD_EXCEPTIONS] == []
    assert all(f"{a} imports {b}" in found for a, b in UPWARD_EXCEPTIONS), "a stale exception"
    graph["prunectl.modeling.surgery"].add("prunectl.methods.registry")  # reintroduced
    assert "prunectl.modeling.surgery imports prunectl.methods.registry" in \
        upward_imports(graph, "prunectl", FLOORS)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_checks_find_what_they_look_for(tmp_path):
    """On a made-up package: a cycle through a relative import and a name imported from a
    package is found; the same modules importing each other only inside functions or under
    TYPE_CHECKING are not a cycle; a function-level import is a forbidden one."""
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.sub import thing\n",
        "pkg/sub/__init__.py": "from .b import thing\n",
        "pkg/sub/b.py": "try:\n    from .. import a\nexcept ImportError:\n    a = None\nthing = 1\n",
        "pkg/quiet/__init__.py": "",
        "pkg/quiet/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                          "    from pkg.quiet import d\n",
        "pkg/quiet/d.py": "def f():\n    import pkg.quiet.c\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.sub"} and graph["pkg.sub"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.a"}
    assert graph["pkg.quiet.c"] == set() and graph["pkg.quiet.d"] == set()
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"pkg.a", "pkg.sub", "pkg.sub.b"}
    assert cycle[0] == cycle[-1]
    del graph["pkg.sub.b"]
    assert find_cycle(graph) is None
    deep = import_graph(tmp_path, "pkg", into_functions=True)
    assert deep["pkg.quiet.d"] == {"pkg.quiet.c"} and deep["pkg.quiet.c"] == set()
    assert forbidden_imports(deep, "pkg.quiet", ("pkg.quiet.c",)) == ["pkg.quiet.d imports pkg.quiet.c"]


def test_a_method_importing_another_is_found(tmp_path):
    """A made-up tree like ours: imports of the shared width package and within one method pass;
    a method reaching into another, even from inside a function, is reported."""
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/methods/__init__.py": "",
        "pkg/methods/width/__init__.py": "",
        "pkg/methods/width/units.py": "",
        "pkg/methods/flap/__init__.py": "from .method import Flap\n",
        "pkg/methods/flap/method.py": "from pkg.methods.width import units\nclass Flap: ...\n",
        "pkg/methods/slim.py": "def score():\n    from pkg.methods.flap.method import Flap\n",
    })
    units = method_units("pkg", {"flap": "pkg.methods.flap:Flap", "slim": "pkg.methods.slim:S"})
    assert units == {"pkg.methods.flap", "pkg.methods.slim"}
    assert method_to_method_imports(import_graph(tmp_path, "pkg"), units) == []
    graph = import_graph(tmp_path, "pkg", into_functions=True)
    assert method_to_method_imports(graph, units) == [
        "pkg.methods.slim imports pkg.methods.flap.method"]


def test_upward_and_mutual_imports_are_found(tmp_path):
    """A made-up two-floor package: an import down a floor passes; one up a floor, even inside a
    function, is reported, and so are two modules importing each other on one floor."""
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "def f():\n    from pkg import high\n",
        "pkg/base.py": "from pkg import low\n",
        "pkg/high/__init__.py": "",
        "pkg/high/a.py": "from pkg import low\nfrom pkg.high import b\n",
        "pkg/high/b.py": "def g():\n    from pkg.high import a\n",
    })
    floors = (("low", "base"), ("high",))
    graph = import_graph(tmp_path, "pkg", into_functions=True)
    assert upward_imports(graph, "pkg", floors) == ["pkg.low imports pkg.high"]
    assert mutual_imports(graph) == ["pkg.high.a <-> pkg.high.b"]
    assert upward_imports(import_graph(tmp_path, "pkg"), "pkg", floors) == []
    with pytest.raises(AssertionError, match="add 'stray' to FLOORS"):
        floor_of("pkg.stray", "pkg", floors)
