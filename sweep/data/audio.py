"""What every dataset on disk shares: its config keys, its metadata CSVs, the class subset and the audio reader.

Real collections mix formats (UrbanSound8K alone has 8-bit, 24-bit, float, stereo, 22.05 to 96 kHz files),
so one reader turns any file soundfile decodes into mono float32 at the study's rate. A broken file stops
the load with its path (or, asked to, is left out with a warning), so a bad download is found at once
rather than as a silently smaller dataset.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import os
import stat
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import torchaudio.functional

from sweep.config.typed import typed
from sweep.config.yamlfile import read_utf8
from sweep.data.registry import DataError, Index, Item
from sweep.progress import Progress
from sweep.schema import ConfigError, Field

FILE_PARAMS: dict[str, Field] = {
    "classes": Field(list, None, item=str, nullable=True),
    "on_bad_file": Field(str, "error", choices=("error", "skip")),
    "max_seconds": Field(float, None, low=0.05, nullable=True),
}

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")

_CHUNK = 64  # files decoded at a time: bounds the audio waiting to be resampled
_BATCH_SAMPLES = 1 << 24  # padded samples resampled in one call (64 MB of float32)
_SHOWN = 3  # bad paths named in a skip warning


# ---- metadata ----------------------------------------------------------------------------------------


def read_csv(
    path: Path, columns: Sequence[str], *, optional: Sequence[str] = (), hint: str = ""
) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a metadata CSV whose header must hold `columns`.

    The line numbers let a bad value be reported where the person would look for it.
    """
    if not path.is_file():
        raise DataError(f"metadata file {path} does not exist{'; ' + hint if hint else ''}")
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    header = [h.strip() for h in reader.fieldnames or []]
    reader.fieldnames = header
    missing = [c for c in columns if c not in header]
    if missing:
        expected = ", ".join([*columns, *(f"{c} (optional)" for c in optional)])
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; expected the columns {expected} "
            f"(its header has: {', '.join(header) or 'nothing'})"
        )
    return [(reader.line_num, row) for row in reader]


def read_text(path: Path) -> str:
    """A metadata file as UTF-8 text, or DataError naming the file and the offset of its first bad byte."""
    try:
        return read_utf8(path)
    except ConfigError as exc:
        raise DataError(str(exc)) from None


def value(path: Path, line: int, row: Mapping[str, str | None], column: str, kind: type = str) -> Any:
    """One cell as `kind` (str, int or bool), or DataError naming the file, line, column and value."""
    raw = row.get(column)
    text = (raw or "").strip()
    if not text:
        raise DataError(f"{path}, line {line}: column {column} is empty")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise DataError(f"{path}, line {line}: column {column} must be an integer, got {raw!r}") from None
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise DataError(f"{path}, line {line}: column {column} must be True or False, got {raw!r}")
        return text.lower() == "true"
    return text


def visible(name: str, folder: bool = True) -> bool:
    """Not hidden: skips `.DS_Store`, macOS `._x.wav` sidecars and (folders) `_background_noise_`-style ones."""
    return not name.startswith((".", "_") if folder else ".")


# ---- the class subset --------------------------------------------------------------------------------


def csv_index(
    config: Mapping[str, Any],
    path: Path,
    rows: Sequence[tuple[int, Mapping[str, str]]],
    *,
    label: str,
    name: str,
    group: str,
    file: Callable[[int, Mapping[str, str]], str],
    keep: Callable[[int, Mapping[str, str]], bool] = lambda line, row: True,
) -> Index:
    """The items of a metadata CSV that numbers classes in one column and names them in another.

    Classes are numbered by that column (ESC-50 `target`, UrbanSound8K `classID`), so labels match the
    dataset's own; a number that comes with two names is an error in the file.
    """
    names: dict[int, str] = {}
    entries = []
    for line, row in rows:
        number, text = value(path, line, row, label, int), value(path, line, row, name)
        if names.setdefault(number, text) != text:
            raise DataError(f"{path}, line {line}: {label} {number} is {text!r}, but {names[number]!r} above")
        if keep(line, row):
            fold = value(path, line, row, "fold", int)
            entries.append((file(line, row), number, fold, value(path, line, row, group)))
    numbers = sorted({number for _, number, _, _ in entries})
    labels = {number: i for i, number in enumerate(numbers)}
    items = [Item(key, labels[number], fold, src) for key, number, fold, src in entries]
    return select_classes(config, [names[n] for n in numbers], items)


def select_classes(config: Mapping[str, Any], classes: Sequence[str], items: Sequence[Item]) -> Index:
    """Apply `data.classes`: keep those classes only, labelled 0.. in the order the config lists them."""
    cfg = typed(config)
    data = cfg.data
    wanted = data.get("classes")
    if wanted is None:
        return Index(list(classes), list(items))
    name = data.dataset
    if not wanted:
        raise DataError(f"data.classes is an empty list; use null for all classes of dataset {name}")
    doubled = sorted({c for c in wanted if wanted.count(c) > 1})
    if doubled:
        raise DataError(f"data.classes lists {', '.join(doubled)} more than once")
    unknown = [c for c in wanted if c not in classes]
    if unknown:
        close = difflib.get_close_matches(unknown[0], classes, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(
            f"data.classes: dataset {name} has no class {', '.join(map(repr, unknown))}{hint}; "
            f"its classes are: {', '.join(classes)}"
        )
    relabel = {classes.index(c): new for new, c in enumerate(wanted)}
    return Index(list(wanted), [replace(it, label=relabel[it.label]) for it in items if it.label in relabel])


# ---- audio -------------------------------------------------------------------------------------------


_UNREADABLE = (RuntimeError, OSError, ValueError, EOFError, TypeError)  # what soundfile raises on a broken file
_NO_AUDIO = "it holds no audio (0 frames)"


def _why(exc: BaseException, path: str) -> str:
    return str(exc).replace(f"'{path}'", "it").strip() or type(exc).__name__


# what `read_audio` decodes: a file's path, or an encoded file's bytes (a Hugging Face Audio column's)
Source = str | bytes


def _decode(source: Source) -> tuple[np.ndarray | None, int, str]:
    """(mono float32 samples, sample rate, "") or (None, 0, why it cannot be read)."""
    if isinstance(source, str) and not os.path.isfile(source):
        return None, 0, "no such file"
    opened = source if isinstance(source, str) else io.BytesIO(source)
    try:
        audio, rate = soundfile.read(opened, dtype="float32", always_2d=True)
    except _UNREADABLE as exc:
        return None, 0, _why(exc, source) if isinstance(source, str) else str(exc).replace(repr(opened), "it")
    if audio.shape[0] == 0:
        return None, 0, _NO_AUDIO
    mono = audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono), int(rate), ""


def file_problem(path: str, header: bool = True) -> str:
    """Why the file cannot be used ("" if it can): missing, empty, or, with `header`, a header soundfile cannot
    parse or one that declares no frames. Never reads a sample: a launch checks every file it will decode this
    way before it stores anything, and a test-fold file (header=False) is not even opened."""
    try:
        st = os.stat(path)
    except OSError:
        return "no such file"
    if not stat.S_ISREG(st.st_mode):
        return "not a file"
    if st.st_size == 0:
        return "it is empty (0 bytes)"
    if not header:
        return ""
    try:
        with soundfile.SoundFile(path) as f:
            frames = f.frames
    except _UNREADABLE as exc:
        return _why(exc, path)
    return "" if frames > 0 else _NO_AUDIO


def bad_files(paths: Sequence[str], header: bool = True) -> list[tuple[str, str]]:
    """(path, why) for each file of `paths` that `file_problem` finds unusable, in the order given.

    Threads, because on a network file system each header is a round trip or two that need not wait in line.
    """
    with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
        found = pool.map(lambda p: file_problem(p, header), paths)
        return [(path, why) for path, why in zip(paths, found) if why]


def _resample(batch: Sequence[np.ndarray], rate: int, target: int) -> list[torch.Tensor]:
    """Resample clips of one source rate in one call, so the sinc kernel is built once for all of them.

    Zero padding to the longest clip changes nothing: the resampler pads each signal with zeros anyway,
    and each output is cut back to the length resampling that clip alone gives.
    """
    longest = max(len(a) for a in batch)
    padded = torch.zeros(len(batch), longest)
    for row, audio in enumerate(batch):
        padded[row, : len(audio)] = torch.from_numpy(audio)
    out = torchaudio.functional.resample(padded, rate, target)
    g = math.gcd(rate, target)
    lengths = [-(-(target // g) * len(a) // (rate // g)) for a in batch]
    return [out[row, :n].clone() for row, n in enumerate(lengths)]


class UnreadableAudio(DataError):
    """An audio file that cannot be decoded, with its path and why, so that a command without a dataset
    (`sweep predict`) can say it in its own terms instead of naming `data.on_bad_file`."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(
            f"cannot read audio file {path}: {reason} (set data.on_bad_file: skip to leave unreadable files out)"
        )


def read_files(config: Mapping[str, Any], items: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Decode the files the items name (their keys are paths): mono, at `data.sample_rate`, zero-padded.

    Only these files are opened, which is what keeps a search from ever touching a test-fold file.
    """
    paths = [str(it.key) for it in items]
    return read_audio(config, paths, lambda start, stop: paths[start:stop])


def read_audio(
    config: Mapping[str, Any], names: Sequence[str], fetch: Callable[[int, int], Sequence[Source]]
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Decode clips `names` (how errors call them): `fetch(start, stop)` gives those clips' sources, a chunk
    at a time, so a dataset whose audio is bytes in a table never holds more than a chunk of them at once.

    The waveforms come out as `read_files` says: mono, at `data.sample_rate`, zero-padded, `kept` indices.
    """
    cfg = typed(config)
    data = cfg.data
    target = int(data.sample_rate)
    skip = data.get("on_bad_file", "error") == "skip"
    max_seconds = data.get("max_seconds")
    limit = None if max_seconds is None else max(1, round(max_seconds * target))
    clips: list[torch.Tensor | None] = [None] * len(names)
    bad: list[tuple[str, str]] = []
    pending: dict[int, list[tuple[int, np.ndarray]]] = {}

    def flush(rate: int) -> None:
        group = pending.pop(rate, [])
        if group:
            for (i, _), wave in zip(group, _resample([a for _, a in group], rate, target)):
                clips[i] = _centre(wave, limit)

    progress = Progress(f"decoding {data['dataset']}", len(names))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(names), _CHUNK):
            chunk = names[start : start + _CHUNK]
            progress.update(len(chunk))
            decoded = pool.map(_decode, fetch(start, start + len(chunk)))
            for i, (path, (audio, rate, reason)) in enumerate(zip(chunk, decoded), start):
                if audio is None:
                    if not skip:
                        raise UnreadableAudio(path, reason)
                    bad.append((path, reason))
                elif rate == target:
                    clips[i] = _centre(torch.from_numpy(audio), limit)
                else:
                    group = pending.setdefault(rate, [])
                    group.append((i, audio))
                    if len(group) * max(len(a) for _, a in group) >= _BATCH_SAMPLES:
                        flush(rate)
        for rate in list(pending):
            flush(rate)
    progress.close()

    kept = [i for i, clip in enumerate(clips) if clip is not None]
    if bad:
        shown = "; ".join(f"{p}: {r}" for p, r in bad[:_SHOWN])
        more = f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        if not kept:
            raise DataError(f"none of the {len(names)} audio files could be read: {shown}{more}")
        warnings.warn(
            f"skipped {len(bad)} of {len(names)} audio files that could not be read "
            f"(data.on_bad_file: skip): {shown}{more}",
            stacklevel=2,
        )
    lengths = torch.tensor([len(clips[i]) for i in kept], dtype=torch.long)
    width = max(int(lengths.max()) if kept else 0, round(data.clip_seconds * target))
    waves = torch.zeros(len(kept), width)
    for row, i in enumerate(kept):
        waves[row, : lengths[row]] = clips[i]
    return waves, lengths, kept


def _centre(wave: torch.Tensor, limit: int | None) -> torch.Tensor:
    """The middle `limit` samples: where a longer recording's event most likely is, at every load alike."""
    if limit is None or len(wave) <= limit:
        return wave
    start = (len(wave) - limit) // 2
    return wave[start : start + limit].clone()
