"""Attention probabilities, located inside each attention forward by what they are.

nnsight's ``.source`` names every operation of a module's ``forward`` (and of the
functions it calls). Labels are not stable across nnsight versions, so nothing
here hard-codes one: we look for the softmax in the attention forward, or in the
attention function it calls, and take the probabilities as the model uses them
(after the dropout that follows the softmax, when there is one). The location is
then validated numerically before it is trusted.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import torch

from ._errors import UnavailableError
from ._sites import envoy_at

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["discover_probability_ops", "read_probabilities", "write_probabilities"]

logger = logging.getLogger("uniterp")

_SOFTMAX = re.compile(r"(^|_)softmax_\d+$")
_DROPOUT = re.compile(r"dropout_\d+$")
_CAST = re.compile(r"^(to|type_as|float|half|bfloat16)_\d+$")
_DRILL = re.compile(r"attention|attn|sdpa|eager", re.IGNORECASE)
_PROMPT = "The Eiffel Tower is in"


def _probability_op(names: tuple[str, ...]) -> str | None:
    """The op whose output is the probabilities, in one flat list of op names."""
    for i, name in enumerate(names):
        if _SOFTMAX.search(name):
            for later in names[i + 1 : i + 6]:
                if _DROPOUT.search(later):
                    return later
            # a softmax in float32 cast back to the model's dtype: the cast is what is used
            if i + 1 < len(names) and _CAST.match(names[i + 1]):
                return names[i + 1]
            return name
    return None


def _resolve(envoy: Any, path: tuple[str, ...]) -> Any:
    if path[0].startswith("@"):  # a submodule of the attention module
        envoy = envoy_at(envoy, path[0][1:])
        path = path[1:]
    source = envoy.source
    for name in path[:-1]:
        source = getattr(source, name).source
    return getattr(source, path[-1])


def discover_probability_ops(
    model: StandardizedTransformer, layer: int, attention: str
) -> tuple[str, ...] | str:
    """The op path to the attention probabilities of ``layer``, or why there is none.

    Example::

        >>> discover_probability_ops(model, 0, "self_attn")
        ('attention_interface_1', 'nn_functional_dropout_0')

    Args:
        model: A dispatched model running eager attention.
        layer: Layer index.
        attention: Path of the attention module relative to the block.

    Returns:
        Operation names from the attention forward down to the op whose output
        is the probabilities, or a reason string when none was found.
    """
    block = model.layers[layer]
    module = envoy_at(block, attention)._module
    # the attention module itself, then attention-like submodules (BERT's attention.self)
    candidates = [attention] + [
        f"{attention}.{name}"
        for name, sub in module.named_modules()
        if name and _DRILL.search(type(sub).__name__) and not isinstance(sub, torch.nn.ModuleList)
    ]
    reason = "no softmax found in the attention forward or the attention function it calls"
    for path in candidates:
        found = _search_module(model, envoy_at(block, path))
        if isinstance(found, tuple):
            return found if path == attention else (f"@{path[len(attention) + 1 :]}", *found)
        reason = found
    return reason


def _search_module(model: StandardizedTransformer, envoy: Any) -> tuple[str, ...] | str:
    try:
        names = envoy.source.names
    except Exception as error:  # noqa: BLE001 - no Python source to inspect
        return f"the attention forward has no inspectable source ({error})"
    direct = _probability_op(names)
    if direct is not None:
        return (direct,)
    for candidate in names:
        if not _DRILL.search(candidate):
            continue
        found: dict[str, tuple[str, ...]] = {}
        try:
            with torch.no_grad(), model.trace(_PROMPT):
                inner = getattr(envoy.source, candidate).source.names
                found["names"] = inner
        except Exception:  # noqa: BLE001 - an assignment, a builtin: try the next candidate
            continue
        op = _probability_op(found.get("names", ()))
        if op is not None:
            return (candidate, op)
    return "no softmax found in the attention forward or the attention function it calls"


def read_probabilities(model: StandardizedTransformer, layer: int) -> torch.Tensor:
    """The attention probabilities of ``layer`` in the running trace: ``(batch, heads, q, k)``."""
    path, attention = _located(model, layer)
    return _resolve(envoy_at(model.layers[layer], attention), path).output


def write_probabilities(model: StandardizedTransformer, layer: int, value: torch.Tensor) -> None:
    """Replace the attention probabilities of ``layer`` in the running trace."""
    path, attention = _located(model, layer)
    _resolve(envoy_at(model.layers[layer], attention), path).output = value


def _located(model: StandardizedTransformer, layer: int) -> tuple[tuple[str, ...], str]:
    probs = model._attention_probs
    if probs is None:
        raise UnavailableError(
            model.model_type,
            "attention_probabilities",
            "attention probabilities are off; load with "
            "StandardizedTransformer(..., enable_attention_probs=True) (this switches to eager attention)",
        )
    entry = probs[layer]
    if isinstance(entry, str):
        raise UnavailableError(model.model_type, f"attention_probabilities[{layer}]", entry)
    return entry


def locate_all(model: StandardizedTransformer) -> list[tuple[tuple[str, ...], str] | str]:
    """Find and validate the probabilities on every layer; a reason where unavailable.

    Example::

        >>> entries = locate_all(model)     # one entry per layer
    """
    layout = model._ensure_layout()
    model.dispatch()
    by_class: dict[type, tuple[str, ...] | str] = {}
    entries: list[tuple[tuple[str, ...], str] | str] = []
    for index, modules in enumerate(layout.modules):
        attention = modules.get("self_attn")
        if attention is None:
            entries.append(layout.unavailable[index].get("attentions_output", "this layer has no attention"))
            continue
        kind = type(envoy_at(model.layers[index], attention)._module)
        if kind not in by_class:
            by_class[kind] = discover_probability_ops(model, index, attention)
        found = by_class[kind]
        entries.append(found if isinstance(found, str) else (found, attention))
    model._attention_probs = entries
    failure = _validate(model, entries)
    if failure is not None:
        model._attention_probs = [
            e if isinstance(e, str) else f"located at {'.'.join(e[0])} but not verified: {failure}"
            for e in entries
        ]
    return model._attention_probs


def _validate(model: StandardizedTransformer, entries: list[Any]) -> str | None:
    """Shape, normalisation, agreement with HF ``output_attentions``, and that writes matter."""
    layers = [i for i, e in enumerate(entries) if not isinstance(e, str)]
    if not layers:
        return None
    prompts = [_PROMPT, "hello"]
    saved: list[torch.Tensor] = []
    kwargs: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        with model.trace(prompts):
            for key, value in model.inputs[1].items():
                if isinstance(value, torch.Tensor):
                    kwargs[key] = value.save()
            for i in layers:
                saved.append(read_probabilities(model, i).save())
            out["logits"] = model.logits.save()
        batch, seq = kwargs["input_ids"].shape
        for i, probs in zip(layers, saved):
            if probs.ndim != 4 or probs.shape[0] != batch or probs.shape[-1] < seq or probs.shape[-2] != seq:
                return f"layer {i}: shape {tuple(probs.shape)}, expected (batch, heads, {seq}, {seq})"
            sums = probs.float().sum(-1)
            tol = 1e-3 if probs.dtype in (torch.float16, torch.bfloat16) else 1e-5
            # rows sum to 1, or to at most 1 with attention sinks (the sink takes the rest)
            if (sums > 1 + tol).any() or float(sums.max()) < 0.5:
                return f"layer {i}: rows sum to {float(sums.min()):.4f}..{float(sums.max()):.4f}, expected 1"
        try:
            hf = model._module(**kwargs, output_attentions=True).attentions
        except Exception:  # noqa: BLE001 - some models do not return attentions
            hf = None
        if hf is not None and len(hf) == model.num_layers:
            for i, probs in zip(layers, saved):
                if hf[i] is not None and hf[i].shape == probs.shape and not torch.equal(hf[i], probs):
                    d = float((hf[i].float() - probs.float()).abs().max())
                    if d > 1e-5:
                        return f"layer {i}: differs from HF output_attentions by {d:.3g}"
        first = layers[0]
        with model.trace(prompts):
            probs = read_probabilities(model, first)
            write_probabilities(model, first, torch.zeros_like(probs))
            out["changed"] = model.logits.save()
        if torch.equal(out["changed"], out["logits"]):
            return f"layer {first}: writing the probabilities did not change the logits"
    return None
