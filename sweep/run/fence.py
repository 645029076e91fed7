"""The fence between a launcher that stops and the local workers it started: once the launcher has closed it,
no worker of that launch is running and none will claim a trial, so the trials left RUNNING can be handed
back without a worker claiming one behind the launcher's back.

Knowing the processes is not enough: submitit's local controller, interrupted while it starts its workers,
can leave one it never signals (it was forked after the Ctrl-C reached the process group, and the controller
died before recording it); such a worker claimed a trial after the launcher had handed every trial back.
The fence is a file each worker holds a shared `flock` on for its whole life (the kernel drops it when the
process ends, however it ends). The launcher takes the exclusive lock, which it gets only once every worker
holding the shared one is gone, and unlinks the file: a worker that starts later finds no file, or (if it
opened it just before) a file with no name left once it gets its lock, and stops before claiming anything.

Local workers only: they share this machine's kernel. SLURM jobs are waited for through SLURM.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from pathlib import Path


class Fence:
    """The launcher's side: `create` before the workers start, `try_close` until it returns True."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.closed = False

    @classmethod
    def create(cls, folder: Path, launch_id: str) -> Fence:
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder / f".launch-{launch_id}.fence")

    def try_close(self) -> bool:
        """Close the fence if no worker holds it any more (then no worker of this launch runs or will run)."""
        if self.closed:
            return True
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.path.unlink(missing_ok=True)
        os.close(self.fd)  # a worker blocked on its shared lock gets it now, and finds the file unlinked
        self.closed = True
        return True

    def kill_holders(self) -> list[int]:
        """SIGKILL every process holding the fence (Linux's /proc/locks names them); returns their pids. For a
        worker that did not stop when asked: it may hold no lock of the study, since the kernel ends it anyway."""
        pids = holders(self.fd)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return pids


def holders(fd: int) -> list[int]:
    """The pids holding a flock on the file open as `fd`, from /proc/locks (empty where there is none)."""
    st = os.fstat(fd)
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            # "1: FLOCK  ADVISORY  READ  1234 00:2e:5678 0 EOF" (a waiting lock has "->" after the number)
            fields = [f for f in fields if f != "->"]
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where and fields[4].isdigit():
                if int(fields[4]) != os.getpid():
                    pids.append(int(fields[4]))
    return pids


def enter(path: str) -> int | None:
    """The worker's side: hold the fence for the rest of this process; returns the open file (kept open), or
    None when the launch has already stopped (then the worker must not claim anything)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits while the launcher is closing it
    if os.fstat(fd).st_nlink == 0:
        os.close(fd)
        return None
    return fd
