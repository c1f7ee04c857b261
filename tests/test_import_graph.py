"""The package's import graph, read from the source with ``ast``: no import cycle among prunectl
modules at module level; ``modeling/`` (model structure and surgery) never reaching into
``methods/`` or ``evaluation/``, ``pipelines/`` never into ``methods/``, and no method importing
another method (what methods share lives in ``methods/width/`` and the other non-method modules
of ``methods/``), not even inside a function.

Imports under ``if TYPE_CHECKING:`` do not run and do not count.  An import of ``a.b.c`` is an
edge to ``a.b.c`` alone: Python initialises the parent packages first, so a package
``__init__`` that re-exports its submodules is not a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

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
