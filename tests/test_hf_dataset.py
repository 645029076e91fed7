"""`data.dataset: hf`: Hugging Face datasets built with the real `datasets` package (no download): folders
written by save_to_disk, and ids resolved from a local cache laid out as `load_dataset` leaves it."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from conftest import TINY, sweep_cli

from sweep.config.resolve import resolve
from sweep.data import DATASETS, DataError, load_split
from sweep.data.folder import hashed_fold
from sweep.data.layouts import URBANSOUND8K_CLASSES, urbansound8k_hf, write_hf_cache

SR = 8000
FOLDS = {"train": [1, 2, 3], "val": [4], "test": [5]}
US8K = {"label_column": "classID", "fold_column": "fold", "group_column": "fsID"}


def config(folds: dict | None = None, **data) -> dict:
    section = {"dataset": "hf", "sample_rate": SR, "clip_seconds": 0.5, "folds": folds or FOLDS, **data}
    return resolve({"data": section}, "t")


@pytest.fixture(scope="module")
def us8k(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, datasets.Dataset]:
    """UrbanSound8K in its official layout (under `files/`) and as a saved Hugging Face dataset (`saved/`):
    2 classes, 10 clips each, 2 slices per fsID, so 5 sources a class over folds 1-5."""
    top = tmp_path_factory.mktemp("us8k")
    ds = urbansound8k_hf(top / "files", n_classes=2, clips_per_class=10, slices_per_source=2)
    ds.save_to_disk(str(top / "saved"))
    return top, ds


def test_saved_dataset_reads_what_the_official_layout_does(us8k: tuple[Path, datasets.Dataset]) -> None:
    top, ds = us8k
    cfg = config(root=str(top / "saved"), **US8K)
    index = DATASETS["hf"].index(cfg)
    assert index.classes == list(URBANSOUND8K_CLASSES[:2])  # the ClassLabel's names
    assert [it.fold for it in index.items] == ds["fold"] and [it.group for it in index.items] == list(
        map(str, ds["fsID"])
    )
    official = resolve({"data": {"dataset": "urbansound8k", "root": str(top / "files"), "sample_rate": SR,
                                 "clip_seconds": 0.5, "folds": FOLDS}}, "t")
    for split in ("train", "val", "test"):
        mine, theirs = load_split(cfg, split), load_split(official, split)
        assert len(mine) == len(theirs) > 0 and mine.classes == theirs.classes
        assert [ds["slice_file_name"][k] for k in mine.keys] == [Path(str(k)).name for k in theirs.keys]
        torch.testing.assert_close(mine.waves, theirs.waves, atol=0, rtol=0)  # the same decoding, byte for byte
        assert mine.lengths.tolist() == theirs.lengths.tolist() and mine.labels.tolist() == theirs.labels.tolist()


def test_the_label_column_names_the_classes(us8k: tuple[Path, datasets.Dataset], tmp_path: Path) -> None:
    top, _ = us8k
    root = str(top / "saved")
    by_name = DATASETS["hf"].index(config(root=root, **{**US8K, "label_column": "class"}))
    assert by_name.classes == ["air_conditioner", "car_horn"]  # a string column: its sorted values
    plain = urbansound8k_hf(tmp_path / "f", n_classes=3, clips_per_class=5, class_label=False)
    plain.save_to_disk(str(tmp_path / "plain"))
    numbers = DATASETS["hf"].index(config(root=str(tmp_path / "plain"), **US8K))
    assert numbers.classes == ["0", "1", "2"]  # integers without a ClassLabel: named by their values
    assert [it.label for it in numbers.items] == plain["classID"]
    chosen = load_split(config(root=root, classes=["car_horn"], **US8K), "train")
    assert chosen.classes == ["car_horn"] and set(chosen.labels.tolist()) == {0} and len(chosen) == 6


def test_the_group_column_keeps_each_source_in_one_fold(tmp_path: Path) -> None:
    ds = urbansound8k_hf(tmp_path / "f", n_classes=2, clips_per_class=24, slices_per_source=4)
    ds.save_to_disk(str(tmp_path / "saved"))
    root = str(tmp_path / "saved")
    grouped = DATASETS["hf"].index(config(root=root, label_column="classID", group_column="fsID"))
    folds_of: dict[str, set[int]] = {}
    for it in grouped.items:
        folds_of.setdefault(it.group, set()).add(it.fold)
        assert it.fold == hashed_fold(it.group, 5)  # no fold column, one split: folds made from groups
    assert len(folds_of) == 12 and all(len(f) == 1 for f in folds_of.values())
    ungrouped = DATASETS["hf"].index(config(root=root, label_column="classID"))
    spread = {}
    for it, row in zip(ungrouped.items, ds["fsID"]):
        spread.setdefault(row, set()).add(it.fold)
    assert any(len(f) > 1 for f in spread.values())  # without it, one recording's slices land in several folds
    three = DATASETS["hf"].index(config(root=root, label_column="classID", group_column="fsID", n_folds=3))
    assert {it.fold for it in three.items} <= {1, 2, 3}


def test_splits_serve_as_folds_and_hf_split_picks_them(us8k: tuple[Path, datasets.Dataset], tmp_path: Path) -> None:
    _, ds = us8k
    parts = datasets.DatasetDict({"train": ds.select(range(0, 12)), "validation": ds.select(range(12, 16)),
                                  "test": ds.select(range(16, 20))})
    parts.save_to_disk(str(tmp_path / "dict"))
    folds = {"train": [1], "val": [2], "test": [3]}
    cfg = config(folds, root=str(tmp_path / "dict"), label_column="classID")
    index = DATASETS["hf"].index(cfg)
    assert [it.fold for it in index.items] == [1] * 12 + [2] * 4 + [3] * 4 and [it.key for it in index.items] == list(
        range(20)
    )
    val = load_split(cfg, "val")
    assert len(val) == 4 and val.labels.tolist() == ds["classID"][12:16]
    swapped = config(folds, root=str(tmp_path / "dict"), label_column="classID", hf_split=["test", "train"])
    assert [it.fold for it in DATASETS["hf"].index(swapped).items] == [1] * 4 + [2] * 12
    with pytest.raises(DataError, match=r"data.hf_split: .* has no split 'valid'; its splits are: train, valid"):
        DATASETS["hf"].index(config(folds, root=str(tmp_path / "dict"), label_column="classID", hf_split=["valid"]))


def test_a_search_never_decodes_a_test_fold_row(us8k: tuple[Path, datasets.Dataset], tmp_path: Path) -> None:
    _, ds = us8k
    broken = ds.cast_column("audio", datasets.Audio(decode=False)).map(
        lambda row: {"audio": {"bytes": b"not audio" if row["fold"] == 5 else row["audio"]["bytes"],
                               "path": row["audio"]["path"]}}
    ).cast_column("audio", datasets.Audio())
    broken.save_to_disk(str(tmp_path / "broken"))
    cfg = config(root=str(tmp_path / "broken"), **US8K)
    assert len(load_split(cfg, "train")) == 12 and len(load_split(cfg, "val")) == 4
    with pytest.raises(DataError, match=r"cannot read audio file hf dataset .*broken, split train, row \d+: Error "
                                        r"opening it: Format not recognised"):
        load_split(cfg, "test")


def test_the_data_cache_is_shared_and_follows_a_re_saved_dataset(us8k: tuple[Path, datasets.Dataset],
                                                                 tmp_path: Path) -> None:
    _, ds = us8k
    ds.save_to_disk(str(tmp_path / "saved"))
    cfg = config(root=str(tmp_path / "saved"), **US8K)
    first, again = load_split(cfg, "train"), load_split(cfg, "train")
    assert first.entry is not None and first.entry == again.entry and (first.entry / "waves.npy").is_file()
    quieter = ds.cast_column("audio", datasets.Audio(decode=False)).map(
        lambda row, i: {"audio": row["audio"] if i else {"bytes": _half(row["audio"]["bytes"]), "path": "x.wav"}},
        with_indices=True,
    ).cast_column("audio", datasets.Audio())
    quieter.save_to_disk(str(tmp_path / "saved2"))
    (tmp_path / "saved").rename(tmp_path / "old")
    (tmp_path / "saved2").rename(tmp_path / "saved")
    changed = load_split(cfg, "train")
    assert changed.entry != first.entry  # same config, same rows: the new arrow files make another entry
    torch.testing.assert_close(changed.waves[0], first.waves[0] / 2, atol=2 / 2**15, rtol=0)


def _half(wav: bytes) -> bytes:
    import io

    import soundfile

    audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    out = io.BytesIO()
    soundfile.write(out, audio / 2, rate, format="WAV", subtype=soundfile.info(io.BytesIO(wav)).subtype)
    return out.getvalue()


def test_an_id_is_read_from_the_local_cache_only(us8k: tuple[Path, datasets.Dataset], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _, ds = us8k
    cache = tmp_path / "hf-cache"
    write_hf_cache(datasets.DatasetDict({"train": ds}), cache, "someone/urbansound8k", tmp_path / "work")
    assert (cache / "someone___urbansound8k" / "default" / "0.0.0").is_dir()
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    cfg = config(hf_id="someone/urbansound8k", **US8K)
    val = load_split(cfg, "val")
    assert len(val) == 4 and val.classes == list(URBANSOUND8K_CLASSES[:2])
    assert len(load_split(config(hf_id="someone/urbansound8k", hf_config="default", **US8K), "val")) == 4
    monkeypatch.delenv("HF_DATASETS_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    cache.rename(tmp_path / "home" / "datasets")
    assert len(load_split(cfg, "val")) == 4  # $HF_HOME/datasets when HF_DATASETS_CACHE is not set
    with pytest.raises(DataError) as info:
        DATASETS["hf"].index(config(hf_id="someone/esc50", hf_config="fold1", **US8K))
    assert str(info.value).startswith(
        f"data.hf_id: dataset someone/esc50 (config fold1) is not in the local Hugging Face datasets cache "
        f"{tmp_path / 'home' / 'datasets'} (HF_DATASETS_CACHE, else HF_HOME/datasets; jobs never download). Fetch it "
        "on a login node with the same HF_DATASETS_CACHE: "
        "python -c \"import datasets; datasets.load_dataset('someone/esc50', 'fold1')\" ("
    )
    with pytest.raises(DataError, match=r"dataset someone/urbansound8k \(config other\) is not in the local .*config"):
        DATASETS["hf"].index(config(hf_id="someone/urbansound8k", hf_config="other", **US8K))


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")
def test_an_id_is_read_from_a_cache_mounted_read_only(us8k: tuple[Path, datasets.Dataset], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared cache that compute nodes mount read-only: `load_dataset` fails there on its own lock file (the
    error that was reported as "not in the cache"); the prepared arrow files are read straight instead."""
    _, ds = us8k
    cache = tmp_path / "hf-cache"
    write_hf_cache(datasets.DatasetDict({"train": ds}), cache, "someone/urbansound8k", tmp_path / "work")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    cfg = config(hf_id="someone/urbansound8k", cache=False, **US8K)
    writable = load_split(cfg, "val")
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    subprocess.run(["mount", "--bind", str(cache), str(cache)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(cache)], check=True)
        with pytest.raises(OSError):
            (cache / "probe").write_text("")
        with pytest.raises(OSError, match="Read-only"):  # what datasets itself does there
            datasets.load_dataset("someone/urbansound8k", cache_dir=str(cache))
        read_only = load_split(cfg, "val")
    finally:
        subprocess.run(["umount", str(cache)], check=True)
    assert torch.equal(read_only.waves, writable.waves) and read_only.keys == writable.keys
    assert read_only.classes == writable.classes
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"label_column": "label"}, r"data.label_column: hf dataset .*saved \(split train\) has no column 'label'; "
                                    r"its columns are: audio, slice_file_name, fsID, start, end, salience, fold, "),
        ({"audio_column": "wav"}, r"data.audio_column: .* has no column 'wav'; its columns are: audio, "),
        ({"audio_column": "class"}, r"data.audio_column: column 'class' of .* is Value\('string'\), not an Audio "
                                    r"column; its Audio columns are: audio"),
        ({"fold_column": "folds"}, r"data.fold_column: .* has no column 'folds'; its columns are: audio, "),
        ({"fold_column": "class"}, r"data.fold_column: hf dataset .*, split train, row 0: column class is "
                                   r"'air_conditioner'; accepted: integer folds"),
        ({"group_column": "source"}, r"data.group_column: .* has no column 'source'"),
        ({"label_column": "start"}, r"data.label_column: column 'start' of .* is Value\('float64'\); accepted: a "
                                    r"ClassLabel column"),
    ],
)
def test_bad_columns_name_the_key_and_what_the_dataset_has(us8k: tuple[Path, datasets.Dataset], data: dict,
                                                          message: str) -> None:
    top, _ = us8k
    with pytest.raises(DataError, match=message):
        DATASETS["hf"].index(config(root=str(top / "saved"), **{**US8K, **data}))


def test_a_root_that_is_not_a_saved_dataset_is_refused(tmp_path: Path, us8k: tuple[Path, datasets.Dataset]) -> None:
    with pytest.raises(DataError, match=r"data.root '.*files' is not a dataset saved with save_to_disk \(it holds "
                                        r"neither dataset_dict.json nor state.json\); accepted: "):
        DATASETS["hf"].index(config(root=str(us8k[0] / "files")))
    with pytest.raises(DataError, match=r"hf dataset: set data.root to a folder written by save_to_disk, or data.hf"):
        DATASETS["hf"].index(config())
    with pytest.raises(DataError, match=r"data.root \('.*'\) and data.hf_id \('a/b'\) are both set; set one"):
        DATASETS["hf"].index(config(root=str(us8k[0] / "saved"), hf_id="a/b"))


def study(root: Path, **data) -> dict:
    tiny = copy.deepcopy(TINY)
    tiny["study"] = {"name": "hf", "n_trials": 2}
    tiny["data"] = {"dataset": "hf", "root": str(root), "sample_rate": SR, "clip_seconds": 0.5, **US8K, **data}
    tiny["train"]["epochs"] = 1
    tiny["executor"] = {"name": "debug"}
    return tiny


def test_launch_trains_on_a_saved_dataset(home: Path, us8k: tuple[Path, datasets.Dataset]) -> None:
    (home / "s.yaml").write_text(yaml.safe_dump(study(us8k[0] / "saved")))
    result = sweep_cli("launch", "s.yaml", cwd=home, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "2/2 finished" in result.stdout
    saved = yaml.safe_load((home / "studies" / "hf" / "trials" / "0" / "config.yaml").read_text())
    assert saved["data"]["dataset"] == "hf" and saved["data"]["group_column"] == "fsID"
    metrics = (home / "studies" / "hf" / "trials" / "0" / "metrics.json").read_text()
    assert '"epochs"' in metrics


def test_launch_refuses_folds_the_fold_column_lacks_before_any_trial(home: Path,
                                                                   us8k: tuple[Path, datasets.Dataset]) -> None:
    (home / "s.yaml").write_text(yaml.safe_dump(study(us8k[0] / "saved", folds={"train": [1, 2], "val": [7]})))
    result = sweep_cli("launch", "s.yaml", cwd=home, timeout=240)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "data.folds.val (7,) holds no clips (the dataset's folds: [1, 2, 3, 4, 5])" in result.stderr
    assert not (home / "studies" / "hf").exists()


def test_the_audio_column_chooses_what_is_decoded(us8k: tuple[Path, datasets.Dataset], tmp_path: Path) -> None:
    _, ds = us8k
    raw = ds.cast_column("audio", datasets.Audio(decode=False))
    two = raw.add_column("quiet", [{"bytes": _half(a["bytes"]), "path": a["path"]} for a in raw["audio"]])
    two = two.cast_column("quiet", datasets.Audio()).cast_column("audio", datasets.Audio())
    two.save_to_disk(str(tmp_path / "two"))
    loud = load_split(config(root=str(tmp_path / "two"), **US8K), "val")
    quiet = load_split(config(root=str(tmp_path / "two"), audio_column="quiet", **US8K), "val")
    assert loud.keys == quiet.keys and loud.entry != quiet.entry
    torch.testing.assert_close(quiet.waves, loud.waves / 2, atol=2**-7, rtol=0)  # within 8-bit rows' step
    assert quiet.waves.abs().max() < 0.6 * loud.waves.abs().max()
