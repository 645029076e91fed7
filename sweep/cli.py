"""The `sweep` command: launch, status, best, cancel, report, final, predict, explain, dashboard, tensorboard,
storage-proxy.

Each command imports what it runs inside its own function: the config's registries import torch (~2 s), the
storages Optuna and SQLAlchemy, and `sweep --help` or `sweep status NAME` should not wait for what they never use.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from sweep import __version__
from sweep.config.paths import parse_set
from sweep.config.typed import typed
from sweep.run.executors import EXECUTORS
from sweep.schema import ConfigError, check_study_name

DASHBOARD_PORT, TENSORBOARD_PORT, PROXY_PORT = 8080, 6006, 13000  # the tools' own defaults


def _study_arg(args: argparse.Namespace) -> tuple[str, str]:
    """STUDY may be a name or the study's YAML file; returns (name, storage URL) resolved as launch does."""
    from sweep.storage import resolve_storage

    target = Path(args.study)
    if target.suffix in (".yaml", ".yml") and target.is_file():
        from sweep.config.resolve import load  # the registries, torch included: only for a file

        config = load(target)
        name = typed(config).study.name
        return name, resolve_storage(name, args.storage, config)
    name = check_study_name(args.study, key=None)  # STUDY as typed: no config key was involved
    return name, resolve_storage(name, args.storage)


def cmd_launch(args: argparse.Namespace) -> int:
    from sweep.config.resolve import load
    from sweep.run.launch import launch
    from sweep.search.warm_start import parse_sources
    from sweep.storage import resolve_storage

    overrides = [parse_set(item) for item in args.set]
    labels = {}  # a flag's key → the flag as typed, which its errors name
    for flag, key in (
        ("trials", "study.n_trials"),
        ("workers", "executor.workers"),
        ("study", "study.name"),
        ("executor", "executor.name"),
        ("cluster", "executor.cluster"),
    ):
        if getattr(args, flag) is not None:
            overrides.append((key, getattr(args, flag)))
            labels[key] = f"--{flag} {shlex.quote(str(getattr(args, flag)))}"
    config = load(args.file, overrides, labels)
    sources = parse_sources(args.warm_start, args.storage, config) if args.warm_start is not None else []
    url = resolve_storage(typed(config).study.name, args.storage, config)
    return launch(config, url, detach=args.detach, warm_start=sources)


def _existing(args: argparse.Namespace):
    """(name, url, storage, study) of a study that must already exist; opening never creates one."""
    from sweep.search.study import load_existing
    from sweep.storage import open_storage

    name, url = _study_arg(args)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        raise ConfigError(f"no study named {name!r}: {url[len('sqlite:///') :]} does not exist (or pass --storage)")
    storage = open_storage(url)
    return name, url, storage, load_existing(name, storage, url)


def cmd_status(args: argparse.Namespace) -> int:
    from sweep.look.status import show
    from sweep.run import jobs

    _, _, _, study = _existing(args)
    show(study, sys.stdout, jobs.states(study))
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from sweep.results.export import picked, write_best
    from sweep.search.objectives import primary
    from sweep.storage import study_dir

    name, _, _, study = _existing(args)
    path = Path(args.output) if args.output else study_dir(name) / "best.yaml"
    top = write_best(study, path, args.pick)
    print(f"best trial {top.number}: {primary(top):.4f}{picked(top, args.pick)}")
    for key, value in top.params.items():
        print(f"  {key}: {value}")
    print(f"wrote {path}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from sweep.run import jobs

    name, _, _, study = _existing(args)
    cancelled = jobs.cancel(study)
    print(f"cancelled {len(cancelled)} job(s) of study {name}" + (f": {' '.join(cancelled)}" if cancelled else ""))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sweep.look.report import write_report
    from sweep.storage import mask, study_dir

    name, url, _, study = _existing(args)
    path = Path(args.output) if args.output else study_dir(name) / "report.html"
    report = write_report(study, path, mask(url))
    missing = [key for key, drawn in report.plots.items() if not drawn]
    print(
        f"wrote {path} ({report.trials} trials, {report.size / 1e6:.1f} MB, {report.seconds:.1f} s)"
        + (f"; not drawn yet: {', '.join(missing)}" if missing else "")
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from sweep.results.predict import predict

    for path, top in zip(args.files, predict(Path(args.checkpoint), [Path(f) for f in args.files], args.top_k)):
        print(path)
        for name, p in top:
            print(f"  {p:7.2%}  {name}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from sweep.results.explain import explain

    page = explain(Path(args.target), Path(args.file), Path(args.output) if args.output else None, args.top_k)
    for note in page.notes:
        print(note)
    top = ", ".join(f"{name} {p:.1%}" for name, p in page.top)
    print(f"{args.file}: {top}")
    print(f"wrote {page.path} ({len(page.figures)} figures, {page.size / 1e6:.1f} MB)")
    return 0


def cmd_final(args: argparse.Namespace) -> int:
    """STUDY (a name, or its YAML file) → its best trial; a config without a search space (best.yaml) as is."""
    from sweep.config.resolve import load, resolve
    from sweep.results.export import best_config
    from sweep.results.final import final

    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    if args.cv and args.seeds != 1:
        raise ConfigError("--cv trains one model per fold with the config's seed; leave out --seeds")
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {args.epochs}")
    target = Path(args.study)
    given = load(target) if target.suffix in (".yaml", ".yml") and target.is_file() else None
    if given is not None and not given["search_space"]:  # a study's own file has one: it names the study
        config = given
        cfg = typed(config)
        name, epochs = cfg.study.name, cfg.train.epochs
        origin = {"source": str(target.resolve()), "trial": None, "params": None}
    else:
        name, _, _, study = _existing(args)
        top, config = best_config(study, args.pick)
        epochs = top.user_attrs.get("best_epoch", typed(config).train.epochs)
        how = f" (--pick {args.pick})" if args.pick else ""
        origin = {"source": f"best trial {top.number} of study {name}{how}", "trial": top.number, "params": top.params}
    if not (args.epochs or epochs):  # a file of `train.epochs: 0` (until patience stops it) names no length
        raise ConfigError("train.epochs is 0 (no limit: early stopping ends it), and a final run never stops early "
                          "on the test folds: give --epochs N (a search's best epoch, say)", source=str(target))
    # the test folds are what a final run is scored on: it trains a fixed length, patience off
    overrides = [("train.epochs", args.epochs or epochs), ("train.patience", None)]
    for flag, key in (("executor", "executor.name"), ("cluster", "executor.cluster")):
        if getattr(args, flag) is not None:
            overrides.append((key, getattr(args, flag)))
    config = resolve(config, origin["source"], overrides)
    return final(config, name, seeds=args.seeds, cv=args.cv, origin=origin)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from sweep.look.serve import dashboard

    name, _, storage, _ = _existing(args)  # an unknown study is an error, not an empty dashboard
    dashboard(storage, name, args.host, args.port)
    return 0


def cmd_tensorboard(args: argparse.Namespace) -> int:
    from sweep.look.serve import tensorboard

    name, _ = _study_arg(args)
    tensorboard(name, args.host, args.port)
    return 0


def cmd_storage_proxy(args: argparse.Namespace) -> int:
    """STUDY (a name, its YAML file) names the storage as every command resolves it; a URL names it directly."""
    from sweep.storage.proxy import serve

    url = args.study if "://" in args.study else _study_arg(args)[1]
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    serve(url, args.host, args.port, **({"threads": args.threads} if args.threads else {}))
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
    launch.add_argument("--executor", choices=EXECUTORS.names(), help="where workers run (executor.name)")
    launch.add_argument(
        "--cluster", help="SLURM profile for --executor slurm (executor.cluster), e.g. cluster/a100.yaml"
    )
    launch.add_argument("--storage", help="storage URL (else $SWEEP_STORAGE, the file's storage:, or SQLite)")
    launch.add_argument("--detach", action="store_true", help="submit the workers and return without watching")
    launch.add_argument(
        "--warm-start", metavar="STUDY[,STUDY…]",
        help="seed a new study with the complete trials of earlier ones: a name (in this study's storage, else "
        "studies/NAME/study.db), NAME@URL, or a study's YAML file; params follow the README's warm-start rule",
    )
    launch.set_defaults(run=cmd_launch)

    for name, run, text in (
        ("status", cmd_status, "trials by state, the best trial, running trials"),
        ("best", cmd_best, "print the best trial and write studies/STUDY/best.yaml"),
        ("cancel", cmd_cancel, "cancel the study's running jobs (SLURM or local)"),
        ("report", cmd_report, "write studies/STUDY/report.html, a self-contained page of plots and tables"),
        ("dashboard", cmd_dashboard, "serve optuna-dashboard on the study's storage until Ctrl-C"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("study", help="study name, or the study's YAML file")
        cmd.add_argument("--storage", help="storage URL (else $SWEEP_STORAGE, or SQLite under studies/)")
        if name == "best":
            cmd.add_argument("-o", "--output", help="where to write the config (default studies/STUDY/best.yaml)")
            _pick_arg(cmd)
        if name == "report":
            cmd.add_argument("-o", "--output", help="where to write the page (default studies/STUDY/report.html)")
        if name == "dashboard":
            _server_args(cmd, DASHBOARD_PORT)
        cmd.set_defaults(run=run)

    fin = sub.add_parser("final", help="retrain the best config on train + val and evaluate it once on the test folds")
    fin.add_argument("study", help="study name or its YAML file (its best trial), or a best.yaml to train as is")
    fin.add_argument("--seeds", type=int, default=1, help="runs with seeds train.seed + 0..K-1 (default 1)")
    fin.add_argument("--cv", action="store_true", help="one run per fold of the dataset: test = fold k, train = rest")
    fin.add_argument("--epochs", type=int, help="epochs to train (default: the best trial's best epoch)")
    fin.add_argument("--executor", choices=EXECUTORS.names(), help="where the runs go (executor.name)")
    fin.add_argument("--cluster", help="SLURM profile for --executor slurm (executor.cluster)")
    fin.add_argument("--storage", help="storage URL (else $SWEEP_STORAGE, or SQLite under studies/)")
    _pick_arg(fin)
    fin.set_defaults(run=cmd_final)

    guess = sub.add_parser("predict", help="a checkpoint's top classes for audio files")
    guess.add_argument("checkpoint", help="a run's checkpoint.pt (its config.yaml beside it), or its folder")
    guess.add_argument("files", nargs="+", help="audio files (wav, flac, ogg)")
    guess.add_argument("--top-k", type=int, default=5, help="classes shown per file (default 5)")
    guess.set_defaults(run=cmd_predict)

    look = sub.add_parser("explain", help="a page showing what a trained model sees in one audio file")
    look.add_argument("target", metavar="RUN", help="a run's folder or its checkpoint.pt (its config.yaml beside it)")
    look.add_argument("file", metavar="FILE", help="an audio file (wav, flac, ogg)")
    look.add_argument(
        "-o", "--output", help="where to write the page (default: explain-STEM.html in the run's folder, STEM the "
        "audio file's name without its suffix)"
    )
    look.add_argument("--top-k", type=int, default=5, help="classes shown (default 5)")
    look.set_defaults(run=cmd_explain)

    proxy = sub.add_parser(
        "storage-proxy",
        help="serve a study's database to many workers through a handful of connections (Optuna's gRPC proxy)",
        description="Run Optuna's gRPC storage proxy in front of the study's SQL storage until Ctrl-C or SIGTERM, "
        "and print the grpc://HOST:PORT URL to give the workers (--storage, SWEEP_STORAGE or the file's storage:). "
        "Every worker then talks to the proxy, and the proxy holds --threads database connections whatever the "
        "number of workers: for studies with more workers than the database server takes connections. A database "
        "restart is retried by the proxy, a proxy restart by the workers. PostgreSQL and MySQL/MariaDB, or SQLite "
        "on the proxy's own disk; not the journal (Optuna's journal ties a trial to the thread that claimed it). "
        "No authentication: anyone who reaches the port can read and change the database's studies.",
    )
    proxy.add_argument("study", help="study name or its YAML file (the storage it resolves to), or a storage URL")
    proxy.add_argument("--storage", help="storage URL (else $SWEEP_STORAGE, the file's storage:, or SQLite)")
    proxy.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                       "only; 0.0.0.0 or the node's cluster-network address for workers on other nodes)")
    proxy.add_argument("--port", type=int, default=PROXY_PORT,
                       help=f"port to listen on (default {PROXY_PORT}; 0: any free port)")
    proxy.add_argument("--threads", type=int, help="calls served at once = database connections held (default 8)")
    proxy.set_defaults(run=cmd_storage_proxy)

    board = sub.add_parser("tensorboard", help="serve TensorBoard on studies/STUDY/trials until Ctrl-C")
    board.add_argument("study", help="study name, or the study's YAML file")
    _server_args(board, TENSORBOARD_PORT)
    board.set_defaults(run=cmd_tensorboard, storage=None)
    return p


def _pick_arg(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--pick", metavar="RULE", help="which trial of the Pareto front (several objectives): "
                     "best:METRIC, knee, max:METRIC=LIMIT, min:METRIC=LIMIT (default best:<the first metric>)")


def _server_args(cmd: argparse.ArgumentParser, port: int) -> None:
    cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    cmd.add_argument("--port", type=int, default=port, help=f"port to listen on (default {port}; 0: any free port)")


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
