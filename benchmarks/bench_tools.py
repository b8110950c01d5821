"""Speed of the research tools, as ratios against one plain HF forward.

Run::

    .venv/bin/python benchmarks/bench_tools.py

Every number is ``median(tool time) / median(plain forward time)`` over the same
9 prompts, in the same process, on the CPU with one thread, with a GPT-2-shaped
random model of 12 layers and width 256 (issue 3's setting). Targets: logit lens
<= 1.25, patchscope over all 12 layers <= 5 with the default target prompt and <= 3
with a 19-token one (`TARGET_20`), activation collection >= 0.9 of the forward's
throughput.

Other sections plug in with `register_section`::

    @register_section("activation collection", target=0.9, higher_is_better=True)
    def _collection(setup: BenchSetup) -> Callable[[], object]:
        return lambda: get_token_activations(setup.model, setup.prompts)

A section returns the zero-argument callable to time; it is timed like the
baseline and reported as a ratio to it.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger("uniterp.bench")

PROMPTS = (
    "The Eiffel Tower is in the city of",
    "The capital of France is",
    "hello world, the cat sat on the",
    "one two three four five six",
    "She said that he would come back tomorrow",
    "A B C D E F G H",
    "The capital of Japan is",
    "0 1 2 3 4 5 6 7 8",
    "the cat sat on the mat with a",
)

# GPT-2's config names: ``intermediate_size`` is not one of them (it would be
# stored but ignored), the MLP width is ``n_inner``.
MODEL_SHAPE = {
    "n_layer": 12,
    "n_embd": 256,
    "n_head": 4,
    "n_inner": 1024,
}


@dataclass
class BenchSetup:
    """What a section gets: the standardized model, the raw HF module and the prompts."""

    model: Any
    hf_model: torch.nn.Module
    encoding: dict[str, torch.Tensor]
    prompts: list[str] = field(default_factory=lambda: list(PROMPTS))


@dataclass
class Section:
    name: str
    build: Callable[[BenchSetup], Callable[[], object]]
    target: float | None = None
    higher_is_better: bool = False


SECTIONS: list[Section] = []
BASELINE = "plain HF forward (seconds)"


def register_section(
    name: str, *, target: float | None = None, higher_is_better: bool = False
) -> Callable[[Callable[[BenchSetup], Callable[[], object]]], Callable[[BenchSetup], Callable[[], object]]]:
    """Add a benchmark section: a function of `BenchSetup` returning the callable to time."""

    def decorate(
        build: Callable[[BenchSetup], Callable[[], object]],
    ) -> Callable[[BenchSetup], Callable[[], object]]:
        SECTIONS.append(Section(name, build, target, higher_is_better))
        return build

    return decorate


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Median wall time (seconds) of each function, timed in turn within every repeat.

    Interleaving keeps slow drifts of a shared machine (other jobs, frequency
    changes) out of the ratios: every function sees the same conditions.
    """
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


def make_setup() -> BenchSetup:
    """Build (or reuse) the benchmark model and the baseline inputs."""
    from uniterp import StandardizedTransformer
    from uniterp.testing import tiny_model_path

    path = tiny_model_path("gpt2", **MODEL_SHAPE)
    model = StandardizedTransformer(path, dtype=torch.float32)
    model.dispatch()
    hf_model = model._module.eval()
    encoding = model.tokenizer(list(PROMPTS), padding=True, return_tensors="pt")
    mask = encoding["attention_mask"]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    inputs = {"input_ids": encoding["input_ids"], "attention_mask": mask, "position_ids": position_ids}
    return BenchSetup(model, hf_model, inputs)


@register_section("logit lens (every layer)", target=1.25)
def _logit_lens(setup: BenchSetup) -> Callable[[], object]:
    from uniterp.lens import logit_lens

    return lambda: logit_lens(setup.model, setup.prompts)


@register_section("patchscope lens (every layer)", target=5.0)
def _patchscope(setup: BenchSetup) -> Callable[[], object]:
    from uniterp.patchscope import patchscope_lens

    return lambda: patchscope_lens(setup.model, setup.prompts)


#: A target prompt of 19 tokens with this tokenizer (the identity prompt with four examples).
TARGET_20 = ("cat", "1135", "hello", "dog")


@register_section("patchscope lens, 19-token target (every layer)", target=3.0)
def _patchscope_20(setup: BenchSetup) -> Callable[[], object]:
    from uniterp.patchscope import patchscope_lens, repeat_prompt

    target = repeat_prompt(list(TARGET_20), rel=" -> ")
    return lambda: patchscope_lens(setup.model, setup.prompts, target)


@register_section("patchscope lens, no prefix cache")
def _patchscope_full_rows(setup: BenchSetup) -> Callable[[], object]:
    from uniterp.patchscope import patchscope_lens

    return lambda: patchscope_lens(setup.model, setup.prompts, prefix_cache=False)


# Throughput >= 0.9 of the plain forward's is a time ratio <= 1 / 0.9.
@register_section("activation collection, every layer", target=round(1 / 0.9, 3))
def _activations_all(setup: BenchSetup) -> Callable[[], object]:
    from uniterp.activations import get_token_activations

    return lambda: get_token_activations(setup.model, setup.prompts)


@register_section("activation collection, layers 0-2", target=1.0)
def _activations_early(setup: BenchSetup) -> Callable[[], object]:
    from uniterp.activations import get_token_activations

    return lambda: get_token_activations(setup.model, setup.prompts, layers=[0, 1, 2])


def run(repeats: int = 15, sections: list[str] | None = None) -> dict[str, float]:
    """Time the baseline and every section; return ``{section name: ratio}`` (and the baseline seconds)."""
    torch.set_num_threads(1)
    setup = make_setup()

    def baseline() -> object:
        with torch.no_grad():
            return setup.hf_model(**setup.encoding)

    fns: dict[str, Callable[[], object]] = {BASELINE: baseline}
    for section in SECTIONS:
        if not sections or section.name in sections:
            fns[section.name] = section.build(setup)
    medians = interleaved_medians(fns, repeats)
    base = medians.pop(BASELINE)
    return {BASELINE: base, **{name: value / base for name, value in medians.items()}}


def main(argv: list[str] | None = None) -> int:
    """Print each section's ratio and its target; exit status 1 if a target is missed."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _harness import Figure, add_common_arguments, report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--repeats", type=int, default=None, help="default 15, quick 5")
    args = parser.parse_args(argv)
    ratios = run(args.repeats or (5 if args.quick else 15))
    targets = {s.name: s for s in SECTIONS}
    note = "GPT-2 shape 12 x 256, 9 prompts, CPU"
    figures = []
    for name, value in ratios.items():
        section = targets.get(name)
        goal = ""
        if section is not None and section.target is not None:
            goal = f"{'>=' if section.higher_is_better else '<='} {section.target}"
        if name == BASELINE:
            figures.append(Figure("plain HF forward", value * 1e3, "ms", note=note))
        else:
            figures.append(Figure(f"{name} / plain forward", value, "x", goal, note))
    return report(figures, args.json, "bench_tools: the research tools")


if __name__ == "__main__":
    raise SystemExit(main())
