"""Attention probabilities, located inside each attention forward by what they are.

nnsight's ``.source`` names every operation of a module's ``forward`` (and of the
functions it calls). Labels are not stable across nnsight versions, so nothing
here hard-codes one: we look for the softmax in the attention forward, or in the
attention function it calls, and take the probabilities as the model uses them
(after the dropout that follows the softmax, when there is one). Of several
candidates the first that actually runs is taken (a softmax can sit in a branch
taken only for float16 weights). The location is then validated numerically
before it is trusted.

Attention written in the older bmm style keeps the probabilities flattened as
``(batch * heads, q, k)``; they are read as a ``(batch, heads, q, k)`` view and
written back flattened, once HF's ``output_attentions`` confirms the split.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from ._errors import ShapeError, UnavailableError
from ._nnsight_compat import (
    envoy_at,
    invoke_rows,
    native_module,
    op_base,
    refresh_envoys,
    source_names,
    source_op,
)
from ._rules import APPLY_OP, CAST_OP, DRILL, DROPOUT_OP, DROPOUT_WINDOW, PROBE_PROMPT, SOFTMAX_OP
from ._tolerances import probability_tolerance

if TYPE_CHECKING:
    from ._binding import Binding
    from ._model import StandardizedTransformer

__all__ = ["Located", "discover_probability_ops", "locate_all", "read_probabilities", "write_probabilities"]

logger = logging.getLogger("uniterp")


def _probability_ops(names: tuple[str, ...]) -> list[tuple[str, str]]:
    """Candidate ops whose output is the probabilities, best first, in source order.

    Per softmax: the dropout after it, else the cast back to the model's dtype,
    else the softmax itself. Some of these may never run: an ``if dropout is not
    None``, or a float16-only branch (XGLM softmaxes in float32 and casts back
    only for float16 weights). Which one runs is settled by running the model
    (`_first_that_runs`). Each comes with its softmax (whose input is the scores).
    """
    ops: list[tuple[str, str]] = []
    for i, name in enumerate(names):
        if not SOFTMAX_OP.search(op_base(name)):
            continue
        for op in (*_dropout_after(names, i), *_cast_after(names, i), name):
            if op not in [o for o, _ in ops]:
                ops.append((op, name))
    return ops


def _dropout_after(names: tuple[str, ...], i: int) -> tuple[str, ...]:
    # the dropout before the probabilities meet the values; op names include
    # assignment targets, so it can sit several names after the softmax
    for later in names[i + 1 : i + 1 + DROPOUT_WINDOW]:
        if APPLY_OP.search(op_base(later)):
            break
        if DROPOUT_OP.search(op_base(later)):
            return (later,)
    return ()


def _cast_after(names: tuple[str, ...], i: int) -> tuple[str, ...]:
    # a softmax in float32 cast back to the model's dtype: the cast is what is used
    return (names[i + 1],) if i + 1 < len(names) and CAST_OP.match(op_base(names[i + 1])) else ()


def _resolve(envoy: Any, path: tuple[str, ...]) -> Any:
    if path[0].startswith("@"):  # a submodule of the attention module
        envoy = envoy_at(envoy, path[0][1:])
        path = path[1:]
    return source_op(envoy, path)


def discover_probability_ops(
    model: StandardizedTransformer, layer: int, attention: str
) -> tuple[tuple[str, ...], tuple[str, ...]] | str:
    """The op paths to the attention probabilities of ``layer`` and to their softmax, or why there are none.

    Example::

        >>> discover_probability_ops(model, 0, "self_attn")
        (('attention_interface_1', 'nn_functional_dropout_0'), ('attention_interface_1', 'nn_functional_softmax_0'))

    Args:
        model: A dispatched model running eager attention.
        layer: Layer index.
        attention: Path of the attention module relative to the block.

    Returns:
        Operation names from the attention forward down to the op whose output
        is the probabilities, and down to the softmax whose input is the scores;
        or a reason string when none was found.
    """
    block = model.layers[layer]
    module = native_module(envoy_at(block, attention))
    # the attention module itself, then attention-like submodules (BERT's attention.self)
    candidates = [attention] + [
        f"{attention}.{name}"
        for name, sub in module.named_modules()
        if name and DRILL.search(type(sub).__name__) and not isinstance(sub, torch.nn.ModuleList)
    ]
    reason = "no softmax found in the attention forward or the attention function it calls"
    for path in candidates:
        found = _search_module(model, envoy_at(block, path))
        if isinstance(found, str):
            reason = found
            continue
        prefix = () if path == attention else (f"@{path[len(attention) + 1 :]}",)
        ops = [(*prefix, *op) for op, _ in found]
        softmax = {(*prefix, *op): (*prefix, *op[:-1], sm) for op, sm in found}
        chosen = _first_that_runs(model, layer, attention, ops)
        if chosen is not None:
            return chosen, softmax[chosen]
        reason = f"none of the ops found ({', '.join('.'.join(op) for op in ops)}) runs in a forward pass"
    return reason


def _search_module(model: StandardizedTransformer, envoy: Any) -> list[tuple[tuple[str, ...], str]] | str:
    """Candidate op paths in ``envoy``'s forward (or a function it calls), best first, each with its softmax."""
    try:
        names = source_names(envoy)
    except Exception as error:  # noqa: BLE001 - no Python source to inspect
        return f"the attention forward has no inspectable source ({error})"
    direct = _probability_ops(names)
    if direct:
        return [((op,), sm) for op, sm in direct]
    for candidate in names:
        if not DRILL.search(candidate):
            continue
        found: dict[str, tuple[str, ...]] = {}
        try:
            with torch.no_grad(), model.trace(PROBE_PROMPT):
                inner = source_names(source_op(envoy, (candidate,)))
                found["names"] = inner
        except Exception:  # noqa: BLE001 - an assignment, a builtin: try the next candidate
            continue
        ops = _probability_ops(found.get("names", ()))
        if ops:
            return [((candidate, op), sm) for op, sm in ops]
    return "no softmax found in the attention forward or the attention function it calls"


def _first_that_runs(
    model: StandardizedTransformer, layer: int, attention: str, ops: list[tuple[str, ...]]
) -> tuple[str, ...] | None:
    """The first of ``ops`` that runs in a forward pass of ``layer``.

    An op in a branch that is not taken never produces a value; nnsight reports a
    request for it as an ``OutOfOrderError`` once the forward has gone past it.
    With a single candidate the validation that follows settles it.
    """
    if len(ops) == 1:
        return ops[0]
    envoy = envoy_at(model.layers[layer], attention)
    for op in ops:
        try:
            with torch.no_grad(), model.trace(PROBE_PROMPT):
                _resolve(envoy, op).output.save()
        except Exception:  # noqa: BLE001 - never ran (OutOfOrderError) or cannot be read
            continue
        return op
    return None


class Located(NamedTuple):
    """Where a layer's probabilities (and the scores before their softmax) are produced.

    Attributes:
        ops: Op path from the attention forward to the op whose output they are.
        attention: Path of the attention module relative to the block.
        heads: Set when the model computes them flattened as ``(batch * heads, q, k)``
            (bmm-style attention); they are shown as ``(batch, heads, q, k)``.
        softmax: Op path to the softmax; its input is the scores.
        scores: Why the scores are unavailable on this layer, or ``None``.
    """

    ops: tuple[str, ...]
    attention: str
    heads: int | None = None
    softmax: tuple[str, ...] = ()
    scores: str | None = None


def read_probabilities(model: StandardizedTransformer, layer: int) -> torch.Tensor:
    """The attention probabilities of ``layer`` in the running trace: ``(batch, heads, q, k)``.

    Flattened ``(batch * heads, q, k)`` weights are returned as a view of the
    native tensor, so in-place edits reach the model as they do for 4-D weights.
    """
    return _read(model, layer, _located(model, layer))


def write_probabilities(model: StandardizedTransformer, layer: int, value: torch.Tensor) -> None:
    """Replace the attention probabilities of ``layer`` in the running trace.

    ``value`` is ``(batch, heads, q, k)``; flattened weights are written back as
    the native ``(batch * heads, q, k)``.
    """
    _write(model, layer, _located(model, layer), value)


def _to_heads(native: torch.Tensor, heads: int | None) -> torch.Tensor:
    """A native ``(batch * heads, q, k)`` tensor as this invoke's ``(batch, heads, q, k)`` view (4-D: as is)."""
    if heads is None:
        return native
    rows = invoke_rows(native.shape[0], heads) if heads > 1 else None
    if rows is not None:
        native = native.narrow(0, rows[0], rows[1] - rows[0])
    return native.view(-1, heads, *native.shape[1:])


def _to_native(native: torch.Tensor, value: torch.Tensor, heads: int | None) -> torch.Tensor:
    """Inverse of `_to_heads` for a write: this invoke's rows put back into the shared native tensor."""
    if heads is None:
        return value
    value = value.reshape(-1, *value.shape[2:])
    rows = invoke_rows(native.shape[0], heads) if heads > 1 else None
    if rows is not None:  # this invoke's rows only; the tensor is shared by all invokes
        merged = native.clone()
        merged[rows[0] : rows[1]] = value
        value = merged
    return value


def _read(model: StandardizedTransformer, layer: int, entry: Located) -> torch.Tensor:
    return _to_heads(_resolve(envoy_at(model.layers[layer], entry.attention), entry.ops).output, entry.heads)


def _write(model: StandardizedTransformer, layer: int, entry: Located, value: torch.Tensor) -> None:
    site = _resolve(envoy_at(model.layers[layer], entry.attention), entry.ops)
    current = _read(model, layer, entry)
    if not isinstance(value, torch.Tensor) or value.shape != current.shape:
        given = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ShapeError(
            f"attention_probabilities[{layer}] of {model.model_type} takes a tensor of shape "
            f"{tuple(current.shape)} (batch, heads, q, k); got {given}"
        )
    value = value.to(dtype=current.dtype, device=current.device)
    site.output = _to_native(site.output, value, entry.heads)


def read_scores(model: StandardizedTransformer, layer: int) -> torch.Tensor:
    """The attention scores of ``layer`` (the softmax's input): ``(batch, heads, q, k)``.

    Scaled, soft-capped and masked as the model does before its softmax.
    """
    entry = _located(model, layer)
    if entry.scores is not None:
        raise UnavailableError(model.model_type, f"attention_scores[{layer}]", entry.scores)
    return _read_scores(model, layer, entry)


def write_scores(model: StandardizedTransformer, layer: int, value: torch.Tensor) -> None:
    """Replace the attention scores of ``layer`` (the softmax's input) in the running trace."""
    from ._sites import conform

    entry = _located(model, layer)
    if entry.scores is not None:
        raise UnavailableError(model.model_type, f"attention_scores[{layer}]", entry.scores)
    site = _resolve(envoy_at(model.layers[layer], entry.attention), entry.softmax)
    current = _read_scores(model, layer, entry)
    value = conform(f"attention_scores[{layer}]", model.model_type, value, current)
    args, kwargs = site.inputs
    value = _to_native(args[0] if args else kwargs["input"], value, entry.heads)
    site.inputs = ((value, *args[1:]), kwargs) if args else (args, {**kwargs, "input": value})


def _read_scores(model: StandardizedTransformer, layer: int, entry: Located) -> torch.Tensor:
    args, kwargs = _resolve(envoy_at(model.layers[layer], entry.attention), entry.softmax).inputs
    return _to_heads(args[0] if args else kwargs["input"], entry.heads)


def _located(model: StandardizedTransformer, layer: int) -> Located:
    probs = model.binding.attention
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


def locate_all(model: StandardizedTransformer, binding: Binding) -> list[Located | str]:
    """Find and validate the probabilities on every layer; a reason where unavailable.

    Example::

        >>> entries = locate_all(model, model.binding)     # one entry per layer
    """
    layout = binding.layout
    model.dispatch()
    # a model may replace modules in its first forward (BigBird swaps block-sparse
    # for full attention on short inputs): run one, then re-point stale envoys
    with torch.no_grad(), model.trace(PROBE_PROMPT):
        pass
    refresh_envoys(model)
    by_class: dict[type, tuple[str, ...] | str] = {}
    entries: list[Located | str] = []
    for index, modules in enumerate(layout.modules):
        attention = modules.get("self_attn")
        if attention is None:
            entries.append(layout.unavailable[index].get("attentions_output", "this layer has no attention"))
            continue
        kind = type(native_module(envoy_at(model.layers[index], attention)))
        if kind not in by_class:
            by_class[kind] = discover_probability_ops(model, index, attention)
        found = by_class[kind]
        entries.append(found if isinstance(found, str) else Located(found[0], attention, softmax=found[1]))
    try:
        failure = _validate(model, entries)
    except Exception as error:  # noqa: BLE001 - any failure to read or write them means unverified
        failure = f"reading them failed: {type(error).__name__}: {error}"
    if failure is not None:
        entries = [
            e if isinstance(e, str) else f"located at {'.'.join(e.ops)} but not verified: {failure}"
            for e in entries
        ]
    return entries


def _validate(model: StandardizedTransformer, entries: list[Any]) -> str | None:
    """Shape, normalisation, agreement with HF ``output_attentions``, and that writes matter.

    Records in ``entries`` the head count of layers whose weights are flattened.
    """
    layers = [i for i, e in enumerate(entries) if not isinstance(e, str)]
    if not layers:
        return None
    prompts = [PROBE_PROMPT, "hello"]
    saved: list[torch.Tensor] = []
    kwargs: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        with model.trace(prompts):
            for key, value in model.inputs[1].items():
                if isinstance(value, torch.Tensor):
                    kwargs[key] = value.save()
            for i in layers:
                saved.append(_read(model, i, entries[i]).save())
            out["logits"] = model.logits.save()
        batch, seq = kwargs["input_ids"].shape
        try:
            hf = native_module(model)(**kwargs, output_attentions=True).attentions
        except Exception:  # noqa: BLE001 - some models do not return attentions
            hf = None
        if hf is None or len(hf) != model.num_layers:
            hf = [None] * model.num_layers
        for i, native in zip(layers, saved):
            heads, failure = _check_layer(i, native, batch, seq, hf[i])
            if failure is not None:
                return failure
            entries[i] = entries[i]._replace(heads=heads)
        first = layers[0]
        with model.trace(prompts):
            probs = _read(model, first, entries[first])
            _write(model, first, entries[first], torch.zeros_like(probs))
            out["changed"] = model.logits.save()
        if torch.equal(out["changed"], out["logits"]):
            return f"layer {first}: writing the probabilities did not change the logits"
        _validate_scores(model, entries, layers, prompts, dict(zip(layers, saved)))
    return None


def _validate_scores(
    model: StandardizedTransformer,
    entries: list[Any],
    layers: list[int],
    prompts: list[str],
    probs: dict[int, torch.Tensor],
) -> None:
    """Mark each layer's scores available when their softmax gives its probabilities, else say why."""
    scores: list[Any] = []
    try:
        with torch.no_grad(), model.trace(prompts):
            for i in layers:
                scores.append(_read_scores(model, i, entries[i]).save())
    except Exception as error:  # noqa: BLE001 - any failure to read them means unverified
        reason = f"the softmax's input could not be read ({type(error).__name__}: {error})"
        for i in layers:
            entries[i] = entries[i]._replace(scores=reason)
        return
    for i, raw in zip(layers, scores):
        native = probs[i]
        expected = native.view(raw.shape) if entries[i].heads is not None and native.dim() == 3 else native
        if raw.shape != expected.shape:
            entries[i] = entries[i]._replace(
                scores=f"the softmax's input has shape {tuple(raw.shape)}, the probabilities {tuple(expected.shape)} "
                "(an attention sink or extra column is normalised with them)"
            )
            continue
        d = float((raw.float().softmax(dim=-1) - expected.float()).abs().max())
        if d > 10 * probability_tolerance(expected.dtype):
            entries[i] = entries[i]._replace(
                scores=f"softmax of the softmax's input differs from the probabilities by {d:.3g}"
            )


def _check_layer(
    i: int, native: torch.Tensor, batch: int, seq: int, reference: torch.Tensor | None
) -> tuple[int | None, str | None]:
    """One layer's probabilities as read natively: the head count if flattened, and a failure."""
    heads = None
    probs = native
    if native.ndim == 3 and native.shape[0] % batch == 0:  # (batch * heads, q, k), bmm style
        heads = native.shape[0] // batch
        probs = native.view(batch, heads, *native.shape[1:])
    if probs.ndim != 4 or probs.shape[0] != batch or probs.shape[-1] < seq or probs.shape[-2] != seq:
        return None, f"layer {i}: shape {tuple(native.shape)}, expected (batch, heads, {seq}, {seq})"
    sums = probs.float().sum(-1)
    tol = probability_tolerance(probs.dtype)
    # rows sum to 1, or to at most 1 with attention sinks (the sink takes the rest)
    if (sums > 1 + tol).any() or float(sums.max()) < 0.5:
        return None, f"layer {i}: rows sum to {float(sums.min()):.4f}..{float(sums.max()):.4f}, expected 1"
    if reference is None or reference.shape != probs.shape:
        if heads is not None:  # the split of the leading dimension must be confirmed by HF's
            return None, (
                f"layer {i}: weights are flattened {tuple(native.shape)} and HF output_attentions "
                "gives nothing of shape (batch, heads, q, k) to confirm how to split them"
            )
    elif not torch.equal(reference, probs):
        d = float((reference.float() - probs.float()).abs().max())
        if d > probability_tolerance(torch.float32):
            return None, f"layer {i}: differs from HF output_attentions by {d:.3g}"
    return heads, None
