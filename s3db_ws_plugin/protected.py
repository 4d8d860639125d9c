"""The one filter that removes protected fields from every record that leaves the server.

A resource's ``protected`` list holds field names (``"password"``) and dotted paths
(``"profile.ssn"``). ``ProtectedFields.strip`` returns a copy of a record without them,
descending into nested objects and into the objects inside lists; the stored record is never
touched. ``get``, ``list``, ``inserted``, ``updated``, ``deleted`` and ``event`` frames all go
through it. ``touches`` tells whether a client filter key would read a protected value (a filter
on ``password`` is an oracle for its value, so it is refused).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

# A tree of path segments: a leaf (True) removes that key and everything under it.
_Tree = dict[str, "_Tree | Literal[True]"]


class ProtectedFields:
    """Compiled protected paths of one resource."""

    __slots__ = ("paths", "_tree")

    def __init__(self, paths: Iterable[str] = ()) -> None:
        self.paths: tuple[str, ...] = tuple(paths)
        tree: _Tree = {}
        for path in self.paths:
            if not isinstance(path, str) or not path or "" in path.split("."):
                raise ValueError(f"invalid protected field {path!r}")
            node = tree
            *parents, last = path.split(".")
            for part in parents:
                child = node.setdefault(part, {})
                if child is True:  # an ancestor is already protected as a whole
                    break
                node = child
            else:
                node[last] = True
        self._tree = tree

    def __bool__(self) -> bool:
        return bool(self._tree)

    def strip(self, record: Any) -> Any:
        """A copy of ``record`` without protected fields (the record itself when none are)."""
        if not self._tree:
            return record
        return _strip(record, self._tree)

    def touches(self, key: str) -> bool:
        """Whether a filter key (a field path, maybe ending in ``[]``) reads a protected value."""
        if not self._tree:
            return False
        path = key[:-2] if key.endswith("[]") else key
        node: _Tree | bool = self._tree
        for part in path.split("."):
            if not isinstance(node, dict):
                return True  # the path goes below a protected field
            if part not in node:
                if part.isdigit():  # a list index: protected paths apply to every element
                    continue
                return False
            node = node[part]
        # The path ends on a protected field or on an object that contains one.
        return True


def _strip(record: Any, tree: _Tree) -> Any:
    """The copy ``strip`` makes, built with an explicit stack: a record nested as deep as a
    client cares to send (lists in lists under a protected object's parent) cannot exhaust
    Python's recursion limit."""
    if not isinstance(record, dict | list):
        return record
    root: Any = {} if isinstance(record, dict) else []
    stack: list[tuple[Any, _Tree, Any]] = [(record, tree, root)]
    while stack:
        source, node, target = stack.pop()
        if isinstance(source, dict):
            for key, item in source.items():
                sub = node.get(key)
                if sub is True:
                    continue
                if sub is None or not isinstance(item, dict | list):
                    target[key] = item
                else:
                    child: Any = {} if isinstance(item, dict) else []
                    target[key] = child
                    stack.append((item, sub, child))
        else:  # a list: protected paths apply to each of its elements
            for item in source:
                if isinstance(item, dict | list):
                    child = {} if isinstance(item, dict) else []
                    target.append(child)
                    stack.append((item, node, child))
                else:
                    target.append(item)
    return root
