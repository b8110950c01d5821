"""Activation collection to disk at scale: throughput against a plain forward, and bounded memory.

Every layer's residual stream (``layers_output`` of all layers) of the embedded
``uniterp-tiny`` model (6 layers, width 128) for every token of generated texts
(32 texts a batch, at most 128 tokens each), streamed to safetensors shards in
bfloat16 by `uniterp.activation_store.collect_activations`, against the same
batches through a plain HF forward (tokenize with truncation and padding + forward).
Goals: throughput >= 0.9 x the plain forward's (1,000,000 tokens; ``--quick``:
100,000), and a peak resident set that does not grow with the number of tokens
(measured in a separate process for two token counts, each several shards of 16,384
tokens long; goal: the larger run's peak above the loaded model <= 1.1 x the smaller
one's).

    python benchmarks/bench_collect.py            # 1M tokens
    python benchmarks/bench_collect.py --quick    # 100k tokens
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Figure, add_common_arguments, apply_threads, report

WORDS = (
    "the capital of France is Paris and Japan Tokyo Germany Berlin language currency continent tower city "
    "cat dog sat on mat with a one two three four five six seven eight nine ten she said that he would come "
    "back tomorrow morning river mountain people walked Moon weather today is warm cold"
).split()
BATCH, MAX_LEN, SHARD = 32, 128, 1 << 16
#: Shard size of the memory runs: both token counts are several shards long.
MEMORY_SHARD = 1 << 14
MIB = 1 << 20


def texts(n_tokens: int, seed: int = 0) -> Iterator[str]:
    """Generated texts of 10 to 140 words, enough for about ``n_tokens`` tokens (streamed)."""
    rng = random.Random(seed)
    made = 0
    while made < n_tokens * 1.05:
        words = rng.randint(10, 140)
        made += min(MAX_LEN, int(words * 1.3))
        yield " ".join(rng.choice(WORDS) for _ in range(words))


def _model():  # noqa: ANN202
    from uniterp import StandardizedTransformer
    from uniterp.tiny import resolve_model_name

    model = StandardizedTransformer(resolve_model_name("uniterp-tiny"), dtype=torch.float32)
    model.dispatch()
    return model


def plain_tokens_per_second(model, n_tokens: int) -> float:  # noqa: ANN001
    hf, tok = model._module, model.tokenizer
    tok.padding_side = "left"
    done, start = 0, time.perf_counter()
    batch: list[str] = []
    with torch.no_grad():
        for text in texts(n_tokens):
            batch.append(text)
            if len(batch) < BATCH:
                continue
            enc = tok(batch, truncation=True, max_length=MAX_LEN, padding=True, return_tensors="pt")
            mask = enc["attention_mask"]
            hf(**enc, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
            done += int(mask.sum())
            batch = []
            if done >= n_tokens:
                break
    return done / (time.perf_counter() - start)


def collect_tokens_per_second(model, n_tokens: int, folder: Path) -> float:  # noqa: ANN001
    from uniterp.activation_store import collect_activations

    start = time.perf_counter()
    store = collect_activations(
        model,
        texts(n_tokens),
        folder,
        batch_size=BATCH,
        max_seq_len=MAX_LEN,
        shard_tokens=SHARD,
        dtype=torch.bfloat16,
        max_tokens=n_tokens,
        resume=False,
        progress=False,
    )
    seconds = time.perf_counter() - start
    return len(store) / seconds


def child(n_tokens: int) -> dict[str, float]:
    """Peak resident set (above the loaded, warmed-up model) of collecting ``n_tokens`` tokens."""
    from uniterp.activation_store import collect_activations

    torch.set_num_threads(1)
    model = _model()
    folder = Path(tempfile.mkdtemp(prefix="uniterp-bench-"))
    try:
        collect_activations(model, texts(2000, seed=1), folder / "warm", batch_size=BATCH, progress=False)

        def status(field: str) -> int:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
            raise RuntimeError(field)

        before = status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        collect_activations(
            model,
            texts(n_tokens),
            folder / "run",
            batch_size=BATCH,
            max_seq_len=MAX_LEN,
            shard_tokens=MEMORY_SHARD,
            dtype=torch.bfloat16,
            max_tokens=n_tokens,
            progress=False,
        )
        return {"peak_mib": (status("VmHWM") - before) / MIB}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def peak_mib(n_tokens: int) -> float:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(n_tokens)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench_collect child failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--tokens", type=int, default=None, help="tokens per run (default 1M, quick 100k)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    if args.child is not None:
        print(json.dumps(child(args.child)))  # noqa: T201 - read by the parent
        return 0
    n_tokens = args.tokens or (100_000 if args.quick else 1_000_000)
    model = _model()
    folder = Path(tempfile.mkdtemp(prefix="uniterp-bench-"))
    plain, ours = [], []
    try:
        plain_tokens_per_second(model, 5_000)  # warm-up
        for _ in range(1 if args.quick else 2):  # interleaved
            plain.append(plain_tokens_per_second(model, n_tokens))
            ours.append(collect_tokens_per_second(model, n_tokens, folder / "acts"))
        size = sum(f.stat().st_size for f in (folder / "acts").glob("*.safetensors")) / MIB
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    small, large = (50_000, 250_000) if args.quick else (100_000, 1_000_000)
    peak_small, peak_large = peak_mib(small), peak_mib(large)
    note = f"uniterp-tiny, {n_tokens:,} tokens, every layer, bf16, batch {BATCH} x <= {MAX_LEN}"
    memory_note = f"above the loaded model; shards of {MEMORY_SHARD:,} tokens"
    figures = [
        Figure("plain HF forward throughput", statistics.median(plain), "tok/s", note=note),
        Figure("collect_activations throughput (to disk)", statistics.median(ours), "tok/s", note=note),
        Figure(
            "collect_activations / plain forward throughput",
            statistics.median(ours) / statistics.median(plain),
            "x",
            ">= 0.9",
            note,
        ),
        Figure("shards written", size, "MiB", note=note),
        Figure(f"peak memory collecting {small:,} tokens", peak_small, "MiB", note=memory_note),
        Figure(f"peak memory collecting {large:,} tokens", peak_large, "MiB", note=memory_note),
        Figure(f"peak memory, {large:,} / {small:,} tokens", peak_large / peak_small, "x", "<= 1.1"),
    ]
    return report(figures, args.json, "bench_collect: activation collection to disk")


if __name__ == "__main__":
    raise SystemExit(main())
