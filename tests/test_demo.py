"""The demo runs offline on the embedded model, shows Paris, and writes its HTML report."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uniterp import demo

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_uniterp_demo_writes_the_report(tmp_path: Path) -> None:
    pytest.importorskip("plotly")
    report = tmp_path / "out" / "report.html"
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "uniterp", "demo", "--html", str(report)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Logit lens" in out and "Patchscope" in out and "Steering" in out
    assert "model.check(): PASSED" in out
    assert "' Paris'" in out
    assert elapsed < 60, f"the demo took {elapsed:.0f}s"
    text = report.read_text(encoding="utf-8")
    assert text.count("plotly") > 1 and "Logit lens" in text and "Steering" in text
    assert "Traceback" not in result.stderr
    # the report explains what the terminal explains, and carries the terminal's lines
    import html

    page = html.unescape(text)
    for note in (demo.LENS_NOTE, demo.SCOPE_NOTE, demo.STEER_NOTE, demo.CHECK_NOTE, demo.TREE_NOTE):
        assert note in page
    for line in out.splitlines():
        if line.startswith(("  layer ", "P(' Paris'", "  steered at layer", "  The answer is read")):
            assert line.strip() in page, line
    # the steering chart says where it steered: the layer and the token
    assert "steered at layer" in page and "token ' Japan' (position" in page


def test_python_m_uniterp_demo_without_html(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--no-html"]) == 0
    out = capsys.readouterr().out
    assert "P(' Paris'" in out
    top1 = [line.split(":", 1)[1].split("'")[1] for line in out.splitlines() if line.startswith("  layer ")]
    n_layers = len(top1) // len(demo.LENS_PROMPTS)
    assert top1[n_layers - 1] == " Paris"  # the last layer's top token for the first prompt
    assert top1[0] != " Paris"  # ... but not the first layer's
    assert "HTML report" not in out


def test_steering_figure_names_layer_and_token() -> None:
    pytest.importorskip("plotly")
    import torch

    from uniterp.testing import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    probs = torch.rand(3, len(tok)).softmax(-1)
    steering = demo._Steering(2, 4, 3, " Japan", probs[0], probs[1], probs[2])
    fig = demo.steering_figure(tok, steering)
    names = [bar.name for bar in fig.data]
    assert names == [
        "unsteered",
        "steered at layer 2, token ' Japan' (position 3)",
        "steered at layer 4, token ' Japan' (position 3)",
    ]
    assert "' Japan'" in fig.layout.title.text and "layer 2 or 4" in fig.layout.title.text
    top = (probs[0] + probs[1] + probs[2]).topk(6).indices.tolist()
    for bar, row in zip(fig.data, probs):
        assert list(bar.y) == pytest.approx([float(row[i]) for i in top])


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    """A real browser draws the report (skipped where no Chromium is installed)."""
    pytest.importorskip("plotly")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "screenshot_report", Path(__file__).resolve().parents[1] / "scripts" / "screenshot_report.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    if script.find_chromium() is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    import torch

    from uniterp.display import plot_topk_tokens
    from uniterp.testing import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    probs = torch.rand(3, 6, len(tok)).softmax(-1)
    page = tmp_path / "report.html"
    demo.write_report(
        page,
        "report",
        [("Top tokens", plot_topk_tokens(probs, tok, k=5, prompts=["a", "b", "c"]), "A note.")],
    )
    png = script.screenshot(page, tmp_path / "shot.png", width=900, height=1400)
    assert _png_size(png) == (900, 1400)
    assert png.stat().st_size > 20_000  # a drawn page, not a blank one
