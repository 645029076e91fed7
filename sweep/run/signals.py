"""How a launch stops: Ctrl-C, SIGTERM and SIGHUP all raise in its main thread, are held while workers are
submitted, and are ignored while stopped workers hand their trials back."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

# What stops a launch: Ctrl-C, SIGTERM (what `kill`, `timeout` and SLURM send), SIGHUP (its terminal closed).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP raised where Ctrl-C raises KeyboardInterrupt, so that all three stop the launch the
    same way: workers stopped, their trials handed back, exit 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_of(stop: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: `Stopped`'s own, else SIGINT (Ctrl-C). After SIGHUP the terminal is gone
    (writing to it fails), so from then on this process's output goes nowhere."""
    signum = getattr(stop, "signum", signal.SIGINT)
    if signum == signal.SIGHUP:
        _silence()
    return signum


def _silence() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1), os.dup2(devnull, 2)
    os.close(devnull)


def _raise_stopped(signum: int, frame: Any) -> None:
    raise Stopped(signum)


def interruptible(run: Callable[..., int]) -> Callable[..., int]:
    """`run` with SIGTERM and SIGHUP raising `Stopped` (in the main thread), and an interrupt that comes before
    any worker was started (nothing to stop, nothing to hand back) answered with a message and exit 128 + the
    signal."""

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        if threading.current_thread() is not threading.main_thread():
            return run(*args, **kwargs)
        previous = {signum: signal.signal(signum, _raise_stopped) for signum in STOP_SIGNALS[1:]}
        try:
            return run(*args, **kwargs)
        except KeyboardInterrupt as stop:
            signum = signal_of(stop)
            print(f"\ninterrupted ({signal.Signals(signum).name}) before any worker started", flush=True)
            return 128 + signum
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    return wrapper


@contextlib.contextmanager
def signals_deferred():
    """SIGINT, SIGTERM and SIGHUP held until the block ends: submitting the workers is not cut off half-way, so the
    launcher knows every job it must stop; one that came meanwhile is raised right after the block. (Recorded
    by a handler, not blocked: a blocked signal stays blocked in the processes started meanwhile.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: held.append(signum))
                for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if held:
        raise Stopped(held[0]) if held[0] != signal.SIGINT else KeyboardInterrupt


@contextlib.contextmanager
def signals_ignored(signums: tuple[int, ...] = STOP_SIGNALS):
    """SIGINT, SIGTERM and SIGHUP (or `signums`) ignored until the block ends, then as before: a second Ctrl-C
    must not cut a hand-back short, and the process that goes on (an in-process worker's, a test's) must not
    keep ignoring them, nor pass that on to every process it starts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class WorkerStop:
    """A worker told to stop by SLURM (preemption or the time limit), remembered where the unwinding it started can
    be lost: a signal handler's SystemExit that lands inside a finalizer (a `__del__`, a weakref callback such as
    SQLAlchemy's pool keeps) is printed as "Exception ignored" and swallowed, and the trial would train on to its
    end while its job is requeued under it. The trainer asks at every epoch's end (`stop_if_asked`), and the
    worker before it claims a trial, so the stop takes effect there at the latest."""

    asked = False

    @classmethod
    def ask(cls) -> None:
        cls.asked = True

    @classmethod
    def reset(cls) -> None:
        """At a worker's start and end: the flag is one worker's, and a process may run several (in-process
        executors) or train outside any (`sweep final` in-process, the tests)."""
        cls.asked = False


def stop_if_asked() -> None:
    """Unwind as the signal's handler did (SystemExit), if the worker was told to stop and is still going."""
    if WorkerStop.asked:
        raise SystemExit(0)
