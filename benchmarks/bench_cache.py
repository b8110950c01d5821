"""Cost of ``run_with_cache`` and per-head direct logit attribution against a plain HF forward.

For each model shape, in one process, candidates interleaved, medians of repeated
runs, printed as ratios to a plain HF forward (tokenize + forward of the same
left-padded batch under ``torch.no_grad()``, logits included):

- ``cache resid+logits``: ``run_with_cache`` of every layer's residual values
  (``layers_input``, ``attentions_output``, ``residual_mid``, ``mlps_output``,
  ``layers_output``) plus the logits, so the forward runs to the end like the plain one
  (goal <= 1.15x);
- ``nnsight, same reads``: the same values read through plain nnsight envoys of the
  native modules (what uniterp adds is the difference to the line above);
- ``cache resid (stops)``: the default ``names=None``; the forward stops after the last
  layer, so the unembedding is not computed (shown for information);
- ``per-head DLA``: ``run_with_cache`` of every layer's ``head_outputs`` (and the
  residual values the checks and the final norm's scale read), ``stack_head_results``
  and ``logit_attrs`` onto each prompt's target token, at the last position and at
  every position (goal <= 2x).

Models are random, built offline; the GPT-2-small shape has 12 layers, width 768 and
a 50257-token vocabulary.

    python benchmarks/bench_cache.py --threads 1            # all shapes
    python benchmarks/bench_cache.py --threads 1 --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Figure, add_common_arguments, apply_threads, report
from uniterp import StandardizedTransformer
from uniterp.cache import default_names, run_with_cache
from uniterp.testing import tiny_model_path

#: Shapes: name -> (model type, config overrides); the goals apply to the first.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2-small shape (12L, 768w)": (
        "gpt2",
        dict(n_layer=12, n_embd=768, n_head=12, n_inner=3072, vocab_size=50257, n_positions=1024),
    ),
    "small shape (3L, 64w)": ("gpt2", {}),
}
GOALS = {"cache resid+logits": 1.15, "per-head DLA, last pos": 2.0, "per-head DLA, all pos": 2.0}

PROMPTS = [
    "The Eiffel Tower is in the city of",
    "The capital of France is",
    "The capital of Japan is Tokyo, and the capital of France is",
    "hello world, the cat sat on the",
    "She said that he would come back",
    "one two three four five six",
    "A B C D E F G",
    "cat -> cat\n1135 -> 1135\nhello ->",
]


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_shape(
    name: str, model_type: str, overrides: dict[str, Any], batch: int, repeats: int, with_goals: bool
) -> list[Figure]:
    """Time one model shape; returns its figures."""
    model = StandardizedTransformer(tiny_model_path(model_type, dtype=torch.float32, **overrides))
    model.dispatch()
    hf, tok = model._module, model.tokenizer
    tok.padding_side = "left"
    prompts = (PROMPTS * (batch // len(PROMPTS) + 1))[:batch]
    n = model.num_layers
    resid = default_names(model)
    heads = [f"head_outputs.{i}" for i in range(n)] + resid
    targets = torch.tensor([tok(p)["input_ids"][-1] for p in prompts])

    def plain() -> None:
        with torch.no_grad():
            hf(**tok(prompts, return_tensors="pt", padding=True))

    def cache_logits() -> None:
        run_with_cache(model, prompts, names=[*resid, "logits"])

    binding = model.binding
    locators = [binding.locator(*name.rsplit(".", 1)[:1], int(name.rsplit(".", 1)[1])) for name in resid[1:]]
    envoys = [model._envoy(loc.path) for loc in locators]

    def nnsight_same_reads() -> None:  # the same values through plain nnsight envoys, no uniterp code
        saved = []
        with torch.no_grad(), model.trace(prompts):
            saved.append(model._envoy(binding.layout.token_embeddings.path).output.save())
            for loc, envoy in zip(locators, envoys):
                if loc.io == "output":
                    value = envoy.output if loc.key is None else envoy.output[loc.key]
                else:
                    args, kwargs = envoy.inputs
                    value = args[loc.key] if isinstance(loc.key, int) else kwargs[loc.key]
                saved.append(value.save())
            saved.append(model.output.logits.save())

    def cache_stops() -> None:
        run_with_cache(model, prompts)

    def dla_last() -> None:
        cache = run_with_cache(model, prompts, names=heads)
        stack = cache.stack_head_results(pos_slice=-1)
        cache.logit_attrs(stack, tokens=targets, pos_slice=-1)

    def dla_all() -> None:
        cache = run_with_cache(model, prompts, names=heads)
        stack = cache.stack_head_results()
        cache.logit_attrs(stack, tokens=targets)

    candidates = {
        "plain": plain,
        "cache resid+logits": cache_logits,
        "nnsight, same reads": nnsight_same_reads,
        "cache resid (stops)": cache_stops,
        "per-head DLA, last pos": dla_last,
        "per-head DLA, all pos": dla_all,
    }
    for fn in candidates.values():  # warm-up
        fn()
    results: dict[str, list[float]] = {key: [] for key in candidates}
    for _ in range(repeats):  # interleaved, so drifts in machine load hit all alike
        for key, fn in candidates.items():
            results[key].append(_median_time(fn, 3))
    base = statistics.median(results["plain"])
    seq = tok(prompts, return_tensors="pt", padding=True)["input_ids"].shape[1]
    note = f"{name}, batch {batch} x {seq} tokens, CPU"
    figures = [Figure(f"plain HF forward, {name.split(' (')[0]}", base * 1e3, "ms", note=note)]
    for key in list(candidates)[1:]:
        ratio = statistics.median(results[key]) / base
        goal = f"<= {GOALS[key]}" if key in GOALS and with_goals else ""
        figures.append(Figure(f"{key} / plain forward", ratio, "x", goal, note))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    repeats = 3 if args.quick else 7
    figures: list[Figure] = []
    for index, (name, (model_type, overrides)) in enumerate(SHAPES.items()):
        figures += bench_shape(name, model_type, overrides, args.batch, repeats, with_goals=index == 0)
    return report(figures, args.json, "bench_cache: run_with_cache and per-head attribution")


if __name__ == "__main__":
    raise SystemExit(main())
