"""The real dataset loaders, on small files written in each dataset's official layout."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional
import yaml
from conftest import sweep_cli

from sweep.config.resolve import resolve
from sweep.data import DATASETS, DataError, load_split, split_items
from sweep.data.folder import hashed_fold
from sweep.data.layouts import (
    MIXED,
    URBANSOUND8K_CLASSES,
    speaker_id,
    stored,
    write_esc50,
    write_folder,
    write_speechcommands,
    write_urbansound8k,
)
from sweep.data.synthetic import CLASSES, generate

SR = 8000
FOLDS5 = {"train": [1, 2, 3], "val": [4], "test": [5]}


def config(dataset: str, root: Path | str | None, folds: dict | None = None, **data) -> dict:
    """A resolved config; the folds are always given (the dataset's own protocol unless said otherwise)."""
    section = {
        "dataset": dataset,
        "root": None if root is None else str(root),
        "sample_rate": SR,
        "clip_seconds": 0.5,
        "folds": folds or DATASETS[dataset].folds,
        **data,
    }
    return resolve({"data": section}, "t")


def resampled(wave: np.ndarray, rate: int) -> torch.Tensor:
    wave = torch.as_tensor(np.ascontiguousarray(wave, dtype=np.float32))
    return wave if rate == SR else torchaudio.functional.resample(wave, rate, SR)


def esc50_fold(key: str | int) -> int:
    return int(Path(str(key)).name.split("-")[0])


@pytest.fixture
def esc50(tmp_path: Path) -> Path:
    return write_esc50(tmp_path / "ESC-50", n_classes=4, clips_per_class=5, sample_rate=16000, clip_seconds=0.25)


# ---- ESC-50 ------------------------------------------------------------------------------------------


def test_esc50_classes_labels_folds_and_padding(esc50: Path) -> None:
    assert DATASETS["esc50"].folds == FOLDS5 and DATASETS["esc50"].root_env == "ESC50_ROOT"
    cfg = config("esc50", esc50)
    waves, _, _ = generate(4, 5, 5, 16000, 0.25, 0)
    with open(esc50 / "meta" / "esc50.csv") as f:
        row_of = {r["filename"]: i for i, r in enumerate(csv.DictReader(f))}
    for split, folds in FOLDS5.items():
        clips = load_split(cfg, split)
        assert clips.classes == list(CLASSES[:4]) and clips.sample_rate == SR
        assert {esc50_fold(k) for k in clips.keys} == set(folds) and len(clips) == 4 * len(folds)
        assert clips.waves.shape == (len(clips), 4000) and clips.waves.dtype == torch.float32
        assert clips.lengths.dtype == torch.int64 and clips.lengths.tolist() == [2000] * len(clips)
        assert (clips.waves[:, 2000:] == 0).all()  # 0.25 s files, zero-padded to clip_seconds
        for key, label, wave in zip(clips.keys, clips.labels, clips.waves):
            name = Path(str(key)).name
            assert int(name.split("-")[-1][:-4]) == label  # the target in the file name
            expected = resampled(waves[row_of[name]], 16000)
            torch.testing.assert_close(wave[:2000], expected, atol=2 / 2**15, rtol=0)


def test_esc50_esc10_and_class_subset(esc50: Path) -> None:
    esc10 = load_split(config("esc50", esc50, esc10=True), "train")
    assert esc10.classes == [CLASSES[0], CLASSES[2]]  # the writer marks even targets as ESC-10
    assert sorted(set(esc10.labels.tolist())) == [0, 1] and len(esc10) == 2 * 3

    subset = load_split(config("esc50", esc50, classes=["chirp_up", "tone"]), "train")
    assert subset.classes == ["chirp_up", "tone"] and len(subset) == 6
    for key, label in zip(subset.keys, subset.labels):
        target = int(Path(str(key)).stem.split("-")[-1])
        assert label == {2: 0, 0: 1}[target]  # labels follow the order given, not the dataset's

    with pytest.raises(DataError, match=r"no class 'dog'.*its classes are: tone, tremolo, chirp_up, chirp_down"):
        load_split(config("esc50", esc50, classes=["tone", "dog"]), "train")
    with pytest.raises(DataError, match=r"no class 'tremolo'.*its classes are: tone, chirp_up$"):
        load_split(config("esc50", esc50, esc10=True, classes=["tremolo"]), "train")


def test_max_seconds_centre_crops_longer_files(tmp_path: Path) -> None:
    root = write_esc50(tmp_path / "e", n_classes=2, clips_per_class=5, sample_rate=SR, clip_seconds=1.0)
    whole = load_split(config("esc50", root), "val")
    assert whole.waves.shape == (2, SR) and whole.lengths.tolist() == [SR, SR]  # wider than clip_seconds
    cropped = load_split(config("esc50", root, max_seconds=0.3), "val")
    assert cropped.waves.shape == (2, 4000) and cropped.lengths.tolist() == [2400, 2400]
    torch.testing.assert_close(cropped.waves[:, :2400], whole.waves[:, 2800:5200])
    assert (cropped.waves[:, 2400:] == 0).all()


def test_fold_shared_by_val_and_test_is_split_by_source(tmp_path: Path) -> None:
    root = write_esc50(tmp_path / "e", n_classes=3, clips_per_class=20, sample_rate=SR, clip_seconds=0.1, takes=2)
    cfg = config("esc50", root)
    cfg["data"]["folds"] = {"train": [2, 3, 4, 5], "val": [1], "test": [1]}
    val, test, train = (load_split(cfg, split) for split in ("val", "test", "train"))

    def source(key: str | int) -> str:
        return Path(str(key)).name.split("-")[1]

    fold1 = {str(p) for p in (root / "audio").glob("1-*.wav")}
    assert len(fold1) == 12 and set(val.keys) | set(test.keys) == fold1  # nothing lost
    assert not set(val.keys) & set(test.keys) and val.keys and test.keys
    assert not {source(k) for k in val.keys} & {source(k) for k in test.keys}  # no recording on both sides
    assert all(esc50_fold(k) != 1 for k in train.keys) and len(train) == 48
    items = DATASETS["esc50"].index(cfg).items  # the same rule, called directly
    assert [it.key for it in split_items(items, cfg["data"]["folds"], "val", 0)] == val.keys


# ---- UrbanSound8K ------------------------------------------------------------------------------------


def test_urbansound8k_mixed_formats_decode_to_what_was_written(tmp_path: Path) -> None:
    root = write_urbansound8k(tmp_path / "UrbanSound8K", n_classes=2, formats=MIXED)
    assert DATASETS["urbansound8k"].folds == {"train": [1, 2, 3, 4, 5, 6, 7, 8], "val": [9], "test": [10]}
    with open(root / "metadata" / "UrbanSound8K.csv") as f:
        rows = list(csv.DictReader(f))
    row_of = {r["slice_file_name"]: i for i, r in enumerate(rows)}
    clips = load_split(config("urbansound8k", root), "train")
    assert clips.classes == list(URBANSOUND8K_CLASSES[:2]) and len(clips) == 16
    seen = set()
    for key, label, wave, length in zip(clips.keys, clips.labels, clips.waves, clips.lengths):
        i = row_of[Path(str(key)).name]
        assert Path(str(key)).parent.name == f"fold{rows[i]['fold']}" and int(rows[i]["fold"]) <= 8
        assert label == int(rows[i]["classID"])
        fmt = MIXED[i % len(MIXED)]
        rate = fmt.rate(44100)
        info = soundfile.info(str(key))
        assert (info.subtype, info.samplerate, info.channels) == (fmt.subtype, rate, fmt.channels)
        seen.add(fmt)
        frames = round((fmt.seconds or 0.25) * rate)
        assert length == math.ceil(frames * SR / rate)  # too-short clips keep their real length
        assert (wave[length:] == 0).all()
        # the same as resampling the file's own samples, mixed to mono
        on_disk = soundfile.read(str(key), dtype="float32", always_2d=True)[0].mean(axis=1)
        torch.testing.assert_close(wave[:length], resampled(on_disk, rate), atol=1e-5, rtol=0)
        # and, within the format's quantisation, the signal the writer meant
        meant = stored(fmt, generate(2, 10, 10, rate, 0.25, 0)[0][i], rate).mean(axis=1)
        step = {"PCM_U8": 2**-7, "PCM_16": 2**-15, "PCM_24": 2**-23, "FLOAT": 1e-7}[fmt.subtype]
        torch.testing.assert_close(wave[:length], resampled(meant, rate), atol=2 * step + 1e-6, rtol=0)
    assert seen == set(MIXED)
    assert (clips.lengths < 2000).any() and clips.waves.shape[1] == 4000


def test_urbansound8k_folds_and_groups(tmp_path: Path) -> None:
    root = write_urbansound8k(tmp_path / "u", n_classes=2, clips_per_class=20, slices_per_source=2)
    cfg = config("urbansound8k", root)
    items = DATASETS["urbansound8k"].index(cfg).items
    assert {it.fold for it in items} == set(range(1, 11)) and len(items) == 40
    by_group: dict[str, set[int]] = {}
    for it in items:
        by_group.setdefault(it.group, set()).add(it.fold)
    assert len(by_group) == 20 and all(len(f) == 1 for f in by_group.values())  # fsID = group, one fold
    assert {esc for esc in (Path(str(k)).parent.name for k in load_split(cfg, "test").keys)} == {"fold10"}
    assert len(load_split(cfg, "val")) == 4


# ---- Speech Commands ---------------------------------------------------------------------------------


def test_speechcommands_lists_speakers_and_background_noise(tmp_path: Path) -> None:
    root = write_speechcommands(tmp_path / "sc", words=("yes", "no", "up"), speakers=5, takes=2)
    assert DATASETS["speechcommands"].folds == {"train": [1], "val": [2], "test": [3]}
    cfg = config("speechcommands", root)
    index = DATASETS["speechcommands"].index(cfg)
    assert index.classes == ["no", "up", "yes"]  # sorted folders; _background_noise_ is not a class
    assert all("_background_noise_" not in str(it.key) for it in index.items) and len(index.items) == 30
    val_list = (root / "validation_list.txt").read_text().split()
    test_list = (root / "testing_list.txt").read_text().split()
    for it in index.items:
        rel = Path(str(it.key)).relative_to(root).as_posix()
        assert it.fold == (2 if rel in val_list else 3 if rel in test_list else 1)
        assert it.group == Path(str(it.key)).name.split("_nohash_")[0]
        assert index.classes[it.label] == rel.split("/")[0]
    assert {it.group for it in index.items if it.fold == 2} == {speaker_id(0, 3)}
    train, val, test = (load_split(cfg, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (18, 6, 6)
    assert train.waves.shape == (18, 4000) and train.lengths.tolist() == [2000] * 18  # 16 kHz → 8 kHz


def test_speechcommands_list_errors(tmp_path: Path) -> None:
    root = write_speechcommands(tmp_path / "sc", words=("yes", "no"), speakers=5)
    (root / "no" / f"{speaker_id(0, 4)}_nohash_0.wav").unlink()
    with pytest.raises(DataError, match=r"1 listed file\(s\) are not under .*no/\w+_nohash_0.wav \(testing_list"):
        load_split(config("speechcommands", root), "train")
    (root / "testing_list.txt").unlink()
    with pytest.raises(DataError, match=r"testing_list.txt not found"):
        load_split(config("speechcommands", root), "train")


# ---- folder ------------------------------------------------------------------------------------------


def test_folder_of_class_folders_with_a_reproducible_hashed_split(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", extensions=(".wav", ".flac", ".ogg"))
    (root / "bird" / "._bird_0.wav").write_bytes(b"macOS sidecar, not audio")  # hidden: ignored
    (root / "_trash").mkdir()  # not a class
    folds = {"train": [1], "val": [2], "test": [3]}
    cfg = config("folder", root, folds, n_folds=2)
    index = DATASETS["folder"].index(cfg)
    assert index.classes == ["bird", "cat", "dog"] and len(index.items) == 15  # nested files found too
    for it in index.items:
        rel = Path(str(it.key)).relative_to(root).as_posix()
        assert it.group == rel and it.fold == hashed_fold(rel, 2) and index.classes[it.label] == rel.split("/")[0]
    moved = shutil.copytree(root, tmp_path / "elsewhere")  # the split depends on relative paths only
    again = DATASETS["folder"].index(config("folder", moved, folds, n_folds=2))
    assert [(it.group, it.fold, it.label) for it in again.items] == [
        (it.group, it.fold, it.label) for it in index.items
    ]
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    assert sorted(train.keys + val.keys) == sorted(it.key for it in index.items)
    waves = generate(3, 5, 5, 16000, 0.25, 0)[0]
    for clips in (train, val):
        for key, wave, length in zip(clips.keys, clips.waves, clips.lengths):
            c, k = ["bird", "cat", "dog"].index(Path(str(key)).stem.split("_")[0]), int(Path(str(key)).stem[-1])
            if not str(key).endswith(".ogg"):  # wav and flac are lossless 16-bit; ogg is lossy
                expected = resampled(waves[c * 5 + k], 16000)
                torch.testing.assert_close(wave[:length], expected, atol=2 / 2**15, rtol=0)
            assert abs(int(length) - 2000) <= 2


def test_folder_csv_with_and_without_folds(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "c", csv_name="labels.csv", with_folds=True)
    cfg = config("folder", root, FOLDS5, csv="labels.csv")
    index = DATASETS["folder"].index(cfg)
    assert index.classes == ["bird", "cat", "dog"]
    assert all(it.fold == int(Path(str(it.key)).stem[-1]) % 5 + 1 for it in index.items)
    assert len(load_split(cfg, "test")) == 3

    plain = write_folder(tmp_path / "p", csv_name="labels.csv")
    lines = (plain / "labels.csv").read_text().splitlines()
    lines[1] = f"{plain / lines[1].split(',')[0]},{lines[1].split(',')[1]}"  # an absolute path
    (plain / "labels.csv").write_text("\n".join(lines) + "\n")
    items = DATASETS["folder"].index(config("folder", plain, FOLDS5, csv=str(plain / "labels.csv"))).items
    assert items[0].group == "clips/bird_0.wav" and all(it.fold == hashed_fold(it.group, 5) for it in items)

    with pytest.raises(DataError, match=r"metadata file .*nope.csv does not exist"):
        DATASETS["folder"].index(config("folder", plain, FOLDS5, csv="nope.csv"))
    (plain / "bad.csv").write_text("file,label\nclips/bird_0.wav,bird\n")
    with pytest.raises(DataError, match=r"bad.csv: missing column\(s\) path; expected the columns path, label, fold"):
        DATASETS["folder"].index(config("folder", plain, FOLDS5, csv="bad.csv"))
    (plain / "bad.csv").write_text("path,label,fold\nclips/bird_0.wav,bird,1\nclips/bird_1.wav,bird,x\n")
    with pytest.raises(DataError, match=r"bad.csv, line 3: column fold must be an integer, got 'x'"):
        DATASETS["folder"].index(config("folder", plain, FOLDS5, csv="bad.csv"))


# ---- roots -------------------------------------------------------------------------------------------


def test_root_from_variable_and_environment(esc50: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_DATA", str(esc50.parent))
    assert len(load_split(config("esc50", "${MY_DATA}/ESC-50"), "val")) == 4
    monkeypatch.setenv("ESC50_ROOT", str(esc50))
    assert len(load_split(config("esc50", None), "val")) == 4
    monkeypatch.delenv("ESC50_ROOT")
    with pytest.raises(DataError, match="data.root is not set for dataset esc50: set data.root or export ESC50_ROOT"):
        load_split(config("esc50", None), "val")
    with pytest.raises(DataError, match=r"uses \$\{NOT_SET_ANYWHERE\}, which is not set"):
        load_split(config("esc50", "${NOT_SET_ANYWHERE}/x"), "val")
    with pytest.raises(DataError, match=r"dataset root .*missing does not exist"):
        load_split(config("esc50", esc50.parent / "missing"), "val")
    with pytest.raises(DataError, match=r"data.root is not set for dataset folder: set data.root$"):
        load_split(config("folder", None), "val")


# ---- metadata and file errors ------------------------------------------------------------------------


def test_metadata_errors_name_the_file_and_what_is_expected(esc50: Path, tmp_path: Path) -> None:
    meta = esc50 / "meta" / "esc50.csv"
    text = meta.read_text()
    meta.write_text(text.replace(",fold,", ",folds,").replace(",take", ",takes"))
    with pytest.raises(DataError, match=r"esc50.csv: missing column\(s\) fold, take; expected the columns filename, "
                       r"fold, target, category, esc10, src_file, take \(its header has: filename, folds,"):
        load_split(config("esc50", esc50), "train")
    lines = text.splitlines()
    cells = lines[2].split(",")
    lines[2] = ",".join([cells[0], "one", *cells[2:]])
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"esc50.csv, line 3: column fold must be an integer, got 'one'"):
        load_split(config("esc50", esc50), "train")
    meta.unlink()
    with pytest.raises(DataError, match=r"metadata file .*meta/esc50.csv does not exist; data.root must be the ESC"):
        load_split(config("esc50", esc50), "train")
    empty = tmp_path / "us8k"
    empty.mkdir()
    with pytest.raises(DataError, match=r"metadata/UrbanSound8K.csv does not exist"):
        load_split(config("urbansound8k", empty), "train")


def latin1_on_line(path: Path, line: int) -> int:
    """Rewrite a metadata file with one Latin-1 byte (é = 0xe9) in the given line; return its byte offset."""
    lines = path.read_text().split("\n")
    cut = lines[line - 1].rfind(",") + 1 if "," in lines[line - 1] else len(lines[line - 1])
    lines[line - 1] = lines[line - 1][:cut] + "é" + lines[line - 1][cut:]
    data = "\n".join(lines).encode("latin-1")
    path.write_bytes(data)
    return data.index(b"\xe9")


def not_utf8(path: Path, offset: int, line: int) -> str:
    return (
        f"{path}: not UTF-8 text: byte 0xe9 at byte offset {offset} (line {line}) is not valid UTF-8; "
        "save the file as UTF-8"
    )


def test_non_utf8_metadata_names_the_file_and_byte_offset(esc50: Path, tmp_path: Path) -> None:
    """Each dataset's metadata in its official layout, one byte of another encoding in it: the error names
    the file, the offset and the line, where open() would raise UnicodeDecodeError from inside csv."""
    meta = esc50 / "meta" / "esc50.csv"
    offset = latin1_on_line(meta, 3)
    with pytest.raises(DataError) as info:
        load_split(config("esc50", esc50), "train")
    assert str(info.value) == not_utf8(meta, offset, 3)

    us8k = write_urbansound8k(tmp_path / "UrbanSound8K", n_classes=2, clips_per_class=10)
    meta = us8k / "metadata" / "UrbanSound8K.csv"
    offset = latin1_on_line(meta, 12)
    with pytest.raises(DataError) as info:
        load_split(config("urbansound8k", us8k), "train")
    assert str(info.value) == not_utf8(meta, offset, 12)

    folder = write_folder(tmp_path / "f", csv_name="labels.csv")
    offset = latin1_on_line(folder / "labels.csv", 2)
    with pytest.raises(DataError) as info:
        DATASETS["folder"].index(config("folder", folder, FOLDS5, csv="labels.csv"))
    assert str(info.value) == not_utf8(folder / "labels.csv", offset, 2)

    words = write_speechcommands(tmp_path / "sc", words=("yes", "no"), speakers=5)
    offset = latin1_on_line(words / "validation_list.txt", 1)
    with pytest.raises(DataError) as info:
        load_split(config("speechcommands", words), "train")
    assert str(info.value) == not_utf8(words / "validation_list.txt", offset, 1)


def test_utf8_metadata_with_a_byte_order_mark_and_non_ascii_names_loads(esc50: Path) -> None:
    meta = esc50 / "meta" / "esc50.csv"
    meta.write_bytes(b"\xef\xbb\xbf" + meta.read_text().replace(",tone,", ",tonalit\u00e9,").encode())
    index = DATASETS["esc50"].index(config("esc50", esc50))
    assert len(index.items) == 20 and index.classes[0] == "tonalit\u00e9"


@pytest.mark.parametrize("dataset", ["esc50", "urbansound8k"])
def test_cli_launch_on_non_utf8_metadata_exits_2(home: Path, dataset: str) -> None:
    if dataset == "esc50":
        root = write_esc50(home / "ESC-50", n_classes=2, clips_per_class=5, sample_rate=SR, clip_seconds=0.25)
        meta = root / "meta" / "esc50.csv"
    else:
        root = write_urbansound8k(home / "UrbanSound8K", n_classes=2, clips_per_class=10)
        meta = root / "metadata" / "UrbanSound8K.csv"
    offset = latin1_on_line(meta, 4)
    study = {"study": {"n_trials": 2}, "data": {"dataset": dataset, "root": str(root), "sample_rate": SR},
             "executor": {"name": "debug"}}
    (home / "s.yaml").write_text(yaml.safe_dump(study))
    result = sweep_cli("launch", "s.yaml", cwd=home, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == f"sweep: error: {not_utf8(meta, offset, 4)}"
    assert not (home / "studies").exists()


def test_bad_audio_files_stop_the_load_or_are_skipped(esc50: Path) -> None:
    train = sorted((esc50 / "audio").glob("[123]-*.wav"))
    soundfile.write(train[1], np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(DataError, match=rf"{train[1]}: it holds no audio \(0 frames\)"):
        load_split(config("esc50", esc50, on_bad_file="error"), "train")
    train[0].unlink()
    with pytest.raises(DataError, match=rf"cannot read audio file {train[0]}: no such file \(set data.on_bad_file"):
        load_split(config("esc50", esc50), "train")
    train[0].write_text("this is not audio\n")
    with pytest.raises(DataError, match=rf"cannot read audio file {train[0]}: .*(not recognised|unknown format)"):
        load_split(config("esc50", esc50), "train")
    with pytest.warns(UserWarning, match=rf"skipped 2 of 12 audio files .*skip\): {train[0]}: .*; {train[1]}: it"):
        clips = load_split(config("esc50", esc50, on_bad_file="skip"), "train")
    assert clips.skipped == 2 and len(clips) == 10 and clips.waves.shape[0] == 10
    assert str(train[0]) not in clips.keys and str(train[1]) not in clips.keys


def test_train_and_val_never_open_a_test_fold_file(esc50: Path) -> None:
    for path in (esc50 / "audio").glob("5-*.wav"):
        path.write_bytes(b"\x00garbage" * 50)
    cfg = config("esc50", esc50)
    assert len(load_split(cfg, "train")) == 12 and len(load_split(cfg, "val")) == 4
    with pytest.raises(DataError, match=r"cannot read audio file .*/audio/5-\d+-A-\d\.wav"):
        load_split(cfg, "test")
