"""The fence between a stopping launcher and its local workers (sweep/run/fence.py), with real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sweep.run.fence import Fence, enter, holders

HOLD = """
import sys
from sweep.run.fence import enter
fd = enter(sys.argv[1])
print("entered" if fd is not None else "stopped", flush=True)
sys.stdin.read()  # hold the fence until told (stdin closed) or killed
"""


def _worker(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def test_the_fence_closes_only_once_no_worker_holds_it_and_then_keeps_workers_out(tmp_path: Path) -> None:
    fence = Fence.create(tmp_path / "logs", "abc")
    worker = _worker(fence.path)
    assert worker.stdout.readline().strip() == "entered"
    assert not fence.try_close()  # a worker still runs: the launcher may not hand its trials back yet
    assert holders(fence.fd) == [worker.pid]
    worker.stdin.close()  # the worker ends (however it ends, the kernel drops its lock)
    worker.wait(timeout=60)
    assert fence.try_close() and not fence.path.exists()
    assert enter(str(fence.path)) is None  # a worker starting after the launch stopped claims nothing


def test_a_worker_that_does_not_stop_is_killed_and_the_fence_then_closes(tmp_path: Path) -> None:
    fence = Fence.create(tmp_path, "def")
    worker = _worker(fence.path)
    assert worker.stdout.readline().strip() == "entered"
    assert fence.kill_holders() == [worker.pid]
    assert worker.wait(timeout=60) == -9
    assert fence.try_close()

