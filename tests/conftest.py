"""Shared fixtures: a tiny study config (seconds of synthetic audio, a 4-channel CNN) and an isolated home."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

TINY = {
    "study": {"name": "tiny", "n_trials": 4},
    "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
    "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    "data": {"dataset": "synthetic", "n_classes": 4, "clips_per_class": 10, "sample_rate": 8000,
             "clip_seconds": 0.5},
    "features": {"n_mels": 32, "n_fft": 256, "hop_length": 128},
    "model": {"name": "audio_cnn", "width": 4, "depth": 1},
    "train": {"epochs": 3, "batch_size": 8, "lr": 3.0e-3, "scheduler": "none"},
    "executor": {"name": "local", "workers": 2, "cpus_per_worker": 1},
    "search_space": {
        "train.lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True},
        "augment.strength": {"type": "float", "low": 0.0, "high": 1.0},
    },
}


# A shell starting this run in the background (`cmd &` without job control) ignores SIGINT, and ignored
# signals stay ignored in every child: the tests that Ctrl-C a launch or a server would then see it go on.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]


# The machine has one test cluster, which cluster_of reshapes, and two pytest runs may share it (a clone's and a
# developer's, or pytest-xdist's processes): one test at a time holds it, across processes (an flock every pytest
# process on this machine takes) and reentrantly within one (a module's fixture and its tests).
SLURM_LOCK = Path(os.environ.get("SWEEP_TEST_SLURM_LOCK", "/tmp/sweep-test-slurm.lock"))
_hold = {"depth": 0, "file": None}


@contextlib.contextmanager
def slurm_held() -> Iterator[None]:
    """Hold the test cluster for the block; the outermost holder in this process takes the machine-wide lock."""
    if _hold["depth"] == 0:
        _hold["file"] = SLURM_LOCK.open("a")  # not inheritable: no child, no daemon start.sh starts, holds it
        fcntl.flock(_hold["file"], fcntl.LOCK_EX)
    _hold["depth"] += 1
    try:
        yield
    finally:
        _hold["depth"] -= 1
        if _hold["depth"] == 0:
            _hold["file"].close()


@pytest.fixture(scope="session")
def _slurm_partition() -> str:
    """Start (or reuse) the single-node SLURM of cluster/start.sh once per process; return its default partition."""
    if shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed: run cluster/install.sh (.ci/setup --test does) to run the cluster tests")
    with slurm_held():
        run = subprocess.run(["bash", str(ROOT / "cluster" / "start.sh")], capture_output=True, text=True,
                             timeout=240)
    if run.returncode != 0:
        pytest.fail(f"cluster/start.sh failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
    return os.environ.get("SWEEP_SLURM_PARTITION", "debug")


@pytest.fixture
def slurm_cluster(_slurm_partition: str) -> Iterator[str]:
    """The test cluster's default partition, the cluster held for this test alone."""
    with slurm_held():
        yield _slurm_partition


@contextlib.contextmanager
def cluster_of(nodes: int) -> Iterator[None]:
    """cluster/start.sh --nodes N (node1..nodeN, each its own slurmd) for the block; the single-node cluster after."""
    start = ["bash", str(ROOT / "cluster" / "start.sh")]
    with slurm_held():
        run = subprocess.run([*start, "--nodes", str(nodes)], capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stdout + run.stderr
        try:
            yield
        finally:
            back = subprocess.run(start, capture_output=True, text=True, timeout=240)
            assert back.returncode == 0, back.stdout + back.stderr


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The decoded-audio cache of every test in one temporary folder, never the repository's studies/."""
    os.environ["SWEEP_CACHE_DIR"] = str(tmp_path_factory.mktemp("audio-cache"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory; studies/ lands inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SWEEP_STORAGE", raising=False)
    monkeypatch.delenv("SWEEP_STUDIES_DIR", raising=False)
    return tmp_path


@pytest.fixture
def tiny_file(home: Path) -> Path:
    path = home / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return path


@pytest.fixture
def tiny_config() -> dict:
    from sweep.config.resolve import resolve

    return resolve(TINY, "tiny")


def sweep_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `sweep` command line in a child process."""
    return subprocess.run([sys.executable, "-m", "sweep", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def undecodable(path: Path, sample_rate: int = 8000) -> None:
    """Write a file whose header is sound (soundfile.info reads it: FLAC, whatever the name) and whose audio does
    not decode: a fault no header check can see, so it surfaces only when a trial reads the file."""
    import io

    import numpy as np
    import soundfile

    buffer = io.BytesIO()
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, sample_rate // 2).astype(np.float32)  # incompressible
    soundfile.write(buffer, noise, sample_rate, format="FLAC")
    data = bytearray(buffer.getvalue())
    for i in range(200, len(data)):  # past the stream info and the first frame's header
        data[i] = (data[i] * 7 + 13) & 255
    path.write_bytes(bytes(data))
