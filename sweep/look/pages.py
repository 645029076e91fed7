"""The HTML pages sweep writes (the study report, `sweep explain`'s page): one Jinja2 setup for all of them."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined


def environment(templates: Path) -> Environment:
    """Templates from `templates` (a folder beside the module that renders them, so it moves with it). Values are
    escaped, an undefined name is an error instead of an empty string, and the page's whitespace is the
    template's, less the lines its block tags stand on (trim_blocks, lstrip_blocks)."""
    return Environment(
        loader=FileSystemLoader(templates),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
