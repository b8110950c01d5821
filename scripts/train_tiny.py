"""Train the embedded ``uniterp-tiny`` model: corpus, BPE tokenizer, Llama-layout model.

    python scripts/train_tiny.py                       # writes src/uniterp/models/uniterp-tiny/
    python scripts/train_tiny.py --out /tmp/tiny --steps 500   # a quick experiment

Everything is deterministic: the corpus comes from a seeded generator
(`scripts/tiny_corpus.py`), the tokenizer is trained on it, the weights start from
a fixed seed, batches are drawn from a seeded generator, torch runs with
deterministic algorithms and a fixed thread count. The same command on the same
torch build gives the same weights.

The model is a modern Llama layout (RMSNorm, rotary positions, gated MLP,
grouped-query attention) small enough to ship inside the package. The loss is
next-token prediction on the corpus plus an auxiliary *identity-patchscope*
term, switched on once the facts are learned: a source's hidden state at an
early-middle layer (1 to ``layers // 2 - 1``; computed without gradient, so the
source's own processing is untouched) is patched into an identity prompt
(``king king\n1135 1135\n?``) at the same layer, and the model learns to
repeat the source's last word there. Large models read their own states this way
without being taught; a 1.4-million-parameter model trained for minutes does
not, and the patchscope demo would show noise.

Measured on a shared 2-core CPU (torch 2.13, one thread): 1,250 steps, about
7 minutes.

Training stops after ``--steps`` steps, or earlier once every fact is answered
correctly in every trained phrasing (checked every ``--eval-every`` steps).
Finally the quality bars the tests assert are measured through uniterp and
written to ``training.json``; the script exits with status 1 if one fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tiny_corpus import (  # noqa: E402
    COPY_WORDS,
    entity_words,
    fact_prompts,
    generate_documents,
    identity_prompt,
    subject_sources,
)

DEFAULT_OUT = ROOT / "src" / "uniterp" / "models" / "uniterp-tiny"
EOS = "<|endoftext|>"


def train_tokenizer(docs: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``docs`` (special token ``<|endoftext|>`` = id 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=EOS
    )


def tokenizer_docs(docs: list[str]) -> list[str]:
    """The tokenizer's corpus: the training documents plus every copy word in both spellings."""
    extra = [f"{w} {w}\n {w} {w}" for w in COPY_WORDS for _ in range(40)]
    return docs + extra


def split_words(tokenizer) -> list[str]:
    """Entity words that are more than one token after a space (they should be none)."""
    bad = []
    for word in entity_words():
        if len(tokenizer(" " + word)["input_ids"]) != 1:
            bad.append(word)
    return bad


def build_model(vocab_size: int, args: argparse.Namespace):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads,
        max_position_embeddings=args.max_len,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attention_dropout=0.0,
    )
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config)
    return model


def encode_docs(tokenizer, docs: list[str], max_len: int) -> list[list[int]]:
    rows = []
    for ids in tokenizer(docs)["input_ids"]:
        ids = list(ids)[: max_len - 1] + [0]  # end every document with <|endoftext|>
        rows.append(ids)
    return rows


def make_batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(batch, seq)`` ids and labels (-100 on padding)."""
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(row)] = torch.tensor(row)
    return ids, labels


@torch.no_grad()
def fact_accuracy(model, tokenizer, batch: int = 256) -> float:
    """Top-1 accuracy on the first token of every fact's answer, in every trained phrasing."""
    model.eval()
    rows = fact_prompts()
    correct = 0
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        encoded = [tokenizer(p)["input_ids"] for p, _, _ in chunk]
        ids, _ = make_batch(encoded)
        logits = model(input_ids=ids).logits
        last = torch.tensor([len(e) - 1 for e in encoded])
        pred = logits[torch.arange(len(chunk)), last].argmax(-1)
        for (_, _, answer), p in zip(chunk, pred.tolist(), strict=True):
            correct += int(p == tokenizer(answer)["input_ids"][0])
    model.train()
    return correct / len(rows)


def quality_report(folder: Path) -> dict:
    """The quality bars the tests assert, measured through uniterp on the saved model."""
    from uniterp import StandardizedTransformer
    from uniterp.lens import logit_lens
    from uniterp.patchscope import patchscope_lens, repeat_prompt

    model = StandardizedTransformer(str(folder))
    tok = model.tokenizer
    rows = fact_prompts()
    top = logit_lens(model, [p for p, _, _ in rows], layers=[-1], top_k=1)
    hits = sum(int(top.token_ids[i, 0, 0]) == tok(a)["input_ids"][0] for i, (_, _, a) in enumerate(rows))
    ids, _ = logit_lens(model, "The capital of France is", top_k=1)
    pairs = subject_sources()
    probs = patchscope_lens(model, [source for source, _ in pairs], repeat_prompt())
    expected = torch.tensor([tok(subject)["input_ids"][0] for _, subject in pairs])
    per_layer = (probs.argmax(-1) == expected[:, None]).float().mean(0)
    lens = [tok.decode(i) for i in ids[0, :, 0]]
    middle = per_layer[1:-1]
    return {
        "fact_top1": round(hits / len(rows), 4),
        "lens_france_top1_per_layer": lens,
        "patchscope_subject_top1_per_layer": [round(float(x), 4) for x in per_layer],
        "bars_met": bool(
            hits / len(rows) >= 0.95
            and lens[-1] == " Paris"
            and lens[0] != " Paris"
            and float(middle.max()) > 0.5
        ),
    }


class PatchTask:
    """The auxiliary identity-patchscope objective (see the module docstring)."""

    def __init__(self, tokenizer, model, seed: int) -> None:
        self.rng = random.Random(seed)
        self.tokenizer = tokenizer
        self.layers = model.model.layers
        adjectives = ("old", "small", "green", "happy", "dark")
        nouns = [w for w in COPY_WORDS if w.islower() and w.isalpha()]
        pairs = list(subject_sources())
        pairs += [(f"The {a} {n}", " " + n) for a in adjectives for n in nouns]
        pairs += [(w, " " + w) for w in COPY_WORDS]
        self.pairs = [(tokenizer(src)["input_ids"], tokenizer(sub)["input_ids"][0]) for src, sub in pairs]
        # the early-middle layers: later ones mostly hold the next-token prediction already
        self.middle = list(range(1, max(2, len(self.layers) // 2)))

    def loss(self, model, batch: int) -> torch.Tensor:
        picks = [self.pairs[self.rng.randrange(len(self.pairs))] for _ in range(batch)]
        layer = self.rng.choice(self.middle)
        source, _ = make_batch([ids for ids, _ in picks])
        source_last = torch.tensor([len(ids) - 1 for ids, _ in picks])
        target_rows = [self.tokenizer(identity_prompt(self.rng))["input_ids"] for _ in picks]
        target, _ = make_batch(target_rows)
        target_last = torch.tensor([len(r) - 1 for r in target_rows])
        rows = torch.arange(batch)
        captured: list[torch.Tensor] = []

        def capture(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            captured.append(hidden[rows, source_last].detach())

        def patch(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden.clone()
            hidden[rows, target_last] = captured[0]
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        handle = self.layers[layer].register_forward_hook(capture)
        try:
            with torch.no_grad():
                model.model(input_ids=source)
        finally:
            handle.remove()
        handle = self.layers[layer].register_forward_hook(patch)
        try:
            hidden = model.model(input_ids=target).last_hidden_state[rows, target_last]
        finally:
            handle.remove()
        logits = model.lm_head(hidden)
        expected = torch.tensor([subject for _, subject in picks])
        return torch.nn.functional.cross_entropy(logits, expected)


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save(model, tokenizer, out: Path, meta: dict) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.config.use_cache = True
    model.generation_config.pad_token_id = 0
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    for path in tmp.iterdir():
        path.chmod(0o644)  # package data: readable by everyone who installs it
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", type=int, default=60000, help="documents in the corpus")
    parser.add_argument("--vocab", type=int, default=1536)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--intermediate", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000, help="at most; the learning rate decays over them")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--patch-batch", type=int, default=16, help="identity-patchscope examples per step")
    parser.add_argument("--patch-weight", type=float, default=0.3)
    parser.add_argument(
        "--patch-start", type=float, default=0.9, help="fact accuracy at which the patch objective starts"
    )
    parser.add_argument("--patch-steps", type=int, default=400, help="minimum steps with the patch objective")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)"
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)

    docs = generate_documents(args.docs, seed=args.seed)
    tokenizer = train_tokenizer(tokenizer_docs(docs), args.vocab)
    split = split_words(tokenizer)
    if split:
        print(f"warning: {len(split)} entity words are several tokens: {split[:10]}", flush=True)
    rows = encode_docs(tokenizer, docs, args.max_len)
    n_tokens = sum(len(r) for r in rows)
    print(
        f"corpus: {len(docs)} documents, {n_tokens} tokens, vocab {len(tokenizer)} "
        f"({time.perf_counter() - start:.1f}s)",
        flush=True,
    )

    model = build_model(len(tokenizer), args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    patch_task = PatchTask(tokenizer, model, args.seed + 2) if args.patch_batch > 0 else None
    patch_started: int | None = None
    order = random.Random(args.seed + 1)
    indices: list[int] = []
    accuracy = 0.0
    step = 0
    model.train()
    for step in range(args.steps):
        if len(indices) < args.batch:
            fresh = list(range(len(rows)))
            order.shuffle(fresh)
            indices.extend(fresh)
        picked, indices = indices[: args.batch], indices[args.batch :]
        ids, labels = make_batch([rows[i] for i in picked])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        loss = model(input_ids=ids, labels=labels).loss
        patching = patch_task is not None and patch_started is not None
        patch_loss = patch_task.loss(model, args.patch_batch) if patching else torch.zeros(())
        optimizer.zero_grad(set_to_none=True)
        (loss + args.patch_weight * patch_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0:
            print(
                f"step {step:5d}  loss {loss.item():.3f}  patch loss {patch_loss.item():.3f}  "
                f"{time.perf_counter() - start:6.0f}s",
                flush=True,
            )
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            accuracy = fact_accuracy(model, tokenizer)
            print(f"step {step + 1:5d}  fact accuracy {accuracy:.3f}", flush=True)
            if patch_task is not None and patch_started is None and accuracy >= args.patch_start:
                patch_started = step + 1
                print(f"step {step + 1:5d}  the identity-patchscope objective starts", flush=True)
            patched_enough = patch_task is None or (
                patch_started is not None and step + 1 - patch_started >= args.patch_steps
            )
            if accuracy == 1.0 and patched_enough:
                break
    elapsed = time.perf_counter() - start
    meta = {
        "command": " ".join(["python scripts/train_tiny.py", *(argv if argv is not None else sys.argv[1:])]),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
        "steps_run": step + 1,
        "patch_objective_from_step": patch_started,
        "fact_accuracy": accuracy,
        "parameters": n_params,
        "seconds": round(elapsed, 1),
        "torch": torch.__version__,
    }
    model.eval()
    save(model, tokenizer, args.out, meta)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"saved to {args.out} ({size / 1e6:.2f} MB) after {elapsed:.0f}s; fact accuracy {accuracy:.3f}")
    quality = quality_report(args.out)
    meta["quality"] = quality
    (args.out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(quality, indent=2))
    if not quality["bars_met"]:
        print("error: the model misses a quality bar (see above); the tests will fail", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
