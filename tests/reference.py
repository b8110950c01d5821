"""Independent references: plain HF forwards and plain PyTorch hooks, no uniterp code paths."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

# Where the native modules sit, read off the HF modeling files (kept apart from
# uniterp's own table on purpose): family -> (decoder stack, attention,
# attention-contribution module, MLP-input module, MLP-contribution module).
NATIVE: dict[str, tuple[str, str, str, str, str]] = {}
for _t in ("gpt2", "gpt_bigcode", "gptj", "codegen"):
    NATIVE[_t] = ("transformer.h", "attn", "attn", "mlp", "mlp")
NATIVE["gpt_neox"] = ("gpt_neox.layers", "attention", "attention", "mlp", "mlp")
NATIVE["opt"] = ("model.decoder.layers", "self_attn", "self_attn", "fc1", "fc2")
NATIVE["bloom"] = ("transformer.h", "self_attention", "self_attention.dense", "mlp", "mlp.dense_4h_to_h")
NATIVE["falcon"] = ("transformer.h", "self_attention", "self_attention", "mlp", "mlp")
for _t in (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi",
    "phi3",
    "olmo",
    "olmo2",
    "stablelm",
    "starcoder2",
    "cohere",
    "granite",
):
    NATIVE[_t] = ("model.layers", "self_attn", "self_attn", "mlp", "mlp")


# Also read off the HF modeling files, relative to a layer: the attention's output projection
# (its input is head_outputs) and the MLP's down projection (its input is mlp_neurons).
O_PROJ = {t: "self_attn.o_proj" for t in NATIVE if NATIVE[t][1] == "self_attn"}
O_PROJ.update(
    {
        "gpt2": "attn.c_proj",
        "gpt_bigcode": "attn.c_proj",
        "gptj": "attn.out_proj",
        "codegen": "attn.out_proj",
        "gpt_neox": "attention.dense",
        "bloom": "self_attention.dense",
        "falcon": "self_attention.dense",
        "opt": "self_attn.out_proj",
        "phi": "self_attn.dense",
    }
)
DOWN = {t: "mlp.down_proj" for t in NATIVE if t not in ("mixtral", "qwen2_moe", "qwen3_moe")}
DOWN.update(
    {
        "gpt2": "mlp.c_proj",
        "gpt_bigcode": "mlp.c_proj",
        "starcoder2": "mlp.c_proj",
        "gptj": "mlp.fc_out",
        "codegen": "mlp.fc_out",
        "gpt_neox": "mlp.dense_4h_to_h",
        "bloom": "mlp.dense_4h_to_h",
        "falcon": "mlp.dense_4h_to_h",
        "opt": "fc2",
        "phi": "mlp.fc2",
    }
)


def first_tensor(x: Any) -> torch.Tensor:
    """The hidden states in a module output: the tensor, or element 0 of a tuple."""
    return x[0] if isinstance(x, (tuple, list)) else x


def hidden_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The hidden-states argument of a module call."""
    return args[0] if args else kwargs["hidden_states"]


def encode(model: Any, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Left-padded encoding with mask-derived position ids, as a plain HF user would build it."""
    tok = model.tokenizer
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    position_ids = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "position_ids": position_ids,
    }


@contextmanager
def hooks(root: torch.nn.Module, spec: Any) -> Iterator[None]:
    """Register ``path -> hook(module, args, kwargs, output)`` forward hooks for the block.

    ``spec`` is a dict or a list of ``(path, hook)`` pairs (a path may repeat).
    """
    items = spec.items() if isinstance(spec, dict) else spec
    handles = [root.get_submodule(path).register_forward_hook(fn, with_kwargs=True) for path, fn in items]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def hf_forward(model: Any, prompts: list[str], spec: Any = None) -> Any:
    """A plain HF forward of ``prompts`` (no nnsight), optionally with hooks."""
    model.dispatch()
    root = model._module
    with hooks(root, spec or {}):
        return root(**encode(model, prompts))
