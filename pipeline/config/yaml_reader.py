"""Read a params file's YAML, refusing what PyYAML would accept silently.

``yaml.safe_load`` lets the last of two equal keys win (an ``lr`` typed twice became 30000), reads
``yes``/``no``/``1`` keys as booleans and numbers, and builds an alias bomb ("billion laughs") in
no time as shared references that every later walk (the schema check, the hash of a job's values)
expands to billions of values. :func:`read_yaml` composes the document first and checks its node
graph, where aliases are still shared nodes (linear time and memory), then constructs it. Every
refusal is a :class:`YAMLShapeError` of one line naming the line and the key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pipeline.config.schema_errors import dotted as _where

# A params file expands to a few thousand values; a grid of thousands of points stays far below.
MAX_VALUES = 200_000
MAX_DEPTH = 50
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"


class YAMLShapeError(ValueError):
    """A params file that parses as YAML but must not be used; one line naming the line and the key."""


class _Checker:
    """One pass over the node graph: every distinct node once, its expanded size memoised."""

    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}
        self.open: set[int] = set()

    def size(self, node: Node, path: tuple) -> int:
        key = id(node)
        if key in self.sizes:
            return self.sizes[key]
        line = node.start_mark.line + 1
        if key in self.open:
            raise YAMLShapeError(f"line {line}: {_where(path)}: an alias refers to a node that contains it "
                                 "(a recursive structure)")
        if len(path) > MAX_DEPTH:
            raise YAMLShapeError(f"line {line}: {_where(path[:MAX_DEPTH])}: nested deeper than {MAX_DEPTH} levels")
        self.open.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(self.size(child, (*path, i)) for i, child in enumerate(node.value))
        elif isinstance(node, MappingNode):
            total += self._mapping(node, path)
        self.open.discard(key)
        if total > MAX_VALUES:
            raise YAMLShapeError(f"line {line}: {_where(path)}: expands to {total:,} values through YAML aliases "
                                 f"(more than {MAX_VALUES:,}: an alias bomb?)")
        self.sizes[key] = total
        return total

    def _mapping(self, node: MappingNode, path: tuple) -> int:
        first: dict[str, int] = {}
        total = 0
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:   # `<<: *base`: the base's keys, which the ones given here override
                total += self.size(value_node, path)
                continue
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, ScalarNode) or key_node.tag != _STR:
                shown = key_node.value if isinstance(key_node, ScalarNode) else "a " + type(key_node).__name__
                kind = key_node.tag.rsplit(":", 1)[-1]
                raise YAMLShapeError(f"line {line}: {_where((*path, str(shown)))}: a key must be text, but YAML reads "
                                     f"this one as {kind} (quote it)")
            name = key_node.value
            if name in first:
                raise YAMLShapeError(f"line {line}: {_where((*path, name))}: duplicate key (first on line "
                                     f"{first[name]}); YAML would keep only the last one")
            first[name] = line
            total += 1 + self.size(value_node, (*path, name))
        return total


def read_yaml(text: str) -> Any:
    """The document in ``text`` (None if empty), checked; :class:`YAMLShapeError` or ``yaml.YAMLError`` otherwise."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YAMLShapeError(f"nested deeper than {MAX_DEPTH} levels") from None
        if node is None:
            return None
        _Checker().size(node, ())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path) -> Any:
    """:func:`read_yaml` of a file, which must be UTF-8 text."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YAMLShapeError(f"byte {e.start}: not UTF-8 text") from None
    return read_yaml(text)
