"""A one-line progress counter on a terminal, silent anywhere else.

Workers write to log files (submitit, SLURM, CI), where a redrawn line is only noise; at a terminal
(`--executor debug`, `sweep final` in the foreground) the cache build and each epoch show how far they are.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.label, self.total, self.done = label, total, 0
        self.on = total > 0 and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = self.shown = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.on and (now - self.shown > 0.2 or self.done >= self.total):  # redrawn at most 5 times a second
            self.shown = now
            rate = self.done / max(now - self.started, 1e-9)
            self.stream.write(f"\r{self.label}: {self.done}/{self.total} ({rate:.0f}/s)")
            self.stream.flush()

    def close(self) -> None:
        if self.on:
            self.stream.write("\n")
            self.stream.flush()
