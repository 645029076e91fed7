"""The `sweep` command: launch, status, best."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sweep import __version__
from sweep.config import ConfigError, check_study_name, load, parse_set


def _study_arg(args: argparse.Namespace) -> tuple[str, str]:
    """STUDY may be a name or the study's YAML file; returns (name, storage URL) resolved as launch does."""
    from sweep.storage import resolve_storage

    target = Path(args.study)
    if target.suffix in (".yaml", ".yml") and target.is_file():
        config = load(target)
        name = config["study"]["name"]
        return name, resolve_storage(name, args.storage, config)
    name = check_study_name(args.study)
    return name, resolve_storage(name, args.storage)


def cmd_launch(args: argparse.Namespace) -> int:
    from sweep.launch import launch
    from sweep.storage import resolve_storage

    overrides = [parse_set(item) for item in args.set]
    for flag, key in (
        ("trials", "study.n_trials"),
        ("workers", "executor.workers"),
        ("study", "study.name"),
        ("executor", "executor.name"),
        ("cluster", "executor.cluster"),
    ):
        if getattr(args, flag) is not None:
            overrides.append((key, getattr(args, flag)))
    config = load(args.file, overrides)
    name = config["study"]["name"]
    return launch(config, resolve_storage(name, args.storage, config), detach=args.detach)


def cmd_status(args: argparse.Namespace) -> int:
    from sweep.status import show
    from sweep.storage import open_storage
    from sweep.study import load_existing

    name, url = _study_arg(args)
    from sweep import jobs

    study = load_existing(name, open_storage(url), url)
    show(study, sys.stdout, jobs.states(study))
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from sweep.export import write_best
    from sweep.storage import open_storage, study_dir
    from sweep.study import load_existing

    name, url = _study_arg(args)
    study = load_existing(name, open_storage(url), url)
    path = Path(args.output) if args.output else study_dir(name) / "best.yaml"
    top = write_best(study, path)
    print(f"best trial {top.number}: {top.value:.4f}")
    for key, value in top.params.items():
        print(f"  {key}: {value}")
    print(f"wrote {path}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from sweep import jobs
    from sweep.storage import open_storage
    from sweep.study import load_existing

    name, url = _study_arg(args)
    cancelled = jobs.cancel(load_existing(name, open_storage(url), url))
    print(f"cancelled {len(cancelled)} job(s) of study {name}" + (f": {' '.join(cancelled)}" if cancelled else ""))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sweep", description=__doc__)
    p.add_argument("--version", action="version", version=f"sweep {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    launch = sub.add_parser("launch", help="create or resume a study and run its trial budget")
    launch.add_argument("file", help="the study's YAML file")
    launch.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted path (YAML-typed); repeatable",
    )
    launch.add_argument("--trials", type=int, help="the study's total trial budget (study.n_trials)")
    launch.add_argument("--workers", type=int, help="concurrent workers (executor.workers)")
    launch.add_argument("--study", help="study name (study.name; default: the file's stem)")
    launch.add_argument("--executor", choices=("debug", "local", "slurm"), help="where workers run (executor.name)")
    launch.add_argument(
        "--cluster", help="SLURM profile for --executor slurm (executor.cluster), e.g. cluster/a100.yaml"
    )
    launch.add_argument("--storage", help="storage URL (else $SWEEP_STORAGE, the file's storage:, or SQLite)")
    launch.add_argument("--detach", action="store_true", help="submit the workers and return without watching")
    launch.set_defaults(run=cmd_launch)

    for name, run, text in (
        ("status", cmd_status, "trials by state, the best trial, running trials"),
        ("best", cmd_best, "print the best trial and write studies/STUDY/best.yaml"),
        ("cancel", cmd_cancel, "cancel the study's running jobs (SLURM or local)"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("study", help="study name, or the study's YAML file")
        cmd.add_argument("--storage", help="storage URL (else $SWEEP_STORAGE, or SQLite under studies/)")
        if name == "best":
            cmd.add_argument("-o", "--output", help="where to write the config (default studies/STUDY/best.yaml)")
        cmd.set_defaults(run=run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # sweep prints its own progress
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
