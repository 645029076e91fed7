"""Dotted paths into a config tree (`train.lr`): read, write, copy, and the `--set KEY=VALUE` that names one."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from sweep.config.yamlfile import parse_yaml
from sweep.schema import ConfigError


def get_path(config: Mapping[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def set_path(config: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def parse_set(item: str) -> tuple[str, Any]:
    """`train.lr=3e-4` → ("train.lr", 0.0003): the value is typed as YAML would type it."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE with a dotted key, got {item!r}")
    return key, parse_yaml(text, f"--set {item}")


def copy_tree(node: Any) -> Any:
    """A copy of a config tree (dicts, lists, scalars), ~10× faster than copy.deepcopy: a worker copies its
    config a few times per trial, and every millisecond there is one per trial per worker."""
    if isinstance(node, dict):
        return {key: copy_tree(value) for key, value in node.items()}
    if isinstance(node, list):
        return [copy_tree(value) for value in node]
    if isinstance(node, (str, int, float, bool, type(None))):
        return node
    return copy.deepcopy(node)

