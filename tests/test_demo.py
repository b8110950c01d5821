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


def test_python_m_uniterp_demo_without_html(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--no-html"]) == 0
    out = capsys.readouterr().out
    assert "P(' Paris'" in out
    top1 = [line.split(":", 1)[1].split("'")[1] for line in out.splitlines() if line.startswith("  layer ")]
    n_layers = len(top1) // len(demo.LENS_PROMPTS)
    assert top1[n_layers - 1] == " Paris"  # the last layer's top token for the first prompt
    assert top1[0] != " Paris"  # ... but not the first layer's
    assert "HTML report" not in out
