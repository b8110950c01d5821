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
from uniterp._version import __version__ as _VERSION
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


# -- issue 9: instant help, arguments checked before loading, -v anywhere, files, wording ----


HEAVY = ("torch", "transformers", "nnsight")


def test_import_cli_does_not_import_torch_transformers_or_nnsight() -> None:
    code = (
        "import sys\n"
        "import uniterp, uniterp.cli\n"
        "print(uniterp.__version__)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert result.returncode == 0, result.stderr
    version, heavy = result.stdout.splitlines()
    assert version == _VERSION and heavy == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["lens", "--help"],
        ["lens", TINY, "   "],  # an argument error: as fast as help
        ["collect", TINY, "prompts.txt", "--out", "acts.pt"],
    ],
)
def test_help_and_argument_errors_need_no_heavy_import(argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from uniterp.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as exit:\n"
        "    code = exit.code\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules), code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120
    )
    last = result.stdout.strip().splitlines()[-1]
    assert last in ("HEAVY= 0", "HEAVY= 2"), result.stdout + result.stderr


def test_uniterp_help_exits_0_quickly() -> None:
    import time

    start = time.perf_counter()
    result = uniterp("--help")
    elapsed = time.perf_counter() - start
    assert result.returncode == 0 and "usage: uniterp" in result.stdout
    # the goal is well under 0.3 s; a busy test machine gets a generous margin
    assert elapsed < 3.0, f"uniterp --help took {elapsed:.2f}s"


@pytest.mark.parametrize("command", ["demo", "lens", "patchscope", "check", "collect", "support"])
def test_subcommand_help_has_a_description_and_defaults(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    summary = out.split("\n\n")[1]  # the paragraph after the usage lines
    assert len(summary.split()) >= 10, out  # a description, not just the usage
    assert "-v, --verbose" in out and "--debug" in out
    if command in ("lens", "patchscope"):
        assert "(default: 5)" in out and "(default: all)" in out
    if command == "collect":
        assert "(default: 32)" in out and "(default: -1)" in out
    if command in ("check", "support"):
        assert "--attention-probs" in out


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argument errors must come before any model is loaded or the demo runs."""
    import uniterp._cli_commands as commands
    import uniterp.demo as demo

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(commands, "_load_model", refuse)
    monkeypatch.setattr(demo, "run_demo", refuse)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["lens", TINY, ""], "empty or only whitespace"),
        (["lens", TINY, " \t\n "], "empty or only whitespace"),
        (["patchscope", TINY, "  "], "empty or only whitespace"),
        (["patchscope", TINY, "France", "--target", " "], "empty or only whitespace"),
        (["lens", TINY, "Hi", "--top-k", "99999"], "at most 100"),
        (["patchscope", TINY, "Hi", "--top-k", "101"], "at most 100"),
        (["collect", TINY, "p.txt", "--out", "x.pt"], "x.safetensors"),
        (["collect", TINY, "p.txt", "--out", "acts"], "safetensors format only"),
    ],
)
def test_bad_arguments_fail_at_parse_time(argv, message: str, no_model_load, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_unwritable_outputs_fail_before_loading(tmp_path: Path, no_model_load, capsys) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France\n")
    under_a_file = str(a_file / "report.html")
    cases = [
        (["demo", "--html", under_a_file], "is a file, not a folder"),
        (["demo", "--html", str(tmp_path)], "is a folder"),
        (["lens", TINY, "Hi", "--html", under_a_file], "is a file, not a folder"),
        (["patchscope", TINY, "Hi", "--html", str(tmp_path)], "is a folder"),
        (["collect", TINY, str(prompts), "--out", str(a_file / "x.safetensors")], "is a file, not a folder"),
        (["collect", TINY, str(tmp_path), "--out", str(tmp_path / "x.safetensors")], "is a folder"),
        (
            ["collect", TINY, str(tmp_path / "none.txt"), "--out", str(tmp_path / "x.safetensors")],
            "no prompts",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert "Traceback" not in err
    if os.geteuid() != 0:  # root writes anywhere; elsewhere a read-only folder is refused too
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert main(["demo", "--html", str(locked / "r.html")]) == 2
        assert "not writable" in capsys.readouterr().err


def test_demo_html_to_an_unwritable_path_fails_at_once(tmp_path: Path) -> None:
    import time

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    start = time.perf_counter()
    result = uniterp("demo", "--html", str(a_file / "report.html"))
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr
    assert "Logit lens" not in result.stdout  # the demo did not run
    assert time.perf_counter() - start < 10


def test_top_k_larger_than_the_vocabulary_is_refused() -> None:
    from uniterp._cli_commands import _check_top_k
    from uniterp.cli import CommandError

    class Small:
        vocab_size = 50

    with pytest.raises(CommandError, match="larger than the vocabulary of 50 tokens"):
        _check_top_k(51, Small())
    assert _check_top_k(50, Small()) == 50


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_before_or_after_the_command_logs_to_stderr(where: str, capsys) -> None:
    argv = ["lens", TINY, "The capital of France is", "--top-k", "1", "--layers", "-1"]
    argv = ["-v", *argv] if where == "before" else [*argv, "-v"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "' Paris'" in captured.out
    assert "uniterp: loading uniterp-tiny" in captured.err and "uniterp: loaded uniterp-tiny" in captured.err
    assert main(argv[1:] if where == "before" else argv[:-1]) == 0  # without -v: quiet
    assert "uniterp: loading" not in capsys.readouterr().err


def test_debug_after_the_command_shows_the_traceback() -> None:
    result = uniterp("lens", TINY, "Hi", "--layers", "99", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_collect_refuses_pt_and_writes_files_with_normal_permissions(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France\nIn Japan\n", encoding="utf-8")
    refused = uniterp("collect", TINY, str(prompts), "--out", str(tmp_path / "acts.pt"))
    assert refused.returncode == 2 and "acts.safetensors" in refused.stderr
    assert not (tmp_path / "acts.pt").exists()
    previous = os.umask(0o022)  # inherited by the command
    try:
        out = tmp_path / "new" / "acts.safetensors"  # a missing folder is created
        result = uniterp("collect", TINY, str(prompts), "--layers", "0", "--out", str(out))
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o644
    assert "activations:" not in result.stderr  # one batch: no progress bar
    html = tmp_path / "lens.html"
    previous = os.umask(0o022)
    try:
        assert uniterp("lens", TINY, "Hi", "--layers", "0", "--html", str(html)).returncode == 0
    finally:
        os.umask(previous)
    assert html.stat().st_mode & 0o777 == 0o644


def test_support_and_check_take_attention_probs(capsys) -> None:
    assert main(["support", TINY]) == 0
    out = capsys.readouterr().out
    assert "--attention-probs" in out and "enable_attention_probs=True" in out
    line = next(x for x in out.splitlines() if "attention_probabilities" in x)
    assert "unavailable" in line
    assert main(["support", TINY, "--attention-probs"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "attention_probabilities" in x)
    assert "available on every layer" in line
    assert main(["check", TINY, "--attention-probs"]) == 0
    assert "PASSED" in capsys.readouterr().out
