"""Loading YAML a user handed over (batch manifests) with bounded work.

``yaml.safe_load`` builds no objects it should not, but it still lets a few hundred bytes
describe billions of values: an anchor used nine times by an anchor used nine times... (an
"alias bomb") loads as a few shared lists, and whoever walks or prints them then expands it all
(minutes and gigabytes). Deep nesting (``[[[[...]]]]``) exhausts Python's recursion instead.
:func:`load_bounded` composes the document's node graph first, refuses nesting deeper than
``max_depth``, recursive aliases, and aliases that would add more than ``max_expansion`` nodes
once expanded, and only then builds the Python values.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_DEPTH = 64  # a manifest nests three or four levels deep
MAX_EXPANSION = 1_000_000  # nodes that aliases may add: defaults shared by many scenes fit


class YAMLBoundError(yaml.YAMLError):
    """A YAML document beyond the bounds; the message says which, on one line."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def expanded_size(root: yaml.Node, max_expansion: int) -> int:
    """The nodes of ``root`` once every alias is expanded, counted without expanding (each
    node's expanded size is computed once). Raises :class:`YAMLBoundError` on a recursive alias
    or when aliases add more than ``max_expansion`` nodes to those written out."""
    limit = sum(1 for _ in _walk_distinct(root)) + max_expansion
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()  # the current node's ancestors: an alias to one is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            in_progress.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > limit:
                raise YAMLBoundError(f"its aliases (*name) add more than {max_expansion:,} "
                                     "values once expanded (an alias bomb?); write the values "
                                     "out, or share options through defaults:")
            continue
        if key in sizes:
            continue
        in_progress.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in in_progress:
                raise YAMLBoundError("an alias (*name) refers to a value that contains it, "
                                     "which never ends; remove the recursive alias")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


class _BoundedLoader(yaml.SafeLoader):
    max_depth = MAX_DEPTH

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise YAMLBoundError(f"values are nested more than {self.max_depth} levels deep; "
                                     "a manifest needs three or four")
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


def load_bounded(text: str, *, max_depth: int = MAX_DEPTH,
                 max_expansion: int = MAX_EXPANSION) -> Any:
    """``yaml.safe_load(text)`` within bounds; :class:`YAMLBoundError` (a ``yaml.YAMLError``)
    names the bound passed.

    Examples
    --------
    >>> load_bounded("a: &x [1, 2]\\nb: *x")
    {'a': [1, 2], 'b': [1, 2]}
    >>> load_bounded("a: &x [1, 1]\\nb: &y [*x, *x]\\nc: [*y, *y]", max_expansion=5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tileseg.yaml_bounds.YAMLBoundError: its aliases (*name) add more than 5 values once expanded ...
    """
    loader = _BoundedLoader(text)
    loader.max_depth = max_depth
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_size(node, max_expansion)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _walk_distinct(root: yaml.Node) -> Any:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(_children(node))
