"""The benchmarks run and say what they measured: BENCH lines well formed, the comparison like for like.

No timing is asserted here (the machine is shared); `python benchmarks/run.py` measures.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"-?\d+(?:\.\d+)?"
LINE = re.compile(
    rf"^BENCH (?P<name>[a-z0-9_]+) sweep=(?P<sweep>{NUMBER}) baseline=(?P<baseline>{NUMBER}) "
    rf"ratio=(?P<ratio>{NUMBER}) goal=(?P<op><=|>=)(?P<goal>{NUMBER}) (?P<verdict>pass|fail)$"
)


def load(name: str) -> ModuleType:
    """A benchmark script as a module, as `python benchmarks/NAME.py` sees it (benchmarks/ on sys.path)."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def bench_lines(script: str, *args: str) -> dict[str, re.Match]:
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("BENCH")]
    matches = {}
    for line in lines:
        m = LINE.match(line)
        assert m, f"malformed BENCH line: {line!r}"
        assert float(m["sweep"]) > 0 and float(m["baseline"]) > 0, line
        ratio, goal = float(m["ratio"]), float(m["goal"])
        assert m["verdict"] == ("pass" if (ratio <= goal if m["op"] == "<=" else ratio >= goal) else "fail"), line
        matches[m["name"]] = m
    assert run.stdout.rstrip().splitlines()[-1].startswith("BENCH"), "a benchmark ends with its BENCH line(s)"
    return matches


def test_trainer_overhead_smoke() -> None:
    lines = bench_lines("trainer_overhead.py", "--smoke")
    assert set(lines) == {"trainer_overhead"}
    m = lines["trainer_overhead"]
    assert float(m["ratio"]) == pytest.approx(float(m["sweep"]) / float(m["baseline"]), rel=0.02)


def assert_ratio_of_printed(m: dict[str, str]) -> None:
    """A BENCH line's ratio is sweep / baseline, as far as their printed (rounded) values can tell: a smoke run
    times milliseconds, so 0.008 / 0.001 may stand for a ratio of 5.3 or of 17."""
    half = {k: 0.5 * 10 ** -len(m[k].partition(".")[2]) for k in ("sweep", "baseline")}
    sweep, baseline = float(m["sweep"]), float(m["baseline"])
    low = (sweep - half["sweep"]) / (baseline + half["baseline"])
    high = (sweep + half["sweep"]) / max(baseline - half["baseline"], 1e-12)
    step = 10 ** -len(m["ratio"].partition(".")[2])  # the ratio is rounded too
    assert low - step <= float(m["ratio"]) <= high + step, m


def test_storage_overhead_smoke() -> None:
    """sweep's real worker loop and plain Optuna's, on SQLite and the journal, each finishing every trial."""
    lines = bench_lines("storage_overhead.py", "--smoke")
    assert set(lines) == {"storage_sqlite_1", "storage_journal_1"}
    for m in lines.values():
        assert m["op"] == "<=" and float(m["goal"]) == 1.0
        assert_ratio_of_printed(m)


def test_storage_overhead_draws_the_same_space_on_both_sides(tmp_path: Path) -> None:
    """--space demo: sweep's workers and the hand-written baseline draw the six params of demo.yaml; sweep's
    trials' folders go under the folder given as --dir."""
    import multiprocessing

    import optuna

    bench = load("storage_overhead")
    url = f"journal:///{tmp_path / 'b.log'}"
    for mode in ("sweep", "baseline"):
        bench.run(mode, url, 1, 3, multiprocessing.get_context("fork"), "demo", str(tmp_path))
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "b.log")))
    drawn, folders = {}, []
    for summary in optuna.get_all_study_summaries(storage):
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
        drawn[summary.study_name.split("-")[0]] = [sorted(t.params) for t in trials]
        folders += [Path(t.user_attrs["trial_dir"]) for t in trials if "trial_dir" in t.user_attrs]
    space = sorted(bench.SPACES["demo"])
    assert len(space) == 6 and drawn == {"sweep": [space] * 3, "baseline": [space] * 3}
    assert len(folders) == 3 and all(folder.is_relative_to(tmp_path) for folder in folders)


def test_storage_overhead_refuses_a_missing_dir(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "storage_overhead.py"
    run = subprocess.run([sys.executable, str(script), "--smoke", "--dir", str(tmp_path / "nowhere")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and f"--dir {tmp_path / 'nowhere'}: not an existing folder" in run.stderr


def test_trainer_overhead_refuses_amp_off_cuda() -> None:
    """sweep's trainer ignores train.amp off CUDA: a CPU run with --amp would time two full-precision loops."""
    script = ROOT / "benchmarks" / "trainer_overhead.py"
    run = subprocess.run([sys.executable, str(script), "--smoke", "--amp"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "--amp needs --device cuda" in run.stderr


def test_pruning_smoke() -> None:
    """Means over the sampler seeds, like for like; the studies' processes change nothing but the wall time."""
    lines = bench_lines("pruning.py", "--smoke")  # seeds 0 and 1, the studies one after another in one process
    assert set(lines) == {f"pruning_{p}_{what}" for p in ("median", "hyperband") for what in ("epochs", "best_acc")}
    for p in ("median", "hyperband"):
        epochs, acc = lines[f"pruning_{p}_epochs"], lines[f"pruning_{p}_best_acc"]
        assert float(epochs["ratio"]) > 0 and float(epochs["sweep"]) <= float(epochs["baseline"])
        assert float(epochs["baseline"]) == 3 * 3  # --smoke: 3 trials × 3 epochs, none pruned without a pruner
        assert float(epochs["ratio"]) == pytest.approx(float(epochs["sweep"]) / float(epochs["baseline"]), abs=0.001)
        assert acc["op"] == ">="  # a difference in accuracy points, sweep - baseline
        assert float(acc["ratio"]) == pytest.approx(float(acc["sweep"]) - float(acc["baseline"]), abs=0.011)
        assert 0 < float(acc["sweep"]) <= 100 and 0 < float(acc["baseline"]) <= 100
    pooled = bench_lines("pruning.py", "--smoke", "--jobs", "2")  # two spawned worker processes
    assert {name: m.group(0) for name, m in pooled.items()} == {name: m.group(0) for name, m in lines.items()}


def test_pruning_multi_objective_smoke() -> None:
    """pruning_multi.py: epochs and the Pareto front's hypervolume of sweep's dominance rule against no pruner."""
    lines = bench_lines("pruning_multi.py", "--smoke")
    assert set(lines) == {"pruning_mo_epochs", "pruning_mo_hypervolume"}
    epochs, hv = lines["pruning_mo_epochs"], lines["pruning_mo_hypervolume"]
    assert float(epochs["baseline"]) == 3 * 3 and float(epochs["sweep"]) <= float(epochs["baseline"])
    assert float(hv["ratio"]) == pytest.approx(float(hv["sweep"]) / float(hv["baseline"]), abs=0.001)
    multi = load("pruning_multi")
    pruned, unpruned = (multi.make_config(p, 12, 1) for p in multi.ORDER)
    assert pruned["study"]["metrics"] == ["val_acc", "params_mb"] and pruned["pruner"]["name"] == "median"
    assert {k: v for k, v in pruned.items() if k != "pruner"} == {k: v for k, v in unpruned.items() if k != "pruner"}


def test_pruning_repeats_each_study_per_seed_with_one_config() -> None:
    """The three studies of a repetition differ only in the pruner; the repetitions only in the sampler seed."""
    bench = load("pruning")
    configs = {(p, seed): bench.make_config(p, 12, seed) for p in bench.ORDER for seed in (0, 1)}
    for (p, seed), config in configs.items():
        assert config["sampler"]["seed"] == seed and config["pruner"]["name"] == p
        same = {k: v for k, v in config.items() if k not in ("pruner", "sampler")}
        assert same == {k: v for k, v in configs["none", 0].items() if k not in ("pruner", "sampler")}
    from sweep.search.pruners import PRUNERS  # the pruners at sweep's defaults, whatever they are
    for p in ("median", "hyperband"):
        params = PRUNERS.params(p)
        assert {k: configs[p, 0]["pruner"][k] for k in params} == {k: f.default for k, f in params.items()}
    assert bench.make_pruner(configs["hyperband", 0])._max_resource == 12  # max_resource: the trial's epochs


def test_bare_loop_computes_what_sweeps_trainer_computes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same seed, same config: the bare loop's first epoch gives sweep's training loss bit for bit, at 1, 2 and
    3 torch threads.

    Both seed the model, the dropout, the augmentation streams and the shuffle the same way, and feed the model
    the same log-mel tensors in the same (contiguous) layout, so they run the same CPU ops in the same order;
    only the validation accuracy is summed differently (a Python int count vs a float32 tensor), hence approx
    there. (The layout matters: before both made it contiguous, the losses differed in the 7th digit at 1 and 3
    threads; see tests/test_inputs.py.)
    """
    import torch

    from sweep.run.trial import train_trial as train

    monkeypatch.setenv("SWEEP_CACHE_DIR", str(tmp_path / "cache"))
    bench = load("trainer_overhead")
    config = bench.make_config(epochs=1, smoke=True, seed=7)
    assert config["augment"]["strength"] == 0.5 and config["augment"]["mixup"]
    assert config["augment"]["specaugment"]
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            bare = bench.bare_train(config)
            swept = train(config, tmp_path / f"trial-{n}").history
            assert len(bare) == len(swept) == 1
            assert bare[0]["train_loss"] == swept[0]["train_loss"], n
            assert bare[0]["val_loss"] == pytest.approx(swept[0]["val_loss"], rel=1e-6)
            assert bare[0]["val_acc"] == pytest.approx(swept[0]["val_acc"], abs=1e-6)
        other = bench.bare_train(bench.make_config(epochs=1, smoke=True, seed=8))
    finally:
        torch.set_num_threads(threads)
    assert other[0]["train_loss"] != bare[0]["train_loss"]  # the seed matters: the equality above is not vacuous


def test_runner_collects_bench_lines_and_tells_a_crash(tmp_path: Path) -> None:
    run = load("run")
    script = tmp_path / "fake.py"
    script.write_text("print('x 1 ms  BENCH fake_1 sweep=1.0 baseline=2.0 ratio=0.50 goal=<=1.0 pass')\n"
                      "print('BENCH not a bench line')\nraise SystemExit(3)\n")
    outcome = run.run_script(script, [], timeout=60)
    assert outcome.crashed and outcome.returncode == 3
    assert outcome.lines == ["BENCH fake_1 sweep=1.0 baseline=2.0 ratio=0.50 goal=<=1.0 pass"]
    names = [p.stem for p in run.discover()]
    assert "run" not in names and names[:3] == ["storage_overhead", "trainer_overhead", "pruning"]
    assert run.arguments(ROOT / "benchmarks" / "pruning.py", quick=True) == (["--quick"], None)


def test_runner_write_keeps_the_hand_written_part(tmp_path: Path) -> None:
    run = load("run")
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# old table\n\n{run.MARKER}\n\n## Why\n\nprose\n")
    outcome = run.Outcome("fake.py", ["--quick"], returncode=0,
                          lines=["BENCH fake_1 sweep=1.0 baseline=2.0 ratio=0.50 goal=<=1.0 pass"])
    run.write(results, run.table([outcome], run.facts(), "quick"))
    text = results.read_text()
    assert "old table" not in text and text.count(run.MARKER) == 1
    assert text.endswith("## Why\n\nprose\n")
    assert "| fake_1 | 1.0 | 2.0 | 0.50 | <=1.0 | pass |" in text


def test_runner_runs_the_trainer_again_on_the_gpu_with_amp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where CUDA is (faked here: there is no GPU), trainer_overhead runs a second time on it with AMP, and its
    row gets the trainer's units; without CUDA it runs once."""
    run = load("run")
    calls = []

    def fake_run(script: Path, args: list[str], timeout: float | None) -> object:
        calls.append((script.stem, args))
        name = "trainer_overhead_cuda_amp" if "--amp" in args else "trainer_overhead"
        return run.Outcome(script.name, args, 0, lines=[f"BENCH {name} sweep=1 baseline=1 ratio=1.0 goal=<=1.05 pass"])

    monkeypatch.setattr(run, "run_script", fake_run)
    for cuda, expected in ((True, [["--quick"], ["--quick", "--device", "cuda", "--amp"]]), (False, [["--quick"]])):
        calls.clear()
        monkeypatch.setattr(run, "cuda_available", lambda cuda=cuda: cuda)
        assert run.main(["--quick", "--only", "trainer_overhead"]) == 0
        assert calls == [("trainer_overhead", args) for args in expected]
    assert run.units("trainer_overhead_cuda_amp") == run.units("trainer_overhead") != ""


@pytest.mark.parametrize(("script", "names"), [
    ("throughput.py", {"throughput_clips_per_s", "throughput_eat_augment_clips_per_s"}),
    ("memory.py", {"memory_worker_anon_mb"}),
])
def test_data_pipeline_benchmarks_smoke(script: str, names: set[str]) -> None:
    lines = bench_lines(script, "--smoke")
    assert set(lines) == names
    for m in lines.values():
        assert float(m["ratio"]) == pytest.approx(float(m["sweep"]) / float(m["baseline"]), rel=0.05, abs=0.06)


def test_throughput_eat_baseline_augments_with_the_same_chain_one_clip_at_a_time(tmp_path: Path) -> None:
    """Like for like: EAT's per-item Dataset runs the config's own chain (the recipe's eight entries, EAT's noise
    colours, p = 0.5 each) on each clip alone, and a clip it returns is augmented and keeps its length."""
    from sweep.data.augment.pipeline import chain
    from sweep.data.layouts import write_esc50

    bench = load("throughput")
    root = write_esc50(tmp_path / "ESC-50", n_classes=2, clips_per_class=1, sample_rate=bench.EAT_RATE,
                       clip_seconds=bench.EAT_SAMPLES / bench.EAT_RATE)
    config = bench.eat_config(root, tmp_path / "cache", "cpu")
    entries = chain(config)
    assert [name for name, _, _ in entries] == [
        "gain", "polarity", "shift", "mask", "amp_segment", "cyclic_shift", "noise", "speed"]
    assert entries[6][2]["colors"] == ["white", "pink", "brown", "blue", "violet", "uniform", "sine", "phase"]
    assert all(params["p"] == 0.5 for _, _, params in entries)
    dataset = bench.EatClips(sorted((root / "audio").glob("*.wav")), config)
    assert dataset.steps == [(spec, params) for _, spec, params in entries]
    assert dataset[0].shape == (bench.EAT_SAMPLES,)


def test_launch_checks_smoke() -> None:
    """launch's header check against decoding the same files, and top_up against Optuna's enqueue_trial."""
    lines = bench_lines("launch_checks.py", "--smoke")
    assert set(lines) == {"launch_header_check", "launch_top_up_trials_per_s"}
    for m in lines.values():
        assert_ratio_of_printed(m)
    assert lines["launch_header_check"]["op"] == "<=" and lines["launch_top_up_trials_per_s"]["op"] == ">="


def test_orchestration_smoke() -> None:
    """sweep's whole worker path on two local workers, the training a sleep: wall time against its floor."""
    lines = bench_lines("orchestration.py", "--smoke")
    assert set(lines) == {"orchestration_8_2w"}
    m = lines["orchestration_8_2w"]
    assert float(m["baseline"]) == pytest.approx(8 * 2 * 0.05 / 2)  # the floor: trials × epochs × sleep / workers
    assert float(m["sweep"]) >= float(m["baseline"])  # no worker trains faster than it sleeps
    assert m["op"] == "<=" and float(m["goal"]) == 1.05
    assert_ratio_of_printed(m)


def test_orchestration_runs_every_trial_to_its_end_with_its_folder(tmp_path: Path) -> None:
    """Each trial ran every epoch (the sleep trainer's one curve prunes none) with its resolved config and its
    folder recorded, as a real trial does (the folders are gone with the benchmark's temporary folder)."""
    import multiprocessing

    import optuna

    bench = load("orchestration")
    url = f"sqlite:///{tmp_path / 'b.db'}"
    wall = bench.point(url, 4, 2, 3, 0.01, multiprocessing.get_context("fork"))
    assert wall >= 4 * 3 * 0.01 / 2
    (summary,) = optuna.get_all_study_summaries(url)
    trials = optuna.load_study(study_name=summary.study_name, storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert all(sorted(t.intermediate_values) == [0, 1, 2] for t in trials)
    assert all(t.user_attrs["config"]["train"]["epochs"] == 3 and "trial_dir" in t.user_attrs for t in trials)


@pytest.mark.parametrize("script", ["slurm_launch.py", "slurm_polling.py"])
def test_slurm_benchmarks_say_why_they_skip_without_slurm(script: str) -> None:
    """No SLURM on PATH: a line saying so, exit 0, no BENCH line (run.py counts no crash)."""
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env={"PATH": str(Path(sys.executable).parent)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{script}: skipped: SLURM is not installed (cluster/install.sh installs it)"


def test_warm_start_smoke() -> None:
    """Trials needed, warm / cold, means over the seeds; the source differs from the target in lr's range only."""
    lines = bench_lines("warm_start.py", "--smoke")
    (m,) = lines.values()
    assert m["name"] == "warm_start_trials_needed" and m["op"] == "<="
    assert float(m["ratio"]) == pytest.approx(float(m["sweep"]) / float(m["baseline"]), abs=0.01)
    bench = load("warm_start")
    target, source = bench.configs(2, 0, smoke=True)
    lr, shifted = target["search_space"].pop("train.lr"), source["search_space"].pop("train.lr")
    assert (shifted["low"], shifted["high"]) == pytest.approx((lr["low"] / 3, lr["high"] / 3))
    assert source["sampler"].pop("seed") == 1000 and target["sampler"].pop("seed") == 0
    assert source == target and target["pruner"]["name"] == "none"


def test_cv_pruning_smoke() -> None:
    """Three cross-validated studies of the same drawn trials: the baseline trains every fold of every trial."""
    lines = bench_lines("cv_pruning.py", "--smoke")
    assert set(lines) == {"cv_wilcoxon_epochs", "cv_wilcoxon_best_acc"}
    epochs = lines["cv_wilcoxon_epochs"]
    assert float(epochs["baseline"]) == 4 * 3 * 2  # --smoke: 4 trials × cv 3 × 2 epochs
    assert float(epochs["sweep"]) <= float(epochs["baseline"])


def test_the_probes_run() -> None:
    """benchmarks/probes/ (profiles and GPU checks, no baseline, not run by run.py) still run, at tiny sizes on
    the CPU: what a lent GPU machine runs must not have rotted since."""
    probes = ROOT / "benchmarks" / "probes"
    entries = subprocess.run([sys.executable, str(probes / "augment_entries.py"), "--device", "cpu", "--batch", "2",
                              "--samples", "8192", "--repeats", "1"], capture_output=True, text=True, timeout=180)
    assert entries.returncode == 0, entries.stderr
    assert "EAT chain" in entries.stdout and "mix phmix" in entries.stdout and "time_masking   spec" in entries.stdout
    checks = subprocess.run([sys.executable, str(probes / "gpu_checks.py"), "--device", "cpu", "--cases", "demo",
                             "--trials", "1", "--epochs", "1"], capture_output=True, text=True, timeout=300)
    assert checks.returncode == 0, checks.stdout[-3000:] + checks.stderr
    assert "GPU demo ok rc=0 trials=1/1" in checks.stdout
