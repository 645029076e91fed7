"""YAML in and out: one loader for study files, `--set` values, search spaces and cluster profiles, and the
writer of the configs trials save."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from sweep.schema import ConfigError

ALIAS_NODES = 10_000  # nodes one document may add through aliases; a block shared a few times adds hundreds


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float (YAML 1.2), not the string PyYAML's 1.1 rules give, and refuses
    what SafeLoader lets through: a key given twice (PyYAML keeps the last, so half a section vanishes
    silently), an alias inside the block it names (a recursive structure), and aliases that add more than
    ALIAS_NODES nodes. A "billion laughs" file is a few lines that alias into 10^9 nodes: PyYAML shares the
    aliased objects, and the first copy of the config (or validation) expands them until memory runs out.
    Aliases for sharing a block stay legal: the bound is counted on the composed nodes, before anything is
    built, so a bomb is refused after reading at most its own text."""

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source = source
        self._aliased = 0  # nodes added through aliases so far
        self._sizes: dict[int, int] = {}  # id(node) → nodes it expands to, aliases included
        self._open: set[str] = set()  # anchors whose node is still being composed
        self._path: list[str] = []  # the keys above the node being composed, for error messages

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._count_alias(event)
            return super().compose_node(parent, index)
        self._path.append(str(index.value) if isinstance(index, yaml.ScalarNode) else str(index))
        if event.anchor is not None:
            self._open.add(event.anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open.discard(event.anchor)
            self._path.pop()

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then keys of its own is how YAML overrides a shared block
            key = self.construct_object(key_node)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeLoader refuses it when it builds the mapping
                continue
            if earlier is not key_node:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: the key is given a second time (first at line "
                    f"{earlier.start_mark.line + 1}); YAML would keep only the last one: merge the two",
                    source=self.source,
                    key=".".join([*self._path[1:], str(key)]),
                )
        return node

    def _count_alias(self, event: yaml.AliasEvent) -> None:
        line = event.start_mark.line + 1
        if event.anchor in self._open:
            raise ConfigError(
                f"line {line}: alias *{event.anchor} is inside the block &{event.anchor} it names; "
                "a recursive structure is not a config",
                source=self.source,
            )
        target = self.anchors.get(event.anchor)
        if target is None:
            return  # PyYAML's own error: found undefined alias
        self._aliased += self._size(target)
        if self._aliased > ALIAS_NODES:
            raise ConfigError(
                f"line {line}: alias *{event.anchor} takes the nodes added through aliases past {ALIAS_NODES:,} "
                "(a YAML bomb?); aliases may share a block a few times, not build a large document",
                source=self.source,
            )

    def _size(self, node: yaml.Node) -> int:
        """Nodes `node` expands to; memoised, so a chain of aliases costs its length, not its expansion."""
        known = self._sizes.get(id(node))
        if known is None:
            if isinstance(node, yaml.MappingNode):
                known = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                known = 1 + sum(self._size(item) for item in node.value)
            else:
                known = 1
            self._sizes[id(node)] = known
        return known


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """SafeDumper (libyaml's when built) that quotes a string such as `1e-3` which `_Loader` would read as a float."""

_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    """YAML text → plain data, or ConfigError naming `source` and the line (files, --set values, profiles)."""
    loader = _Loader(text, source)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML{where}: {problem}", source=source) from None
    except RecursionError:  # the parser recurses per level: thousands of `[` are a crash, not a config
        line = loader.get_mark().line + 1
        raise ConfigError(f"line {line}: nested too deeply to be a config", source=source) from None
    finally:
        loader.dispose()


def read_yaml(path: Path) -> Any:
    """A YAML file's data; ConfigError naming the file for text that is not UTF-8 or not valid YAML."""
    return parse_yaml(read_utf8(path), str(path))


def read_utf8(path: Path) -> str:
    """A text file the user wrote (study file, profile, metadata CSV) as UTF-8, a leading BOM dropped.

    Decoded here rather than by `open()`, whose default follows the locale and whose errors are a
    traceback with an offset into a buffer: a file in another encoding is an error naming the file and
    the byte offset and line of its first bad byte.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        utf16 = " (it starts with a UTF-16 byte-order mark)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError(
            f"not UTF-8 text{utf16}: byte 0x{data[exc.start]:02x} at byte offset {exc.start} (line {line}) "
            "is not valid UTF-8; save the file as UTF-8",
            source=str(path),
        ) from None


def dump_yaml(config: Mapping[str, Any]) -> str:
    """Block YAML with flow lists of scalars, as PyYAML writes it; reads back equal with `yaml.safe_load` and
    `parse_yaml`. (A hand-written emitter saved ~0.55 ms a trial, under 0.1 % of the shortest trial: not worth
    its 65 lines.)"""
    return yaml.dump(dict(config), Dumper=_Dumper, sort_keys=False, default_flow_style=None, allow_unicode=True)
