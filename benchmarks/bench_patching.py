"""Speed of activation patching and attribution patching, as ratios in one process.

Run::

    python benchmarks/bench_patching.py --threads 1

Model: a random GPT-2-small-shaped model (12 layers, width 768, 12 heads, MLP 3072,
vocabulary 50257), float32, on the CPU; prompts: one short clean/corrupted pair.
The metric is a last-token logit difference. Every callable is timed in turn within
each repetition (interleaved, so drifts of a shared machine hit all alike) and the
medians are compared. Goals:

- attribution patching over all layers x positions <= 3.5 x one plain HF forward
  of the pair's corrupted prompt;
- a layer x position residual patching sweep >= 5 x faster than patching one index
  per forward (a loop of traces, each writing one index; measured with the logits
  computed at the last position only, like the sweep, and with full logits as a
  user's loop usually does).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

SHAPE = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_inner": 3072, "vocab_size": 50257}
CLEAN, CORRUPTED = "The capital of France is", "The capital of Japan is"


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of each callable, the callables timed in turn within each repetition."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def setup() -> dict[str, Any]:
    from uniterp import StandardizedTransformer
    from uniterp.metrics import logit_diff
    from uniterp.testing import tiny_model_path

    model = StandardizedTransformer(tiny_model_path("gpt2", **SHAPE), dtype=torch.float32)
    model.dispatch()
    ids = model.tokenizer([CLEAN, CORRUPTED], return_tensors="pt")["input_ids"]
    return {"model": model, "clean": ids[:1], "corrupted": ids[1:], "metric": logit_diff(model, 5, 7)}


def loop_sweep(s: dict[str, Any], last_only: bool) -> torch.Tensor:
    """One traced forward per (layer, position): what a sweep costs without batching."""
    model, metric = s["model"], s["metric"]
    n_layers, n_tokens = model.num_layers, s["clean"].shape[1]
    kwargs = {"logits_to_keep": 1} if last_only else {}
    clean: list[torch.Tensor] = []
    with torch.no_grad():
        with model.trace(s["clean"]):
            for layer in range(n_layers):
                clean.append(model.layers_output[layer].save())
        out = torch.empty(n_layers, n_tokens)
        for layer in range(n_layers):
            for position in range(n_tokens):
                with model.trace(s["corrupted"], **kwargs):
                    h = model.layers_output[layer].clone()
                    h[:, position] = clean[layer][:, position]
                    model.layers_output[layer] = h
                    value = metric(model.logits).save()
                out[layer, position] = value.sum()
    return out


def run(repeats: int) -> list[tuple[str, float, str, bool]]:
    from uniterp.attribution import attribution_patching
    from uniterp.patching import patch_residual

    s = setup()
    model, metric = s["model"], s["metric"]
    native = model._module.eval()

    def forward() -> object:
        with torch.no_grad():
            return native(input_ids=s["corrupted"])

    def atp() -> object:
        return attribution_patching(model, CLEAN, CORRUPTED, metric, "layers_output")

    def sweep() -> object:
        return patch_residual(model, CLEAN, CORRUPTED, metric)

    check = patch_residual(model, CLEAN, CORRUPTED, metric).values
    assert torch.allclose(check, loop_sweep(s, True), atol=1e-4), "the sweep and the loop disagree"
    medians = interleaved_medians({"forward": forward, "atp": atp}, repeats)
    atp_ratio = medians["atp"] / medians["forward"]
    slow = interleaved_medians(
        {
            "sweep": sweep,
            "loop": lambda: loop_sweep(s, True),
            "loop, full logits": lambda: loop_sweep(s, False),
        },
        max(3, repeats // 3),
    )
    return [
        ("plain HF forward (s)", medians["forward"], "", True),
        ("attribution patching, all layers x positions / forward", atp_ratio, "<= 3.5", atp_ratio <= 3.5),
        ("residual sweep (s)", slow["sweep"], "", True),
        (
            "loop of one forward per index / sweep",
            slow["loop"] / slow["sweep"],
            ">= 5",
            slow["loop"] / slow["sweep"] >= 5,
        ),
        ("loop with full logits / sweep", slow["loop, full logits"] / slow["sweep"], "", True),
    ]


def main(argv: list[str] | None = None) -> int:
    """Print each figure with its goal; exit status 1 if a goal is missed."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _harness import Figure, add_common_arguments, apply_threads, report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--repeats", type=int, default=None, help="default 9, quick 3")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    note = "gpt2-small shape, one clean/corrupted pair, CPU"
    figures = []
    for name, value, goal, _ok in run(args.repeats or (3 if args.quick else 9)):
        if name.endswith("(s)"):
            figures.append(Figure(name[:-4], value * 1e3, "ms", note=note))
        else:
            figures.append(Figure(name, value, "x", goal, note))
    return report(figures, args.json, "bench_patching: activation and attribution patching")


if __name__ == "__main__":
    raise SystemExit(main())
