"""What the SLURM benchmarks share: whether a cluster answers, a tiny study to launch on it, and a launcher whose
output lines are time-stamped as they come.

They use the cluster that is up (cluster/start.sh starts the test one); on a shared one run them under its lock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "cluster" / "local.yaml"  # the test cluster's: partition debug, 1 CPU per task
# A study whose trials take about a second: seconds of synthetic audio, a 4-channel CNN, one epoch.
TINY = {
    "study": {"name": "tiny", "n_trials": 1},
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "none"},
    "data": {"dataset": "synthetic", "n_classes": 4, "clips_per_class": 10, "sample_rate": 8000,
             "clip_seconds": 0.5},
    "features": {"n_mels": 32, "n_fft": 256, "hop_length": 128},
    "model": {"name": "audio_cnn", "width": 4, "depth": 1},
    "train": {"epochs": 1, "batch_size": 8, "lr": 3.0e-3, "scheduler": "none"},
    "executor": {"name": "slurm", "cluster": str(PROFILE)},
    "search_space": {"train.lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True}},
}


def unavailable() -> str | None:
    """Why no SLURM cluster can be used here (None: one answers)."""
    if shutil.which("sbatch") is None:
        return "SLURM is not installed (cluster/install.sh installs it)"
    try:
        sinfo = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s"
    states = sinfo.stdout.split()
    if sinfo.returncode != 0 or not any(s.rstrip("*") in ("idle", "mix", "alloc") for s in states):
        return f"no SLURM node is up (sinfo: {(sinfo.stdout + sinfo.stderr).strip()[:200]!r}); run cluster/start.sh"
    return None


def study_file(folder: Path, **sections: dict[str, Any]) -> Path:
    """TINY with `sections` merged into its own, written to `folder`/study.yaml."""
    config = {k: dict(v) for k, v in TINY.items()}
    for key, values in sections.items():
        config[key] = {**config.get(key, {}), **values}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Launcher:
    """`sweep launch ARGS` in a child process (cwd `folder`), each line of its output kept with its arrival time."""

    def __init__(self, folder: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.started = time.time()
        self.proc = subprocess.Popen([sys.executable, "-m", "sweep", "launch", *args], cwd=folder, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def when(self, text: str, timeout: float) -> float:
        """When a line containing `text` came (waiting up to `timeout` s for it)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for at, line in list(self.lines):
                if text in line:
                    return at
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.05)
        raise RuntimeError(f"`sweep launch` printed no line with {text!r}:\n{self.output()}")

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)
