"""Overhead of a uniterp trace against a plain HF forward, measured in one process.

For each model shape and batch size: the median time of a plain HF forward
(tokenize + forward, under ``torch.no_grad()``), of a uniterp trace that reads
every layer output, and of the same reads through plain nnsight paths; printed as
ratios to the plain forward. Models are random, built offline.

    python benchmarks/bench_trace.py            # all shapes
    python benchmarks/bench_trace.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from uniterp import StandardizedTransformer
from uniterp.testing import tiny_model_path

SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2-small shape": (
        "gpt2",
        dict(n_layer=12, n_embd=768, n_head=12, n_inner=3072, vocab_size=50257, n_positions=1024),
    ),
    "llama shape (8L, 1024w, GQA)": (
        "llama",
        dict(
            num_hidden_layers=8,
            hidden_size=1024,
            num_attention_heads=16,
            num_key_value_heads=4,
            intermediate_size=2816,
            vocab_size=32000,
            head_dim=64,
        ),
    ),
}

SENTENCE = "The Eiffel Tower is in the city of Paris, and the capital of Japan is Tokyo, so"


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_shape(
    name: str, model_type: str, overrides: dict[str, Any], batches: list[int], repeats: int
) -> list[str]:
    """Time one model shape; returns printable rows."""
    model = StandardizedTransformer(tiny_model_path(model_type, dtype=torch.float32, **overrides))
    model.dispatch()
    hf = model._module
    tok = model.tokenizer
    layers = model.num_layers
    native_stack = model._native(model.spec.layers)
    rows = []
    for batch in batches:
        prompts = [SENTENCE + " " + "one two three"[: 3 * (i % 4)] for i in range(batch)]

        def plain(prompts: list[str] = prompts) -> None:
            with torch.no_grad():
                enc = tok(prompts, return_tensors="pt", padding=True)
                hf(**enc)

        def uniterp_all_layers(prompts: list[str] = prompts) -> None:
            saved = []
            with torch.no_grad(), model.trace(prompts):
                for i in range(layers):
                    saved.append(model.layers_output[i].save())

        def nnsight_all_layers(prompts: list[str] = prompts) -> None:
            saved = []
            with torch.no_grad(), model.trace(prompts):
                for i in range(layers):
                    saved.append(native_stack[i].output.save())

        for fn in (plain, uniterp_all_layers, nnsight_all_layers):  # warm-up
            fn()
        # interleave the candidates so drifts in machine load hit all of them alike
        results: dict[str, list[float]] = {"plain": [], "uniterp": [], "nnsight": []}
        for _ in range(repeats):
            results["plain"].append(_median_time(plain, 3))
            results["uniterp"].append(_median_time(uniterp_all_layers, 3))
            results["nnsight"].append(_median_time(nnsight_all_layers, 3))
        base = statistics.median(results["plain"])
        ratio_u = statistics.median(results["uniterp"]) / base
        ratio_n = statistics.median(results["nnsight"]) / base
        seq = tok(prompts, return_tensors="pt", padding=True)["input_ids"].shape[1]
        rows.append(
            f"{name:<30} batch {batch:>2} x {seq:>2} tokens  plain {base * 1e3:8.1f} ms   "
            f"uniterp all {layers} layers {ratio_u:5.3f}x   plain nnsight {ratio_n:5.3f}x"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 7
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ratios to a plain HF forward")
    for name, (model_type, overrides) in SHAPES.items():
        for row in bench_shape(name, model_type, overrides, [1, 8], repeats):
            print(row, flush=True)


if __name__ == "__main__":
    main()
