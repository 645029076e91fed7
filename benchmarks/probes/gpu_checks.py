"""The GPU paths end to end: real `sweep launch` studies whose workers train on CUDA, one per family recipe.

    python benchmarks/probes/gpu_checks.py [--epochs N] [--trials N] [--cases demo,eat,…] [--device cuda|cpu]

Needs a CUDA device; CI has none, so this runs on a lent GPU machine only (benchmarks/RESULTS.md has what it
printed). Each case is a real study (SQLite, local submitit workers) on an ESC-50-layout set written here, with
`train.device: cuda` (AMP on, the default) and `model.pretrained: false` (nothing is downloaded):

- demo: search_spaces/demo.yaml as the README's first command runs it, 2 workers sharing the GPU;
- eat: search_spaces/eat.yaml, EAT's whole recipe (the waveform chain, the label mixes from epoch 1, BCE, EMA);
- vit / ast: search_spaces/vit.yaml and ast.yaml, a real ViT-Base / AST step on 224x224 / 1024x128 inputs;
- multi: demo with `study.metrics: [val_acc, latency_ms]`, latency measured on the GPU before the first epoch.

Prints one line per case, `GPU <case> trials=<complete>/<asked> wall_s=<s> best=<value> [latency_ms=<ms>]`,
and fails (exit 1) when a case's study has a trial that did not complete or was pruned before its first epoch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sweep.data.layouts import write_esc50  # noqa: E402
from sweep.search.objectives import STATIC  # noqa: E402

# case -> (recipe, its --set overrides beyond the shared ones); the shared ones keep each study a few trials
CASES: dict[str, tuple[str, list[str]]] = {
    "demo": ("demo.yaml", ["executor.workers=2"]),
    "eat": ("eat.yaml", ["augment.epoch_mix=1", "augment.mix_ratio=1.0", "train.batch_size=16"]),
    "vit": ("vit.yaml", ["data.dataset=esc50", "data.folds={train: [1, 2, 3], val: [4], test: [5]}",
                         "train.batch_size=16"]),
    "ast": ("ast.yaml", ["train.batch_size=16"]),
    "multi": ("demo.yaml", ["study.metrics=[val_acc, latency_ms]", "executor.workers=2"]),
}


def launch(case: str, home: Path, root: Path, trials: int, epochs: int, device: str) -> tuple[int, float, str]:
    recipe, extra = CASES[case]
    sets = [f"study.name={case}", f"train.device={device}", "executor.name=local", f"train.epochs={epochs}",
            "pruner.n_warmup_steps=100", *extra]
    if case != "demo" and case != "multi":
        sets += ["model.pretrained=false", f"data.root={root}"]
    command = [sys.executable, "-m", "sweep", "launch", str(ROOT / "search_spaces" / recipe), "--trials", str(trials)]
    for s in sets:
        command += ["--set", s]
    started = time.perf_counter()
    run = subprocess.run(command, cwd=home, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"})
    wall = time.perf_counter() - started
    print(run.stdout[-2500:], run.stderr[-2500:], sep="\n", flush=True)
    return run.returncode, wall, f"sqlite:///{home}/studies/{case}/study.db"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of the same launches where there is no GPU")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this script checks the GPU paths and has nothing to run here", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {name} torch {torch.__version__} optuna {optuna.__version__}")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = write_esc50(Path(tmp) / "ESC-50", n_classes=4, clips_per_class=10, sample_rate=22050,
                           clip_seconds=5.2011)
        for case in args.cases.split(","):
            home = Path(tmp) / case
            home.mkdir()
            rc, wall, url = launch(case, home, root, args.trials, args.epochs, args.device)
            try:
                study = optuna.load_study(study_name=case, storage=url)
                trials = study.trials
            except Exception as exc:  # the launch refused the config: nothing was stored
                print(f"GPU {case} FAIL rc={rc} wall_s={wall:.1f} ({type(exc).__name__}: {exc})", flush=True)
                failed += 1
                continue
            done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
            values = [t.values[0] for t in done]
            latency = [t.user_attrs.get(STATIC, {}).get("latency_ms") for t in done]
            extra = f" latency_ms={','.join(f'{x:.2f}' for x in latency if x is not None)}" if case == "multi" else ""
            ok = rc == 0 and len(done) == args.trials
            print(f"GPU {case} {'ok' if ok else 'FAIL'} rc={rc} trials={len(done)}/{args.trials} wall_s={wall:.1f} "
                  f"best={max(values) if values else float('nan'):.3f}{extra}", flush=True)
            failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
