"""The README stays true: its two commands, its YAML reference, its example; and the code stays lint-clean."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from sweep.config.resolve import load, resolve
from sweep.config.sections import schema
from sweep.schema import Field

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _keys() -> set[str]:
    keys = set()

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if key == "_variants":
                for name in value.names():
                    keys.update(f"{prefix}{k}" for k in value.params(name))
            elif isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                assert isinstance(value, Field)
                keys.add(f"{prefix}{key}")

    walk(schema(), "")
    return keys


def test_readme_starts_with_the_two_commands() -> None:
    block = README.split("```")[1].strip().splitlines()
    assert block == [
        "bash .ci/setup && .venv/bin/sweep launch search_spaces/demo.yaml",
        "bash .ci/setup --test && .venv/bin/python -m pytest -q",
    ]
    assert README.index("```") < README.index("\n## ")  # before anything else


def test_reference_documents_every_config_key() -> None:
    reference = README.split("### Reference", 1)[1]
    documented = set(re.findall(r"`([a-z_0-9]+(?:\.[a-z_0-9]+)*)`", reference))
    missing = sorted(_keys() - documented)
    assert not missing, f"README reference lacks {missing}"


def test_readme_example_is_the_demo_and_valid() -> None:
    example = README.split("```yaml", 1)[1].split("```", 1)[0]
    assert resolve(yaml.safe_load(example), "README") == resolve(
        yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text()), "demo")
    load(ROOT / "search_spaces" / "demo.yaml")


def test_ruff_clean() -> None:
    run = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_augmentation_and_mix_is_documented_with_its_keys() -> None:
    from sweep.data.augment import AUGMENTATIONS, MIXES

    section = README.split("### Augmentations", 1)[1].split("\n### ", 1)[0]
    rows = {line.split("|")[1].strip().strip("`"): line for line in section.splitlines() if line.startswith("| `")}
    for registry in (AUGMENTATIONS, MIXES):
        for name, entry in registry.items():
            assert name in rows, f"README's Augmentations section lacks {name}"
            for key in entry.params:
                assert f"`{key}`" in rows[name], f"README's row for {name} lacks its key {key}"
