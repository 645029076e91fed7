"""Optuna's own storage tests, run against sweep's storages: the contract of `optuna.storages.BaseStorage` that
sweep's subclasses (retries, Core reads, one-transaction pops, batched journal appends) must keep.

The tests come from the sdist of the installed Optuna, which must be in the range pyproject.toml allows (sweep
subclasses Optuna's private storage internals, so a new Optuna is adopted by moving the range and passing this
test and tests/test_optuna_private.py). `.ci/setup --test` fetches the sdist into .ci/cache/;
`optuna_contract_plugin` swaps sweep's modes into Optuna's parametrization.
Optuna's tests run unchanged, in a child pytest, on SQLite, PostgreSQL and the journal, each as the launcher
opens it and (SQL) as a worker's cache wraps it. Optuna's heartbeat tests are left out: they sleep for minutes, and
sweep keeps its own heartbeats (sweep/search/study.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import optuna
import pytest
from packaging.specifiers import SpecifierSet  # an Optuna dependency

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".ci" / "cache"
OPTUNA_TESTS = [
    "tests/storages_tests/test_storages.py",
    "tests/storages_tests/test_cached_storage.py",
    "tests/storages_tests/test_callbacks.py",
    "tests/study_tests/test_optimize.py",
    "tests/trial_tests/test_trial.py",
    "tests/study_tests/test_study.py",
]
# Run side by side; the tests without a storage mode among their parameters run once, with the first group.
MODE_GROUPS = [("sweep_sqlite", "sweep_cached_sqlite", "sweep_journal"),
               ("sweep_postgresql", "sweep_cached_postgresql")]
# Left out for time: the copy tests run every pair of modes (25 pairs; study copying is no sweep feature).
DESELECT = "not test_copy_study"


def _pinned() -> str:
    found = re.search(r'"optuna([<>=!~][^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert found, "pyproject.toml pins no optuna version range"
    return found.group(1)


def test_sweeps_storages_pass_optunas_own_storage_tests(tmp_path: Path) -> None:
    pinned, version = _pinned(), optuna.__version__
    assert version in SpecifierSet(pinned), f"Optuna {version} is installed, pyproject.toml pins {pinned}"
    sdist = CACHE / f"optuna-{version}.tar.gz"
    if not sdist.exists():
        pytest.fail(f"{sdist} is missing: `bash .ci/setup --test` fetches it (pip download --no-deps --no-binary "
                    f":all: optuna=={version} -d .ci/cache)")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"optuna-{version}/tests/")]
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python < 3.10.12 has no filters
        tar.extractall(tmp_path, members=members, **safe)  # tests only: Optuna itself is the installed one
    path = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]  # this sweep, and the plugin
    command = [sys.executable, "-m", "pytest", "-p", "optuna_contract_plugin", "-p", "no:cacheprovider", "-q",
               "-W", "ignore::optuna.exceptions.ExperimentalWarning", "-k", DESELECT, *OPTUNA_TESTS]
    # Two children at once, PostgreSQL's modes beside the file-backed ones: a PostgreSQL test spends much of
    # its time waiting for the server, which the other child's tests use.
    children = [
        subprocess.Popen(command, cwd=tmp_path / f"optuna-{version}", stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p),
                              "SWEEP_CONTRACT_MODES": ",".join(modes), "SWEEP_CONTRACT_OTHERS": str(i == 0)})
        for i, modes in enumerate(MODE_GROUPS)
    ]
    outs = [child.communicate(timeout=3600)[0] for child in children]
    for child, out in zip(children, outs):
        assert child.returncode == 0, out[-6000:]
    out = "\n".join(outs)
    counts = dict(re.findall(r"sweep contract: (sweep_\w+): (\d+) tests", out))
    assert set(counts) == {m for modes in MODE_GROUPS for m in modes}, out[-3000:]
    print([re.search(r"\d+ passed.*", o).group(0) for o in outs], counts)
