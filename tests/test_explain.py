"""`sweep explain`: the page of what a trained model sees in one file, opened in headless Chromium offline.

The runs are real trainings of tiny models (one epoch on the synthetic dataset, the folder a trial leaves:
its checkpoint and its resolved config.yaml); the page is checked as the report is (tests/test_report.py's
browser): no JavaScript error with the network cut off, every figure drawn, a screenshot kept.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import TINY, sweep_cli
from plotly.offline import get_plotlyjs
from test_report import Chromium, _keep

from sweep.cli import main
from sweep.config.resolve import resolve
from sweep.config.yamlfile import dump_yaml
from sweep.models import build_model
from sweep.results.explain import TOP_CHANNELS, conv_blocks, explain
from sweep.results.predict import predict

EAT = {"name": "eat_s", "emb": 16, "nf": 4, "ff": 16, "layers": 1, "heads": 2, "ds_factors": [4, 4]}
VIT = {"name": "vit", "pretrained": False, "image_size": 32, "patch_size": 8, "hidden_size": 16, "layers": 1,
       "heads": 2}

# every figure: plotly laid it out, drew its SVG, and drew each of its traces (heatmap images, lines, bars)
FIGURES = """JSON.stringify(Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => ({
    id: d.id, traces: d.data.length, svg: d.querySelectorAll('.main-svg').length,
    drawn: d.querySelectorAll('.heatmaplayer image, .scatterlayer .trace, .barlayer .trace').length,
    title: d.closest('section').querySelector('h2').innerText})))"""


def _run(folder: Path, model: dict, n_mels: int = 32) -> tuple[Path, dict]:
    """A run folder as a trial leaves it: one epoch of training, its checkpoint and resolved config."""
    from sweep.run.trial import train_trial

    raw = copy.deepcopy(TINY)
    raw.update(model=model, search_space={})
    raw["train"]["epochs"] = 1
    raw["features"]["n_mels"] = n_mels
    config = resolve(raw, str(folder))
    train_trial(config, folder)
    (folder / "config.yaml").write_text(dump_yaml(config))
    return folder, config


def _clip(path: Path) -> Path:
    """Half a second of a 440 Hz tone in noise at the runs' 8 kHz."""
    t = np.arange(4000) / 8000
    rng = np.random.default_rng(0)
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 440 * t) + rng.normal(0, 0.02, t.size)).astype(np.float32), 8000)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    chromium = Chromium()
    try:
        yield chromium
    finally:
        chromium.close()


def _self_contained(page: Path) -> str:
    own = page.read_text().replace(get_plotlyjs(), "@plotly.js@")
    assert own.count("@plotly.js@") == 1
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", own) and "<link" not in own and "src=" not in own
    return own


def test_explain_a_conv_run_draws_every_block_offline(tmp_path: Path, browser: Chromium) -> None:
    run, config = _run(tmp_path / "run", {"name": "audio_cnn", "width": 4, "depth": 2})
    clip = _clip(tmp_path / "tone.wav")
    out = sweep_cli("explain", str(run), str(clip), "--top-k", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    page = run / "explain-tone.html"  # the default: beside the run's checkpoint
    assert page.is_file() and f"wrote {page} (6 figures" in out.stdout, out.stdout
    _self_contained(page)

    assert browser.open(page) == []
    figures = json.loads(browser.evaluate(FIGURES))
    model = build_model(config, 4, (1, 32, 32))
    names = [b.name for b in conv_blocks(model)]
    assert names == ["stem.0–2", "blocks.0", "blocks.1"]  # the stem with its norm and activation; each Block
    assert [f["title"] for f in figures] == [
        "Waveform", "Model input (logmel)", *(f"Block {i + 1}: {n}" for i, n in enumerate(names)), "Top 3 classes"]
    for fig in figures:
        assert fig["svg"] >= 1 and fig["traces"] >= 1 and fig["drawn"] == fig["traces"], fig
    widths = [4, 4, 8]  # stem and the first block keep the width, the second doubles it
    for fig, width in zip(figures[2:-1], widths):
        assert fig["traces"] == min(TOP_CHANNELS, width), fig  # the strongest channels, one map each

    expected = predict(run / "checkpoint.pt", [clip], 3)[0]  # the page says what `sweep predict` says
    rows = browser.evaluate("Array.from(document.querySelectorAll('#top-table tr')).map(r => r.innerText)")
    assert rows == [f"{name}\t{p:.2%}" for name, p in expected]
    assert f"{clip}: {expected[0][0]} {expected[0][1]:.1%}" in out.stdout

    shot = tmp_path / "explain-audio-cnn.png"
    browser.screenshot(shot)
    assert shot.stat().st_size > 30_000
    _keep(shot)


def test_explain_a_vit_shows_its_patch_view_and_says_so(
    tmp_path: Path, browser: Chromium, capsys: pytest.CaptureFixture
) -> None:
    run, _ = _run(tmp_path / "vit", VIT)
    page = tmp_path / "pages" / "vit.html"
    assert main(["explain", str(run / "checkpoint.pt"), str(_clip(tmp_path / "tone.wav")), "-o", str(page)]) == 0
    said = capsys.readouterr().out
    assert "vit has no convolutional blocks" in said and "patch view" in said and f"wrote {page}" in said
    assert "CLS attention" in said
    _self_contained(page)

    assert browser.open(page) == []
    figures = json.loads(browser.evaluate(FIGURES))
    assert [f["title"] for f in figures] == [
        "Waveform", "Model input (logmel)", "Patch view: encoder.embeddings.patch_embeddings.projection "
        "(patch embedding)", "Last layer's CLS attention over the patches", "Top 4 classes"]
    for fig in figures:
        assert fig["svg"] >= 1 and fig["drawn"] == fig["traces"] >= 1, fig
    notice = browser.evaluate("document.querySelector('.notice').innerText")
    assert "patch view" in notice and "CLS attention" in notice
    # the CLS token's weights over the 4×4 patches: a share of its attention, which sums to 1 with the CLS's own
    grid = browser.evaluate("JSON.stringify(Array.from(document.querySelector('#fig-attention').calcdata[0][0].z,"
                            " r => Array.from(r)))")
    weights = np.array(json.loads(grid))
    assert weights.shape == (4, 4) and (weights > 0).all() and weights.sum() < 1
    shot = tmp_path / "explain-vit.png"
    browser.screenshot(shot)
    _keep(shot)


def test_explain_a_waveform_run_draws_its_1d_maps_as_channels_over_time(tmp_path: Path, browser: Chromium) -> None:
    run, config = _run(tmp_path / "eat", EAT)
    page = explain(run, _clip(tmp_path / "tone.wav"))
    assert page.path == run / "explain-tone.html" and page.notes == []
    assert browser.open(page.path) == []
    figures = json.loads(browser.evaluate(FIGURES))
    assert [f["title"] for f in figures[:2]] == ["Waveform", "Model input (waveform)"]
    assert len(figures) == 2 + page.blocks + 1 and page.blocks == len(conv_blocks(build_model(config, 4, (4000,))))
    for fig in figures:
        assert fig["svg"] >= 1 and fig["drawn"] == fig["traces"] >= 1, fig
    rows = browser.evaluate("Array.from(document.querySelectorAll('[id^=fig-block-]')).map(d => d.data[0].y.length)")
    assert rows[0] == 4 and max(rows) == TOP_CHANNELS  # nf 4 channels first, then the strongest 8 of 8…64
    shot = tmp_path / "explain-eat.png"
    browser.screenshot(shot)
    _keep(shot)


def test_explain_an_ast_attends_over_its_patch_grid(tmp_path: Path) -> None:
    """AST's tokens start with two that are no patch (CLS, distillation): the grid is the patches' alone."""
    raw_model = {"name": "ast", "pretrained": False, "hidden_size": 16, "layers": 2, "heads": 2, "max_length": 64}
    run, _ = _run(tmp_path / "ast", raw_model, n_mels=16)
    page = explain(run, _clip(tmp_path / "tone.wav"), tmp_path / "ast.html", top_k=2)
    assert page.figures == ["waveform", "input", "patches-0", "attention", "top"] and len(page.top) == 2
    assert "ast has no convolutional blocks" in page.notes[0]
    text = page.path.read_text()
    assert "over the 1×5 patch grid" in text and "the last of the 2 encoder layers" in text  # 16 mels, 64 frames


def test_blocks_are_found_from_the_module_tree_of_every_family() -> None:
    """simple_cnn's conv, norm, activation and pooling are one block each; EAT's 1-D front end is blocks, its
    transformer none; a ViT's only convolution cuts patches: no block."""
    raw = copy.deepcopy(TINY)
    raw["model"] = {"name": "simple_cnn", "n_layers": 3, "channels": 2, "hidden": 4}
    simple = build_model(resolve(raw, "t"), 4, (1, 32, 32))
    assert [b.name for b in conv_blocks(simple)] == ["features.0–3", "features.4–7", "features.8–11"]
    raw["model"] = EAT
    eat = build_model(resolve(raw, "t"), 4, (4000,))
    names = [b.name for b in conv_blocks(eat)]
    assert names[0] == "frontend.0–2" and all(n.startswith("frontend.") for n in names) and len(names) == 13
    raw["model"] = VIT
    assert conv_blocks(build_model(resolve(raw, "t"), 4, (1, 32, 32))) == []
    raw["model"] = {"name": "resnet18", "pretrained": False}  # the stem (conv, norm, relu, max pool), each stage
    resnet = build_model(resolve(raw, "t"), 4, (1, 32, 32))
    assert [b.name for b in conv_blocks(resnet)] == ["body.0–3", "body.4", "body.5", "body.6", "body.7"]
    raw["model"] = {"name": "blocks"}  # each residual block with the pooling after it
    blocks = build_model(resolve(raw, "t"), 4, (1, 32, 32))
    assert [b.name for b in conv_blocks(blocks)] == ["body.0–1", "body.2–3", "body.4–6"]


def test_explain_a_resnet_run_writes_a_map_per_stage(tmp_path: Path) -> None:
    run, _ = _run(tmp_path / "run", {"name": "resnet18", "pretrained": False})
    out = sweep_cli("explain", str(run), str(_clip(tmp_path / "tone.wav")), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"wrote {run / 'explain-tone.html'} (8 figures" in out.stdout  # waveform, input, 5 blocks, top classes
    _self_contained(run / "explain-tone.html")


def test_bad_inputs_are_clear_errors_naming_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, _ = _run(tmp_path / "run", {"name": "audio_cnn", "width": 2, "depth": 1})
    clip = _clip(tmp_path / "tone.wav")
    (tmp_path / "notes.wav").write_text("this is not audio\n")
    (tmp_path / "empty").mkdir()

    def refused(*args: str) -> str:
        assert main(["explain", *args]) == 2
        return capsys.readouterr().err

    assert f"no checkpoint at {tmp_path / 'nowhere'}" in refused(str(tmp_path / "nowhere"), str(clip))
    assert f"no checkpoint at {tmp_path / 'empty' / 'checkpoint.pt'}" in refused(str(tmp_path / "empty"), str(clip))
    assert f"{clip}: no config.yaml beside it" in refused(str(clip), str(clip))
    err = refused(str(run), str(tmp_path / "missing.wav"))
    assert err.startswith(f"sweep: error: cannot read audio file {tmp_path / 'missing.wav'}: no such file"), err
    err = refused(str(run), str(tmp_path / "notes.wav"))
    assert f"cannot read audio file {tmp_path / 'notes.wav'}" in err and "(sweep reads audio files" in err
    assert "--top-k must be at least 1, got 0" in refused(str(run), str(clip), "--top-k", "0")
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert f"cannot write the page to {blocked / 'page.html'}" in refused(str(run), str(clip), "-o",
                                                                           str(blocked / "page.html"))
    assert not list(run.glob("*.html"))  # nothing written by a refused command
