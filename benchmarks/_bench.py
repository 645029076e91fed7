"""The one line every benchmark ends a measured point with, so `run.py` and the tests read them all alike."""

from __future__ import annotations


def bench_line(name: str, sweep: float, baseline: float, ratio: float, goal: str, digits: int = 1,
               ratio_digits: int = 2) -> str:
    """`BENCH <name> sweep=<x> baseline=<y> ratio=<r> goal=<g> pass|fail`; `goal` is `<=N` or `>=N`.

    The verdict is taken on the ratio as printed, so a reader checking the line by eye agrees with it.
    """
    op, bound = goal[:2], float(goal[2:])
    if op not in ("<=", ">="):
        raise ValueError(f"goal must start with <= or >=, got {goal!r}")
    shown = round(ratio, ratio_digits)
    ok = shown <= bound if op == "<=" else shown >= bound
    return (f"BENCH {name} sweep={sweep:.{digits}f} baseline={baseline:.{digits}f} "
            f"ratio={shown:.{ratio_digits}f} goal={goal} {'pass' if ok else 'fail'}")
