"""Peak memory of a trace reading every layer, against a plain forward plus the tensors it keeps.

Each measurement runs in its own process (GPT-2-small shape, 12 layers x 768, 8 short
prompts, float32, CPU): the model is built, the operation runs twice to warm up, then
the peak resident set is reset (``/proc/self/clear_refs``) and read back
(``VmHWM``) around one more run. glibc is told to give large blocks back to the
system when they are freed (``MALLOC_MMAP_THRESHOLD_``), so the resident set follows
what is alive. Goal: peak(trace) - before <= 1.05 x (peak(plain forward) - before +
the bytes of the saved tensors).

    python benchmarks/bench_memory.py
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import PROMPTS, Figure, add_common_arguments, apply_threads, report

MIB = 1 << 20


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(operation: str) -> dict[str, float]:
    """Run ``operation`` ("plain", "uniterp", "nnsight") in this process; its peak memory above the start."""
    import torch
    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoModelForCausalLM

    from uniterp import StandardizedTransformer
    from uniterp.testing import build_tiny_tokenizer, tiny_config

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = tiny_config(
        "gpt2", n_layer=12, n_embd=768, n_head=12, n_inner=3072, vocab_size=50257, n_positions=1024
    )
    model = StandardizedTransformer(
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval(), tokenizer=build_tiny_tokenizer()
    )
    model.dispatch()
    hf, tok = model._module, model.tokenizer
    prompts = list(PROMPTS)
    stack = model._native(model.spec.layers)
    n = model.num_layers

    def plain() -> list:
        with torch.no_grad():
            hf(**tok(prompts, return_tensors="pt", padding=True))
        return []

    def uniterp_reads() -> list:
        saved = []
        with torch.no_grad(), model.trace(prompts):
            for i in range(n):
                saved.append(model.layers_output[i].save())
        return saved

    keys = [model.binding.locator("layers_output", i).key for i in range(n)]

    def nnsight_reads() -> list:
        saved = []
        with torch.no_grad(), TransformersModel.trace(model, prompts):
            for i in range(n):
                out = stack[i].output
                saved.append((out if keys[i] is None else out[keys[i]]).save())
        return saved

    run = {"plain": plain, "uniterp": uniterp_reads, "nnsight": nnsight_reads}[operation]
    for _ in range(2):
        run()
    gc.collect()
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current size
    kept = run()
    peak = _status("VmHWM")
    saved = sum(t.numel() * t.element_size() for t in kept)
    return {"peak_mib": (peak - before) / MIB, "saved_mib": saved / MIB}


def measure(operation: str) -> dict[str, float]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", operation], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench_memory child {operation} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child)))  # noqa: T201 - read by the parent
        return 0
    plain, ours, nnsight = measure("plain"), measure("uniterp"), measure("nnsight")
    bound = plain["peak_mib"] + ours["saved_mib"]
    note = "gpt2-small, batch 8, float32, CPU"
    figures = [
        Figure(
            "peak memory of a plain forward (above the loaded model)", plain["peak_mib"], "MiB", note=note
        ),
        Figure("saved tensors (every layer's output)", ours["saved_mib"], "MiB", note=note),
        Figure("peak of a uniterp trace reading every layer", ours["peak_mib"], "MiB", note=note),
        Figure(
            "uniterp trace / (plain forward + saved tensors)", ours["peak_mib"] / bound, "x", "<= 1.05", note
        ),
        Figure(
            "plain nnsight trace / (plain forward + saved tensors)",
            nnsight["peak_mib"] / (plain["peak_mib"] + nnsight["saved_mib"]),
            "x",
            note=note,
        ),
    ]
    return report(figures, args.json, "bench_memory: peak memory of a trace")


if __name__ == "__main__":
    raise SystemExit(main())
