"""YAML loading that refuses a key given twice in one mapping.

PyYAML keeps the last of two equal keys without a word, so a recipe with a second ``target:``
silently drops the first.  Here that is an error naming both lines.
"""

from __future__ import annotations

from typing import Any

import yaml

from prunectl.errors import UserError


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<:` merges are allowed to repeat keys
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # unhashable: PyYAML's own error follows
                if first is not key_node.start_mark:  # also twice on one line: {a: 1, a: 2}
                    raise _Duplicate(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep)


class _Duplicate(Exception):
    def __init__(self, key: Any, first: Any, second: Any):
        super().__init__(key, first, second)
        self.key, self.first, self.second = key, first, second

    def where(self) -> str:
        """Both places: lines, or line and columns when they share one."""
        a, b = self.first, self.second
        if a.line != b.line:
            return f"lines {a.line + 1} and {b.line + 1}"
        return f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}"


def load_unique(text: str, source: str) -> Any:
    """``yaml.safe_load`` of ``text`` (from ``source``, for the message), refusing duplicate
    keys with a ``UserError`` naming the key and both lines."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except _Duplicate as twice:
        raise UserError(
            f"{source}: key '{twice.key}' is given twice ({twice.where()}); keep one of them"
        ) from None
