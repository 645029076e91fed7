"""Small synthetic datasets written in each real dataset's official layout.

The loaders are tested, and the demo runs, on files laid out exactly as the downloads are, without the
downloads. Every clip comes from `synthetic.generate` (deterministic), so a test can recompute what any
file holds: row i of a writer's metadata (or clip k of class c) is clip c * clips_per_class + k of
`generate(...)` at the file's own sample rate, as each writer's docstring spells out.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from sweep.data.synthetic import CLASSES, generate

URBANSOUND8K_CLASSES = (
    "air_conditioner",
    "car_horn",
    "children_playing",
    "dog_bark",
    "drilling",
    "engine_idling",
    "gun_shot",
    "jackhammer",
    "siren",
    "street_music",
)

SPEECH_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


@dataclass(frozen=True)
class Format:
    """How one file is stored. Real collections mix these, and a reader must take them all."""

    subtype: str = "PCM_16"  # a soundfile subtype: PCM_U8, PCM_16, PCM_24, PCM_32, FLOAT, DOUBLE
    channels: int = 1
    sample_rate: int | None = None  # None: the writer's sample_rate
    seconds: float | None = None  # None: the writer's seconds; fewer: a clip shorter than the rest

    def rate(self, default: int) -> int:
        return self.sample_rate or default


# what UrbanSound8K really holds besides 16-bit mono: 8-bit unsigned, 24-bit, float, stereo, other rates,
# and clips far shorter than the 4 s most of them last
MIXED = (
    Format(),
    Format("PCM_U8", sample_rate=22050),
    Format("PCM_24", sample_rate=48000),
    Format("FLOAT", channels=2, sample_rate=44100),
    Format("PCM_16", channels=2, seconds=0.1),
)


def stored(fmt: Format, wave: np.ndarray, rate: int) -> np.ndarray:
    """The float samples [frames, channels] a file of `fmt` holds before quantisation.

    A too-short file keeps the clip's first `fmt.seconds`; a stereo file has the clip on the left and
    half of it on the right, so its mono mix is 0.75 times the clip.
    """
    if fmt.seconds is not None:
        wave = wave[: max(1, round(fmt.seconds * rate))]
    columns = [wave] + [wave * 0.5] * (fmt.channels - 1)
    return np.stack(columns, axis=1).astype(np.float32)


def _write(path: Path, fmt: Format, wave: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = fmt.subtype if path.suffix.lower() == ".wav" else None  # flac/ogg: their own default
    soundfile.write(path, stored(fmt, wave, rate), rate, subtype=subtype)


def write_esc50(
    root: str | Path,
    *,
    n_classes: int = 10,
    clips_per_class: int = 40,
    sample_rate: int = 44100,
    clip_seconds: float = 5.0,
    seed: int = 0,
    takes: int = 1,
) -> Path:
    """ESC-50's layout: meta/esc50.csv and audio/FOLD-SRC-TAKE-TARGET.wav, 5 folds, 16-bit mono.

    Row i is clip i of `generate`. `takes` consecutive clips of a class come from one source recording
    (one `src_file`, takes A, B, ...) and share its fold, as in ESC-50, whose groups must not be split.
    """
    root = Path(root)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    waves, labels, _ = generate(n_classes, clips_per_class, 5, sample_rate, clip_seconds, seed)
    rows = []
    for i, (wave, label) in enumerate(zip(waves, labels)):
        k = i % clips_per_class
        src, take, fold = 100000 + label * clips_per_class + k // takes, chr(ord("A") + k % takes), k // takes % 5 + 1
        name = f"{fold}-{src}-{take}-{label}.wav"
        soundfile.write(root / "audio" / name, wave, sample_rate, subtype="PCM_16")
        rows.append([name, fold, int(label), CLASSES[label], label % 2 == 0, src, take])
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows(rows)
    return root


def write_urbansound8k(
    root: str | Path,
    *,
    n_classes: int = 3,
    clips_per_class: int = 10,
    slices_per_source: int = 1,
    sample_rate: int = 44100,
    seconds: float = 0.25,
    seed: int = 0,
    formats: Sequence[Format] = MIXED,
) -> Path:
    """UrbanSound8K's layout: metadata/UrbanSound8K.csv and audio/fold{K}/FSID-CLASS-0-SLICE.wav, 10 folds.

    Row i (class c, clip k) holds `stored(fmt, generate(n_classes, clips_per_class, 10, rate, seconds,
    seed)[0][i], rate)` with fmt = formats[i % len(formats)] and rate its sample rate. Each
    `slices_per_source` consecutive clips of a class are slices of one recording (one fsID, one fold).
    """
    root = Path(root)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_classes * clips_per_class):
        c, k = divmod(i, clips_per_class)
        fmt = formats[i % len(formats)]
        rate = fmt.rate(sample_rate)
        wave = generate(n_classes, clips_per_class, 10, rate, seconds, seed)[0][i]
        source, piece = divmod(k, slices_per_source)
        fs_id, fold = 100000 + c * clips_per_class + source, source % 10 + 1
        name = f"{fs_id}-{c}-0-{piece}.wav"
        _write(root / "audio" / f"fold{fold}" / name, fmt, wave, rate)
        start = piece * seconds
        rows.append([name, fs_id, start, start + seconds, 1, fold, c, URBANSOUND8K_CLASSES[c]])
    with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
        writer.writerows(rows)
    return root


def speaker_id(seed: int, j: int) -> str:
    return hashlib.sha1(f"{seed}:{j}".encode()).hexdigest()[:8]


def write_speechcommands(
    root: str | Path,
    *,
    words: Sequence[str] = SPEECH_WORDS[:3],
    speakers: int = 5,
    takes: int = 1,
    sample_rate: int = 16000,
    seconds: float = 0.25,
    seed: int = 0,
    noise_seconds: float = 3.0,
) -> Path:
    """Speech Commands' layout: WORD/SPEAKER_nohash_N.wav, the two list files and _background_noise_/.

    Word w, speaker j, take n holds clip (w * speakers + j) * takes + n of `generate` (16-bit mono).
    Speaker j is in the validation list when j % 5 == 3, the testing list when j % 5 == 4, else training.
    """
    root = Path(root)
    per_word = speakers * takes
    waves = generate(len(words), per_word, 5, sample_rate, seconds, seed)[0]
    lists: dict[str, list[str]] = {"validation_list.txt": [], "testing_list.txt": []}
    for w, word in enumerate(words):
        (root / word).mkdir(parents=True, exist_ok=True)
        for j in range(speakers):
            for n in range(takes):
                name = f"{speaker_id(seed, j)}_nohash_{n}.wav"
                soundfile.write(root / word / name, waves[w * per_word + j * takes + n], sample_rate, subtype="PCM_16")
                if j % 5 == 3:
                    lists["validation_list.txt"].append(f"{word}/{name}")
                elif j % 5 == 4:
                    lists["testing_list.txt"].append(f"{word}/{name}")
    for name, lines in lists.items():
        (root / name).write_text("".join(f"{line}\n" for line in sorted(lines)))
    noise_dir = root / "_background_noise_"
    noise_dir.mkdir(exist_ok=True)
    noise = np.random.default_rng([seed, 999]).uniform(-0.3, 0.3, round(noise_seconds * sample_rate))
    soundfile.write(noise_dir / "white_noise.wav", noise.astype(np.float32), sample_rate, subtype="PCM_16")
    (noise_dir / "README.md").write_text("Long background noise recordings, to mix into the clips.\n")
    (root / "README.md").write_text("Speech Commands (synthetic stand-in).\n")
    return root


def write_folder(
    root: str | Path,
    *,
    classes: Sequence[str] = ("bird", "cat", "dog"),
    clips_per_class: int = 5,
    sample_rate: int = 16000,
    seconds: float = 0.25,
    seed: int = 0,
    extensions: Sequence[str] = (".wav",),
    csv_name: str | None = None,
    with_folds: bool = False,
) -> Path:
    """A `folder` dataset: CLASS/CLASS_K.EXT (odd K one level deeper, in CLASS/more/), or with `csv_name`
    files clips/CLASS_K.EXT listed in a CSV `path,label` (and `fold` = K % 5 + 1 with `with_folds`).

    Clip k of class c holds clip c * clips_per_class + k of `generate`; extension k % len(extensions).
    """
    root = Path(root)
    waves = generate(len(classes), clips_per_class, 5, sample_rate, seconds, seed)[0]
    rows = []
    for c, name in enumerate(classes):
        for k in range(clips_per_class):
            file_name = f"{name}_{k}{extensions[k % len(extensions)]}"
            if csv_name is None:
                relative = f"{name}/more/{file_name}" if k % 2 else f"{name}/{file_name}"
            else:
                relative = f"clips/{file_name}"
                rows.append([relative, name, *([k % 5 + 1] if with_folds else [])])
            _write(root / relative, Format(), waves[c * clips_per_class + k], sample_rate)
    if csv_name is not None:
        with open(root / csv_name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", *(["fold"] if with_folds else [])])
            writer.writerows(rows)
    return root


def urbansound8k_hf(root: str | Path, *, class_label: bool = True, **kwargs: Any) -> Any:
    """UrbanSound8K as a Hugging Face `datasets.Dataset` (one `train` split), as the Hub copies hold it:
    the metadata columns plus `audio` (each file's encoded bytes and name), from `write_urbansound8k(root,
    **kwargs)`, so row i holds the file row i of its CSV names. With `class_label`, `classID` is a ClassLabel
    of the class names; else the plain integers the Hub copies have.
    """
    import datasets

    root = write_urbansound8k(root, **kwargs)
    with open(root / "metadata" / "UrbanSound8K.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    n_classes = len({r["classID"] for r in rows})
    names = list(URBANSOUND8K_CLASSES[:n_classes])
    label = datasets.ClassLabel(names=names) if class_label else datasets.Value("int64")
    features = datasets.Features(
        {
            "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
            "slice_file_name": datasets.Value("string"),
            "fsID": datasets.Value("int64"),
            "start": datasets.Value("float64"),
            "end": datasets.Value("float64"),
            "salience": datasets.Value("int64"),
            "fold": datasets.Value("int64"),
            "classID": label,
            "class": datasets.Value("string"),
        }
    )
    files = [root / "audio" / f"fold{r['fold']}" / r["slice_file_name"] for r in rows]
    audio = [{"bytes": path.read_bytes(), "path": path.name} for path in files]
    columns = {k: [r[k] for r in rows] for k in features if k != "audio"}
    for k in ("fsID", "salience", "fold", "classID"):
        columns[k] = [int(v) for v in columns[k]]
    for k in ("start", "end"):
        columns[k] = [float(v) for v in columns[k]]
    # built with the Audio column as its storage struct, then cast: encoding through Audio needs torchcodec
    built = datasets.Dataset.from_dict({"audio": audio, **columns}, features=features)
    return built.cast_column("audio", datasets.Audio())


def write_hf_cache(splits: Any, cache_dir: str | Path, hf_id: str, workdir: str | Path) -> Path:
    """Put `splits` (a DatasetDict) into a Hugging Face datasets cache as `load_dataset(hf_id)` on a login
    node leaves it: CACHE/NAMESPACE___NAME/default/0.0.0/HASH/ with dataset_info.json and NAME-SPLIT.arrow.

    It is prepared by `load_dataset` itself from parquet files in a local folder named NAME (under `workdir`),
    which gives the same builder, config and file names as the Hub's parquet copy; only the top folder is
    then renamed to the Hub's NAMESPACE___NAME.
    """
    import datasets

    namespace, name = hf_id.split("/")
    folder = Path(workdir) / name
    for split, ds in splits.items():
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    datasets.load_dataset(str(folder), cache_dir=str(cache_dir))
    snake = datasets.naming.camelcase_to_snakecase(name)  # how datasets spells a name on disk: urbansound8_k
    target = Path(cache_dir) / f"{namespace}___{snake}"
    os.rename(Path(cache_dir) / snake, target)
    return target
