"""``python -m uniterp.demo``: a one-minute, offline tour of the standardized model.

Builds a tiny random Llama-style model (no network), then shows the standardized
tree, a trace that reads and writes ``layers_output``, the load-time and numerical
checks, and a steered next-token distribution.
"""

from __future__ import annotations

import argparse
import time

import torch

from ._model import StandardizedTransformer
from .testing import tiny_model_path


def _top(probs: torch.Tensor, tokenizer: object, k: int = 5) -> str:
    values, ids = probs.topk(k)
    return "  ".join(f"{tokenizer.decode([int(i)])!r}:{float(v):.3f}" for v, i in zip(values, ids))


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code.

    Example::

        >>> main(["--model-type", "gpt2"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(prog="python -m uniterp.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="llama", help="HF model_type of the tiny random model")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    start = time.perf_counter()
    path = tiny_model_path(args.model_type)
    model = StandardizedTransformer(path)
    print(
        f"Loaded a tiny random {args.model_type} model from {path} "
        f"({time.perf_counter() - start:.1f}s, validated on every layer)\n"
    )
    print(model, "\n")

    prompt = "The Eiffel Tower is in the city of"
    with torch.no_grad(), model.trace(prompt):
        hidden = model.layers_output[1].save()
        model.layers_output[1] = hidden * 0.5  # write: halve the residual stream after layer 1
        lens = model.project_on_vocab(model.layers_output[-1]).save()
        probs = model.next_token_probs.save()
    print(f"layers_output[1] read inside a trace: shape {tuple(hidden.shape)} (batch, seq, hidden)")
    print(f"after halving it, top next tokens: {_top(probs[0], model.tokenizer)}")
    same = torch.allclose(lens[0, -1].float().softmax(-1), probs[0], atol=1e-6)
    print(f"project_on_vocab(layers_output[-1]) reproduces the logits: {same}\n")

    result = model.check()
    print("model.check():")
    print(result, "\n")

    torch.manual_seed(0)
    direction = torch.randn(model.hidden_size)
    with torch.no_grad():
        with model.trace(prompt):
            before = model.next_token_probs.save()
        with model.trace(prompt):
            model.steer(layers=[0, 1], steering_vector=direction, factor=8.0)
            after = model.next_token_probs.save()
    print("Steering layers 0-1 along a random direction (factor 8):")
    print(f"  before: {_top(before[0], model.tokenizer)}")
    print(f"  after:  {_top(after[0], model.tokenizer)}")
    print(
        f"\nDone in {time.perf_counter() - start:.1f}s. The model is random: tokens are noise, "
        "the mechanics are real."
    )
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
