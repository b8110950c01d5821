"""The ``uniterp`` command: exit codes, output and files, through subprocesses like a user.

Wrong arguments are also checked in-process (fast): exit status 2, one short
message, never a traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from uniterp import StandardizedTransformer
from uniterp.cli import main
from uniterp.tiny import resolve_model_name

TINY = "uniterp-tiny"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def uniterp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m uniterp ARGS`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "uniterp", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=300,
    )


def console_script() -> str:
    script = Path(sys.executable).with_name("uniterp")
    if not script.exists():
        pytest.skip("the uniterp console script is not installed next to this Python (pip install -e .)")
    return str(script)


def test_help_through_the_console_script() -> None:
    result = subprocess.run(
        [console_script(), "--help"], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert result.returncode == 0
    for command in ("demo", "lens", "patchscope", "check", "collect", "support"):
        assert command in result.stdout


def test_no_command_is_a_usage_error() -> None:
    result = uniterp()
    assert result.returncode == 2
    assert "choose a command" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_model_folder_exits_2_without_traceback(tmp_path: Path) -> None:
    result = uniterp("lens", str(tmp_path / "no-such-model"), "Hello")
    assert result.returncode == 2
    assert "no model folder" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_layer_out_of_range_exits_2_without_traceback() -> None:
    result = uniterp("lens", TINY, "The capital of France is", "--layers", "99")
    assert result.returncode == 2
    assert "99" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["frobnicate"], "invalid choice"),
        (["lens", TINY], "required"),
        (["lens", TINY, "Hi", "--top-k", "0"], "positive integer"),
        (["lens", TINY, "Hi", "--layers", "two"], "invalid layer"),
        (["lens", TINY, "Hi", "--bogus"], "unrecognized arguments"),
        (["collect", TINY, "prompts.txt"], "--out"),
        (["check", TINY, "--dtype", "float8"], "invalid choice"),
    ],
)
def test_wrong_arguments_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_model_path_that_is_a_file_or_not_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    some_file = tmp_path / "weights.bin"
    some_file.write_text("x")
    assert main(["check", str(some_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["check", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_missing_prompts_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["collect", TINY, str(tmp_path / "none.txt"), "--out", str(tmp_path / "a.safetensors")]) == 2
    assert "no prompts file" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["collect", TINY, str(empty), "--out", str(tmp_path / "a.safetensors")]) == 2
    assert "holds no prompts" in capsys.readouterr().err


def test_lens_prints_paris_and_writes_html(tmp_path: Path) -> None:
    html = tmp_path / "lens.html"
    result = uniterp("lens", TINY, "The capital of France is", "--top-k", "3", "--html", str(html))
    assert result.returncode == 0, result.stderr
    rows = [re.match(r"\s*(\d+)\s+('[^']*')", line) for line in result.stdout.splitlines()]
    top1 = [row.group(2) for row in rows if row]  # each layer's top token, first to last
    assert top1[-1] == "' Paris'" and top1[0] != "' Paris'"
    assert html.is_file() and "plotly" in html.read_text(encoding="utf-8")


def test_patchscope_recovers_the_subject() -> None:
    result = uniterp("patchscope", TINY, "The capital of France", "--layers", "0", "1", "--top-k", "2")
    assert result.returncode == 0, result.stderr
    assert "' France'" in result.stdout
    assert "king king" in result.stdout  # the default identity target is shown


def test_check_passes_on_the_embedded_model() -> None:
    result = uniterp("check", TINY)
    assert result.returncode == 0, result.stderr
    assert "PASSED" in result.stdout
    assert "load-time validation passed on all" in result.stdout


def test_check_failure_exits_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from uniterp import CheckItem, CheckResult

    def failing(self: StandardizedTransformer, prompts: object = None) -> CheckResult:
        return CheckResult(self.model_type, [CheckItem("logits == HF forward", "failed", "max |diff| 1.0")])

    monkeypatch.setattr(StandardizedTransformer, "check", failing)
    assert main(["check", TINY]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_collect_writes_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France\n\nIn Japan\nKenya is located in\n", encoding="utf-8")
    out = tmp_path / "acts.safetensors"
    result = uniterp(
        "collect", TINY, str(prompts), "--layers", "1", "-1", "--out", str(out), "--batch-size", "2"
    )
    assert result.returncode == 0, result.stderr
    assert "activations" in result.stderr  # the progress bar
    with safe_open(str(out), framework="pt") as handle:
        acts = handle.get_tensor("activations")
        metadata = handle.metadata()
    assert tuple(acts.shape) == (2, 3, 128)
    n_layers = StandardizedTransformer(resolve_model_name(TINY)).num_layers
    assert metadata["layers"] == f"[1, {n_layers - 1}]" and metadata["n_prompts"] == "3"


def test_support_prints_the_report() -> None:
    if not hasattr(StandardizedTransformer, "support"):
        pytest.skip(
            "StandardizedTransformer.support() is not in the core yet; `uniterp support` exits 1 until then"
        )
    result = uniterp("support", TINY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_version() -> None:
    assert uniterp("--version").stdout.startswith("uniterp ")
