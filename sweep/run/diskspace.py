"""A full disk stops a launch cleanly instead of hanging it.

Once the disk holding a study is full, nothing more can be written there: not a worker's last words in its
log, not the hand-back of its trial to a SQLite file on that disk. So a launch keeps a reserve: a file of
`RESERVE_BYTES` on each file system it writes to (the study's folder, a SQLite or journal file's folder),
freed by whoever notices the disk is full first: a worker whose write failed with ENOSPC or SQLITE_FULL (it
then hands its trial back, says why in its log and stops), or the launcher, which watches the free space and
the reserves (it then stops every worker, hands back what they left RUNNING and exits naming the path).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

RESERVE_BYTES = 4 << 20  # what stopping takes: a few SQLite transactions and log lines per worker, with room
MIN_FREE = 1 << 20  # less than this free is full: a checkpoint would not fit
RESERVE_NAME = ".sweep-reserve"


class DiskFull(Exception):
    """The disk holding `path` is full (`free` bytes free when it was noticed)."""

    def __init__(self, path: Path, free: int) -> None:
        self.path, self.free = path, free
        super().__init__(f"the disk holding {path} is full ({_size(free)} free)")


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


class Reserves:
    """The launcher's reserves, one per file system among `folders` (created where they fit)."""

    def __init__(self, folders: Iterable[Path]) -> None:
        self.watched: list[Path] = []
        self.paths: list[Path] = []
        devices: set[int] = set()
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            self.watched.append(folder)
            if os.stat(folder).st_dev in devices:
                continue
            devices.add(os.stat(folder).st_dev)
            path = folder / RESERVE_NAME
            try:
                _fill(path)
                self.paths.append(path)
            except OSError:  # no room for it: the disk is full already, which `check` says at once
                path.unlink(missing_ok=True)

    def check(self) -> None:
        """Raise DiskFull if a watched folder's disk has less than `MIN_FREE` free, or a worker freed a reserve."""
        for folder in self.watched:
            free = shutil.disk_usage(folder).free
            gone = [p for p in self.paths if p.parent == folder and not p.exists()]
            if free < MIN_FREE or gone:
                release(self.paths)
                raise DiskFull(folder, free if not gone else max(0, free - RESERVE_BYTES))

    def release(self) -> None:
        release(self.paths)


def _fill(path: Path) -> None:
    """A file of `RESERVE_BYTES` with its blocks allocated (a sparse file would free nothing)."""
    with open(path, "wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # e.g. ENOSPC
                raise
            for _ in range(RESERVE_BYTES >> 16):  # a file system without fallocate (some NFS): write zeros
                f.write(bytes(1 << 16))
            f.flush()
            os.fsync(f.fileno())


def release(paths: Iterable[str | Path]) -> None:
    """Free the reserves (a worker's call when its write failed for want of space; the launcher's at the end)."""
    for path in paths:
        with contextlib.suppress(OSError):
            Path(path).unlink()


def released(paths: Iterable[str | Path]) -> bool:
    """Whether a reserve of this launch is gone: freed because its disk filled up (a worker stopped by its
    launcher can tell from this why it was stopped; on any other stop the launcher frees them only after)."""
    return any(not Path(path).exists() for path in paths)
