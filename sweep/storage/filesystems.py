"""Network file systems, where SQLite's locks are not reliable: which file system holds a path, and the
warning a SQLite storage there gets."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

NETWORK_FS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.beegfs",
        "fuse.sshfs",
        "9p",
        "afs",
        "panfs",
        "wekafs",
    }
)


class StorageWarning(UserWarning):
    """A storage that will work until it silently does not (SQLite on a network file system)."""


def filesystem_type(path: str | os.PathLike[str], mounts: str | None = None) -> str | None:
    """The type of the file system holding PATH (longest mount-point prefix in /proc/mounts), None if unknown.

    `mounts` is the text of a mounts table (`/proc/mounts` format), read from the system when None.
    """
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:  # not Linux
            return None
    target = Path(os.path.abspath(os.path.realpath(path))).parts
    best, best_len = None, -1
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(_unescape_mount(fields[1])).parts
        if len(point) > best_len and target[: len(point)] == point:
            best, best_len = fields[2], len(point)
    return best


def _unescape_mount(field: str) -> str:
    """/proc/mounts writes a space in a mount point as \\040, a tab as \\011, …"""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def is_network_filesystem(path: str | os.PathLike[str], mounts: str | None = None) -> bool:
    fstype = filesystem_type(path, mounts)
    return fstype is not None and (fstype in NETWORK_FS or fstype.startswith("nfs"))


def check_sqlite_location(path: str | os.PathLike[str], mounts: str | None = None) -> bool:
    """Warn (StorageWarning) when a SQLite file sits on a network file system; returns whether it does."""
    if not is_network_filesystem(path, mounts):
        return False
    warnings.warn(
        f"the SQLite storage {path} is on a network file system ({filesystem_type(path, mounts)}): SQLite's locks "
        "are not reliable there and concurrent workers can corrupt it. Use a PostgreSQL/MySQL URL, or "
        "journal:///PATH for a shared file system without a database server",
        StorageWarning,
        stacklevel=2,
    )
    return True
