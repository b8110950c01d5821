"""The benchmark scripts: arguments, a small CPU run of bench_trace, figures and the docs table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_trace  # noqa: E402
import run_all  # noqa: E402
from _harness import Figure  # noqa: E402


def test_device_argument_sets_the_gpu_defaults() -> None:
    args = bench_trace.parse_args(["--device", "cuda"])
    assert args.device == torch.device("cuda")
    assert args.dtype == torch.bfloat16
    assert args.shapes == ["llama-1b"] and args.batches == [1, 32]
    assert args.results == BENCH / "results"
    config = bench_trace.SHAPES["llama-1b"][1]
    assert config["num_hidden_layers"] == 16 and config["hidden_size"] == 2048
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # grouped-query attention
    one = bench_trace.parse_args(["--device", "cuda:1", "--dtype", "float16", "--batches", "4"])
    assert one.device == torch.device("cuda", 1) and one.dtype == torch.float16 and one.batches == [4]


def test_cpu_defaults_and_bad_arguments() -> None:
    args = bench_trace.parse_args([])
    assert args.device == torch.device("cpu") and args.dtype == torch.float32
    assert args.shapes == ["gpt2-small", "uniterp-tiny"] and args.batches == [8] and args.results is None
    for bad in (["--device", "mps"], ["--device", "nonsense"], ["--shapes", "gpt5"], ["--dtype", "int8"]):
        with pytest.raises(SystemExit):
            bench_trace.parse_args(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(SystemExit, match="no CUDA device"):
        bench_trace.main(["--device", "cuda"])


def test_a_small_cpu_run_writes_figures_and_a_results_table(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    status = bench_trace.main(
        ["--device", "cpu", "--shapes", "tiny-llama", "--batches", "2", "--quick", "--json", str(out)]
        + ["--results", str(tmp_path / "results")]
    )
    assert status in (0, 1)
    figures = [Figure(**item) for item in json.loads(out.read_text())]
    names = [f.name for f in figures]
    assert names[0].startswith("plain HF forward") and figures[0].unit == "ms" and figures[0].value > 0
    assert "uniterp trace, every layer / plain forward" in names
    assert all(f.value > 0 for f in figures)
    (table,) = (tmp_path / "results").glob("*-cpu.md")
    assert "| uniterp trace, every layer / plain forward |" in table.read_text()


def test_figures_hold_their_goals() -> None:
    assert Figure("a", 1.04, "x", "<= 1.05").ok is True
    assert Figure("a", 1.06, "x", "<= 1.05").ok is False
    assert Figure("a", 0.95, "x", ">= 0.9").ok is True
    assert Figure("a", 0.5, "ms").ok is None
    assert "MISSED" in Figure("a", 2.0, "ms", "<= 1.0").line()


def test_run_all_rewrites_only_the_marked_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "performance.md"
    page.write_text(f"intro\n\n{run_all.START}\nold\n{run_all.END}\n\nafter\n")
    monkeypatch.setattr(run_all, "DOCS", page)
    results = {"bench_trace": [Figure("x / plain forward", 1.01, "x", "<= 1.05", "gpt2-small")]}
    run_all.rewrite_docs(run_all.table(results, full=False))
    text = page.read_text()
    assert text.startswith("intro") and text.endswith("after\n") and "old" not in text
    assert "| x / plain forward | 1.010 x | <= 1.05 x: met | gpt2-small |" in text
    real = (BENCH.parent / "docs" / "performance.md").read_text()
    assert run_all.START in real and run_all.END in real
