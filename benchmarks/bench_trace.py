"""Fixed cost of a uniterp trace against a plain HF forward, measured in one process.

For each model shape and batch size: the median time of a plain HF forward
(tokenize + forward, under ``torch.no_grad()``), of a uniterp trace reading every
layer output, and of the same reads through plain nnsight (nnsight's own ``trace``
and the native modules' envoys), candidates interleaved. On the CPU (the default):

- GPT-2-small shape (12 layers, width 768, vocabulary 50257), 8 short prompts:
  uniterp trace / plain forward, goal <= 1.05;
- the embedded ``uniterp-tiny`` (6 layers), one short prompt: uniterp trace - plain
  forward, goal <= 1 ms; and what nnsight itself costs there (an empty trace of an
  encoded input over the forward of the same encoding; each value read).

On a GPU (``--device cuda``; bf16 and a 1B-shape Llama, 16 layers x 2048 with
grouped-query attention, built in memory with random weights) the ratios are printed
at batch 1 and 32 and written to ``benchmarks/results/<date>-<device>.md``.

    python benchmarks/bench_trace.py --threads 1            # CPU figures
    python benchmarks/bench_trace.py --quick                # fewer repetitions
    python benchmarks/bench_trace.py --device cuda          # GPU ratios at batch 1 and 32
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    DTYPES,
    PROMPTS,
    Figure,
    add_common_arguments,
    apply_threads,
    describe,
    interleaved_medians,
    report,
)

#: name -> (model type, config overrides); "uniterp-tiny" is the embedded model.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2-small": (
        "gpt2",
        dict(n_layer=12, n_embd=768, n_head=12, n_inner=3072, vocab_size=50257, n_positions=1024),
    ),
    "llama-1b": (
        "llama",
        dict(
            num_hidden_layers=16,
            hidden_size=2048,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            intermediate_size=8192,
            vocab_size=128256,
            max_position_embeddings=4096,
        ),
    ),
    "llama-8x1024": (
        "llama",
        dict(
            num_hidden_layers=8,
            hidden_size=1024,
            num_attention_heads=16,
            num_key_value_heads=4,
            head_dim=64,
            intermediate_size=2816,
            vocab_size=32000,
        ),
    ),
    "tiny-llama": ("llama", {}),
    "uniterp-tiny": ("", {}),
}

#: Goals, held on the CPU: (shape, batch) -> (figure, goal).
GOALS = {("gpt2-small", 8): "<= 1.05", ("uniterp-tiny", 1): "<= 1.0"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--device`` picks the defaults of the others (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: float32 on CPU, bf16 on GPU"
    )
    parser.add_argument("--shapes", default=None, help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument(
        "--batches", default=None, help="comma-separated batch sizes (default: 8, or 1,32 on GPU)"
    )
    parser.add_argument("--results", type=Path, default=None, help="folder for a markdown results file")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device {args.device!r}: {error}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu, cuda or cuda:N; got {args.device!r}")
    args.device = device
    gpu = device.type == "cuda"
    args.dtype = DTYPES[args.dtype or ("bfloat16" if gpu else "float32")]
    args.shapes = (args.shapes or ("llama-1b" if gpu else "gpt2-small,uniterp-tiny")).split(",")
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; known: {', '.join(SHAPES)}")
    args.batches = [int(b) for b in (args.batches or ("1,32" if gpu else "8")).split(",")]
    if args.results is None and gpu:
        args.results = Path(__file__).resolve().parent / "results"
    return args


def build(name: str, device: torch.device, dtype: torch.dtype) -> Any:
    """The standardized model of shape ``name``, random weights built in memory (the embedded model as shipped)."""
    from transformers import AutoModelForCausalLM

    from uniterp import StandardizedTransformer
    from uniterp.testing import build_tiny_tokenizer, tiny_config
    from uniterp.tiny import resolve_model_name

    if name == "uniterp-tiny":
        placement = {"device_map": str(device)} if device.type == "cuda" else {}
        model = StandardizedTransformer(resolve_model_name(name), dtype=dtype, **placement)
    else:
        model_type, overrides = SHAPES[name]
        torch.manual_seed(0)
        with torch.device(device):
            hf = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides), dtype=dtype)
        model = StandardizedTransformer(hf.eval(), tokenizer=build_tiny_tokenizer())
    model.dispatch()
    return model


def measure(model: Any, name: str, batch: int, device: torch.device, repeats: int) -> list[Figure]:
    """Plain forward, uniterp trace and plain nnsight trace of ``batch`` prompts, reading every layer output."""
    from nnsight.modeling.transformers import TransformersModel

    hf, tok = model._module.eval(), model.tokenizer
    tok.padding_side = "left"
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    text: Any = prompts[0] if batch == 1 else prompts
    n = model.num_layers
    stack = model._native(model.spec.layers)
    encoding = {k: v.to(device) for k, v in tok(prompts, return_tensors="pt", padding=True).items()}
    trace = TransformersModel.trace  # nnsight's own, without uniterp's checks and text encoding

    def plain() -> None:
        with torch.no_grad():
            hf(**{k: v.to(device) for k, v in tok(prompts, return_tensors="pt", padding=True).items()})

    def uniterp_reads() -> None:
        saved = []
        with torch.no_grad(), model.trace(text):
            for i in range(n):
                saved.append(model.layers_output[i].save())

    def nnsight_reads() -> None:
        saved = []
        with torch.no_grad(), trace(model, text):
            for i in range(n):
                saved.append(stack[i].output.save())

    def plain_encoded() -> None:
        with torch.no_grad():
            hf(**encoding)

    def nnsight_empty_encoded() -> None:
        with torch.no_grad(), trace(model, encoding):
            model.dispatch  # noqa: B018 - a statement, so nnsight runs the block as a trace

    def nnsight_reads_encoded() -> None:
        saved = []
        with torch.no_grad(), trace(model, encoding):
            for i in range(n):
                saved.append(stack[i].output.save())

    fns = {"plain": plain, "uniterp": uniterp_reads, "nnsight": nnsight_reads}
    small = name == "uniterp-tiny"
    if small:
        fns.update(encoded=plain_encoded, empty=nnsight_empty_encoded, reads=nnsight_reads_encoded)
    med = interleaved_medians(fns, repeats, warmup=3, device=device, inner=10 if small else 1)
    seq = encoding["input_ids"].shape[1]
    note = f"{name}, batch {batch} x {seq} tokens, {describe(device)}, {str(next(hf.parameters()).dtype)[6:]}"
    goal = GOALS.get((name, batch), "") if device.type == "cpu" else ""
    ms = 1e3
    figures = [Figure(f"plain HF forward, {name} batch {batch}", med["plain"] * ms, "ms", note=note)]
    if small:
        figures += [
            Figure(
                "uniterp trace, every layer - plain forward",
                (med["uniterp"] - med["plain"]) * ms,
                "ms",
                goal,
                note,
            ),
            Figure(
                "plain nnsight trace, same reads - plain forward",
                (med["nnsight"] - med["plain"]) * ms,
                "ms",
                note=note,
            ),
            Figure(
                "  nnsight itself: empty trace of an encoding - its forward",
                (med["empty"] - med["encoded"]) * ms,
                "ms",
                note=note,
            ),
            Figure(
                "  nnsight itself: each value read", (med["reads"] - med["empty"]) / n * 1e6, "us", note=note
            ),
            Figure(
                "  uniterp over plain nnsight, same reads",
                (med["uniterp"] - med["nnsight"]) * ms,
                "ms",
                note=note,
            ),
        ]
    else:
        figures += [
            Figure(
                "uniterp trace, every layer / plain forward",
                med["uniterp"] / med["plain"],
                "x",
                goal,
                note,
            ),
            Figure(
                "plain nnsight trace, same reads / plain forward",
                med["nnsight"] / med["plain"],
                "x",
                note=note,
            ),
        ]
    return figures


def write_results(folder: Path, figures: list[Figure], device: torch.device) -> Path:
    """``<folder>/<date>-<device>.md``: the figures as a table."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{datetime.date.today().isoformat()}-{describe(device)}.md"
    lines = [
        f"# bench_trace on {describe(device)}, {datetime.date.today().isoformat()}",
        "",
        f"torch {torch.__version__}; command: `python benchmarks/bench_trace.py {' '.join(sys.argv[1:])}`",
        "",
        "| figure | value | setting |",
        "|---|---|---|",
    ]
    lines += [f"| {f.name.strip()} | {f.value:.3f} {f.unit} | {f.note} |" for f in figures]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_trace: --device cuda, but torch sees no CUDA device")
    apply_threads(args.threads)
    figures: list[Figure] = []
    for name in args.shapes:
        model = build(name, args.device, args.dtype)
        batches = [1] if name == "uniterp-tiny" and args.device.type == "cpu" else args.batches
        for batch in batches:
            repeats = (60 if args.quick else 200) if name == "uniterp-tiny" else (5 if args.quick else 9)
            figures += measure(model, name, batch, args.device, repeats)
        del model
    if args.results is not None:
        print(f"results written to {write_results(args.results, figures, args.device)}")  # noqa: T201
    return report(figures, args.json, "bench_trace: the fixed cost of a trace")


if __name__ == "__main__":
    raise SystemExit(main())
