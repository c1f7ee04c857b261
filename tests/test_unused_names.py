"""No dead module-level name in ``src/``: every function, class and assignment at a module's top
level is read somewhere in the package (a name, an attribute, an import, or a ``module:Name``
string such as the method registry's lazy entries).  Decorated definitions count as used (the
decorator registers them), and so do dunder names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import prunectl

SRC = Path(prunectl.__file__).parent


def unused_names(root: Path) -> list[str]:
    """``path:line: name`` for each module-level name of the ``.py`` files under ``root`` that
    nothing under ``root`` reads."""
    defined: dict[tuple[str, str], int] = {}
    read: set[str] = set()
    for file in sorted(root.rglob("*.py")):
        tree = ast.parse(file.read_text())
        where = file.relative_to(root).as_posix()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not node.decorator_list:
                    defined[(where, node.name)] = node.lineno
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(target, ast.Name):
                        defined[(where, target.id)] = node.lineno
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                read.add(node.id)
            elif isinstance(node, ast.Attribute):
                read.add(node.attr)
            elif isinstance(node, ast.alias):
                read.add(node.name.rpartition(".")[2])
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                read.update(re.findall(r"[A-Za-z_]\w*", node.value))
    return [f"{where}:{line}: {name}" for (where, name), line in sorted(defined.items())
            if name not in read and not (name.startswith("__") and name.endswith("__"))]


def test_every_module_level_name_is_read():
    assert unused_names(SRC) == []


def test_an_unused_name_is_found(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text(
        "import functools\n\nKINDS = ('x', 'y')\nUSED = 1\n\n\ndef helper():\n    return USED\n\n\n"
        "@functools.cache\ndef registered():\n    return 2\n\n\nclass Lazy:\n    pass\n")
    (tmp_path / "pkg" / "b.py").write_text("from pkg.a import helper\nENTRY = 'pkg.a:Lazy'\n"
                                           "helper()\n")
    assert unused_names(tmp_path) == ["pkg/a.py:3: KINDS", "pkg/b.py:2: ENTRY"]
