"""References for gradients and patching built on plain HF models and torch hooks (no uniterp).

Native paths are read off the HF modeling files, apart from uniterp's tables. A value
is edited by a forward hook (output) or pre-hook (input) on its native module:
probes ``v + d`` for gradients, and row/index replacements for patching.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from uniterp.testing import tiny_model_path

from reference import DOWN, NATIVE, O_PROJ, encode

# family -> embedding module (its output is token_embeddings)
EMBED = {t: "model.embed_tokens" for t in NATIVE}
EMBED.update(
    {
        "gpt2": "transformer.wte",
        "gpt_bigcode": "transformer.wte",
        "gptj": "transformer.wte",
        "codegen": "transformer.wte",
        "gpt_neox": "gpt_neox.embed_in",
        "opt": "model.decoder.embed_tokens",
        "bloom": "transformer.word_embeddings",
        "falcon": "transformer.word_embeddings",
    }
)

_HF: dict[tuple[str, str | None], torch.nn.Module] = {}


def hf_model(family: str, attn: str | None = None) -> torch.nn.Module:
    """A plain HF copy of the tiny ``family`` model (float32, eval), loaded once."""
    if (family, attn) not in _HF:
        kwargs = {"attn_implementation": attn} if attn else {}
        _HF[family, attn] = AutoModelForCausalLM.from_pretrained(tiny_model_path(family), **kwargs).eval()
    return _HF[family, attn]


def native_place(family: str, site: str, layer: int | None) -> tuple[str, str]:
    """``(module path, "output" | "input")`` where ``site`` lives natively, for the test families."""
    stack, _, attn_out, _, mlp_out = NATIVE[family]
    if site == "token_embeddings":
        return EMBED[family], "output"
    base = f"{stack}.{layer}"
    if site == "head_outputs":
        return f"{base}.{O_PROJ[family]}", "input"
    if site == "mlp_neurons":
        return f"{base}.{DOWN[family]}", "input"
    return {
        "layers_output": (base, "output"),
        "layers_input": (base, "input"),
        "attentions_output": (f"{base}.{attn_out}", "output"),
        "mlps_output": (f"{base}.{mlp_out}", "output"),
    }[site]


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _replace_first(x: Any, value: torch.Tensor) -> Any:
    if isinstance(x, tuple):
        return (value, *x[1:])
    if isinstance(x, list):
        return [value, *x[1:]]
    return value


def edit_hooks(
    root: torch.nn.Module, edits: list[tuple[str, str, Callable[[torch.Tensor], torch.Tensor]]]
) -> ExitStack:
    """Hooks applying ``fn(value) -> new value`` at each ``(path, io)``; close the stack to remove them."""
    stack = ExitStack()
    for path, io, fn in edits:
        module = root.get_submodule(path)
        if io == "output":

            def hook(_m: Any, _args: Any, out: Any, fn: Any = fn) -> Any:
                value = _first(out)
                return _replace_first(out, fn(value))

            handle = module.register_forward_hook(hook)
        else:

            def pre(_m: Any, args: Any, kwargs: Any, fn: Any = fn) -> Any:
                if args:
                    return (_replace_first(args, fn(args[0])), kwargs)
                key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
                return (args, {**kwargs, key: fn(kwargs[key])})

            handle = module.register_forward_pre_hook(pre, with_kwargs=True)
        stack.callback(handle.remove)
    return stack


def heads_view(family: str, site: str, value: torch.Tensor, n_heads: int) -> torch.Tensor:
    """A native value in uniterp's standard shape (head outputs split per head)."""
    if site == "head_outputs":
        return value.unflatten(-1, (n_heads, -1))
    return value


def reference_gradients(
    family: str,
    model: Any,
    prompts: list[str],
    metric: Callable[[torch.Tensor], torch.Tensor],
    sites: list[tuple[str, int | None]],
    *,
    hf: torch.nn.Module | None = None,
    encoding: dict[str, torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Gradients of ``metric(logits)`` w.r.t. each ``(site, layer)`` with probes in hooks on a plain HF model."""
    hf = hf if hf is not None else hf_model(family)
    probes: list[torch.Tensor | None] = [None] * len(sites)
    n_heads = model.num_heads

    def make(i: int, site: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(value: torch.Tensor) -> torch.Tensor:
            shaped = heads_view(family, site, value, n_heads)
            if value.dim() == 2:  # OPT's MLP runs on flattened tokens
                shaped = value.view(*encoding_shape, -1)
            delta = torch.zeros_like(shaped, requires_grad=True)
            probes[i] = delta
            return (shaped + delta).reshape(value.shape)

        return fn

    enc = encoding if encoding is not None else encode(model, prompts)
    encoding_shape = tuple(enc["input_ids"].shape)
    edits = [(*native_place(family, s, layer), make(i, s)) for i, (s, layer) in enumerate(sites)]
    with torch.enable_grad(), edit_hooks(hf, edits):
        logits = hf(**enc).logits
        value = metric(logits).sum()
    grads = torch.autograd.grad(value, probes, allow_unused=True)
    for p in hf.parameters():
        p.grad = None
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(probes, grads)]


def native_values(
    family: str,
    hf: torch.nn.Module,
    encoding: dict[str, torch.Tensor],
    places: list[tuple[str, str]],
    n_heads: int,
    site: str,
) -> list[torch.Tensor]:
    """The values at ``places`` on one plain forward, in uniterp's standard shape."""
    seen: list[torch.Tensor | None] = [None] * len(places)
    shape = tuple(encoding["input_ids"].shape)

    def grab(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(value: torch.Tensor) -> torch.Tensor:
            shaped = value.view(*shape, -1) if value.dim() == 2 else value
            seen[i] = heads_view(family, site, shaped, n_heads).detach().clone()
            return value

        return fn

    with torch.no_grad(), edit_hooks(hf, [(p, io, grab(i)) for i, (p, io) in enumerate(places)]):
        hf(**encoding)
    return [s for s in seen if s is not None]


def brute_force_sweep(
    family: str,
    model: Any,
    clean: list[str],
    corrupted: list[str],
    metric: Callable[[torch.Tensor], torch.Tensor],
    site: str,
    layers: list[int],
    index_sets: list[tuple[int, dict[str, int]]],
    mode: str = "denoise",
) -> list[float]:
    """The metric after each patch, one plain HF forward per index (hooks on the native modules).

    ``index_sets``: ``(layer, {"position": p, "head": h})`` per patched index; positions
    count within the prompts (all of one length, so no padding), heads index the value's
    head dimension; an absent key patches that axis whole.
    """
    hf = hf_model(family)
    source_prompts, base_prompts = (clean, corrupted) if mode == "denoise" else (corrupted, clean)
    source_enc, base_enc = encode(model, source_prompts), encode(model, base_prompts)
    places = [native_place(family, site, layer) for layer in layers]
    values = dict(zip(layers, native_values(family, hf, source_enc, places, model.num_heads, site)))
    shape = tuple(base_enc["input_ids"].shape)
    width = shape[1]
    out = []
    for layer, index in index_sets:
        src = values[layer]

        def fn(value: torch.Tensor, src: torch.Tensor = src, index: dict[str, int] = index) -> torch.Tensor:
            flat = value.dim() == 2
            shaped = heads_view(
                family, site, value.view(*shape, -1) if flat else value, model.num_heads
            ).clone()
            where: list[Any] = [slice(None)] * shaped.dim()
            if "position" in index:
                where[1] = width - len(model.tokenizer(clean[0])["input_ids"]) + index["position"]
            if "head" in index:
                where[2] = index["head"]
            shaped[tuple(where)] = src[tuple(where)]
            return shaped.reshape(value.shape)

        with torch.no_grad(), edit_hooks(hf, [(*native_place(family, site, layer), fn)]):
            logits = hf(**base_enc).logits
        out.append(float(metric(logits).sum()))
    return out
