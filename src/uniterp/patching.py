"""Activation patching: the metric after patching one index at a time, many indices per forward.

Example::

    >>> from uniterp.patching import patch_sweep, patch_residual, patch_heads
    >>> from uniterp.metrics import logit_diff
    >>> metric = logit_diff(model, " Paris", " Tokyo")
    >>> result = patch_residual(model, "The capital of France is", "The capital of Japan is", metric)
    >>> result.values.shape                      # (n_layers, n_positions)
    >>> result.normalized()                      # 1 where the patch restores the clean answer
    >>> heads = patch_heads(model, clean, corrupted, metric)      # (n_layers, n_heads)

For every index of the sweep (a layer and a position, a layer and a head, ...) the
value at that index is taken from the *source* run and written into the *base*
run, and the metric of the patched run is recorded. ``mode="denoise"`` (default,
TransformerLens' convention) patches clean values into the corrupted run;
``mode="noise"`` patches corrupted values into the clean run. The source values
are read once; the patched runs are rows of batched forwards (``batch_size`` rows
each; one group of rows per index, one row per prompt), each row patching one
index, so a sweep costs a few forwards instead of one per index. Rows patched at
layer ``L`` skip the layers before ``L`` (their outputs are the base run's, read
once), so each row computes only what its patch can change.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ._aliases import TL_HOOKS, SiteRef, resolve_name
from ._errors import InputError, UnavailableError
from ._pairs import Pairs, check_mode, encode_pairs, positive_int
from ._probes import PER_LAYER, Edits, ToolSite, unit_dims
from ._results import PatchResult
from ._skipping import SkipMismatch, compare_logits, pack_layers, skip_first_layers
from .metrics import check_metric, logits_kwargs, metric_value

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = [
    "PatchResult",
    "patch_attention_outputs",
    "patch_heads",
    "patch_heads_by_position",
    "patch_mlp_outputs",
    "patch_residual",
    "patch_sweep",
]

logger = logging.getLogger("uniterp")

AXES = ("layer", "position", "head", "neuron", "expert")


def sweep_sites(
    model: StandardizedTransformer, site: str, layers: Sequence[int] | None, per_layer: bool
) -> list[ToolSite]:
    """The values a sweep edits: one per layer for a per-layer name (``"layers_output"``,
    ``"attn.hook_z"``), else the one value named."""
    if not isinstance(site, str) or not site:
        raise InputError(f"site must be a value name such as 'layers_output'; got {site!r}")
    bare = site in PER_LAYER or site in TL_HOOKS
    if per_layer and not bare:
        raise InputError(
            f"over= has 'layer', so site must name a value of every layer ('layers_output', 'head_outputs', "
            f"'attn.hook_z', ...); {site!r} names one value (drop 'layer' from over=)"
        )
    if not bare:
        if layers is not None:
            raise InputError(f"layers= needs a per-layer site; {site!r} names one value")
        ref = resolve_name(model.binding, site)
        _check_patchable(ref)
        return [ToolSite(ref, site)]
    if not per_layer:
        raise InputError(
            f"{site!r} names a value of every layer: add 'layer' to over=, or name one ('{site}.3')"
        )
    wanted = range(model.num_layers) if layers is None else layers
    found: list[ToolSite] = []
    first: UnavailableError | None = None
    for layer in wanted:
        name = f"blocks.{layer}.{site}" if site in TL_HOOKS else f"{site}.{layer}"
        try:
            ref = resolve_name(model.binding, name)
        except UnavailableError as error:
            if layers is not None:
                raise
            first = first or error
            continue
        _check_patchable(ref)
        found.append(ToolSite(ref, name))
    if not found:
        assert first is not None
        raise first
    if len({s.ref.layer for s in found}) != len(found):
        raise InputError(f"layers= lists a layer twice: {list(wanted)}")
    return sorted(found, key=lambda s: s.order)


def _check_patchable(ref: SiteRef) -> None:
    if not ref.writable or ref.site in ("next_token_probs", "logits", "expert_indices"):
        raise InputError(
            f"{ref.name!r} cannot be patched (it is computed from another value or is the output); patch "
            f"{ref.standard_name if ref.writable else 'the value it is computed from'}"
        )


def check_over(over: Any) -> tuple[str, ...]:
    """``over`` as a tuple of axis names, or `InputError`."""
    axes = (over,) if isinstance(over, str) else tuple(over) if isinstance(over, (list, tuple)) else None
    if not axes or any(a not in AXES for a in axes) or len(set(axes)) != len(axes):
        raise InputError(f"over must be distinct axes from {AXES}, e.g. ('layer', 'position'); got {over!r}")
    return axes


def _read_runs(
    model: StandardizedTransformer,
    pairs: Pairs,
    source_enc: dict[str, torch.Tensor],
    base_enc: dict[str, torch.Tensor],
    targets: list[ToolSite],
    metric: Any,
) -> tuple[dict[str, torch.Tensor], float, _Base]:
    """One forward of the source and base prompts (as rows, no gradient): the targets' source values, the
    metric of both, and the base run's layer outputs up to the deepest target (for skipping layers)."""
    n = pairs.n
    edits = Edits()
    for site in targets:
        edits.add(site, None, keep=True)
    layers = [int(t.ref.layer) for t in targets if t.ref.layer is not None]
    skippable = bool(layers) and (model.binding.sizes.n_streams or 1) == 1
    deepest = max(layers) if layers else -1
    keys = {}
    for i in range(deepest + 1 if skippable else 0):
        keys[i] = edits.add(
            ToolSite(resolve_name(model.binding, f"layers_output.{i}"), f"base:{i}"), None, keep=True
        )
    encoding = {k: torch.cat([source_enc[k], base_enc[k]]) for k in source_enc}
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad(), model.trace(encoding, **logits_kwargs(model, metric)):
        edits.run(model)
        out["logits"] = model.logits.save()
    logits = out["logits"]
    source = {t.key: edits.seen[t.key][:n].detach().clone() for t in targets}
    base = _Base(
        values={i: edits.seen[k][n:].detach().clone() for i, k in keys.items()},
        logits=logits[n:],
        metric=float(metric_value(metric, logits[n:], n)),
        deepest=deepest if skippable else None,
    )
    return source, float(metric_value(metric, logits[:n], n)), base


@dataclass
class _Base:
    """The base run: its layer outputs up to ``deepest`` (``None``: layers cannot be skipped), logits, metric."""

    values: dict[int, torch.Tensor]
    logits: torch.Tensor
    metric: float
    deepest: int | None


def _axis_values(
    axes: tuple[str, ...],
    targets: list[ToolSite],
    source: dict[str, torch.Tensor],
    pairs: Pairs,
    positions: Sequence[int] | None,
    units: Sequence[int] | None,
) -> dict[str, list[int]]:
    """Labels of every axis, checked against the values' shapes."""
    labels: dict[str, list[int]] = {}
    ref = targets[0].ref
    pos_dim, unit_dim, unit_name = unit_dims(ref)
    for axis in axes:
        if axis == "layer":
            labels[axis] = [int(s.ref.layer or 0) for s in targets]
        elif axis == "position":
            if pos_dim is None:
                raise InputError(f"{ref.site} has no position axis")
            n = pairs.lengths[0]
            wanted = list(range(n)) if positions is None else [int(p) for p in positions]
            for p in wanted:
                if not -n <= p < n:
                    raise InputError(
                        f"position {p} is outside the prompts, which have {n} tokens (valid: {-n} to {n - 1})"
                    )
            labels[axis] = [p % n for p in wanted]
        else:
            if unit_dim is None or unit_name != axis:
                has = f"a {unit_name} axis" if unit_name else "no head or neuron axis"
                raise InputError(f"over= has {axis!r} but {ref.site} has {has}")
            count = source[targets[0].key].shape[unit_dim]
            wanted = list(range(count)) if units is None else [int(u) for u in units]
            for u in wanted:
                if not 0 <= u < count:
                    raise InputError(f"{axis} {u} is out of range: {ref.site} has {count} {axis}s")
            labels[axis] = wanted
    if units is not None and not any(a in ("head", "neuron", "expert") for a in axes):
        raise InputError("heads= (units) needs a head, neuron or expert axis in over=")
    if positions is not None and "position" not in axes:
        raise InputError("positions= needs 'position' in over=")
    return labels


def patch_sweep(
    model: StandardizedTransformer,
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    metric: Any,
    site: str = "layers_output",
    over: str | Sequence[str] = ("layer", "position"),
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    mode: str = "denoise",
    batch_size: int = 64,
) -> PatchResult:
    """The metric after patching ``site`` at each index of ``over``, one index per patched run.

    Example::

        >>> metric = logit_diff(model, " Paris", " Tokyo")
        >>> r = patch_sweep(model, "The capital of France is", "The capital of Japan is", metric,
        ...                 "layers_output", over=("layer", "position"))
        >>> r.values.shape                                    # (n_layers, n_tokens)
        >>> patch_sweep(model, clean, corrupted, metric, "head_outputs", over=("layer", "head")).values.shape
        (n_layers, n_heads)
        >>> patch_sweep(model, clean, corrupted, metric, "blocks.2.attn.hook_z", over=("position", "head"))

    Args:
        model: The model.
        clean: Clean prompt(s).
        corrupted: One corrupted prompt per clean prompt, of the same token length.
        metric: ``metric(logits) -> scalar or (n_prompts,)`` (summed), see
            `uniterp.metrics`; it gets the ``(n_prompts, seq, vocab)`` logits of one
            patched run (all prompts with the same index patched).
        site: A value of every layer (``"layers_output"``, ``"attentions_output"``,
            ``"mlps_output"``, ``"head_outputs"``, ``"queries"``, ``"mlp_neurons"``,
            ``"attention_probabilities"``, TransformerLens ``"attn.hook_z"`` ...) with
            ``"layer"`` in ``over``, or one value (``"layers_output.3"``,
            ``"token_embeddings"``, ``"blocks.3.hook_resid_post"``) without it.
        over: Axes swept, in the result's order: ``"layer"``, ``"position"`` (token
            ``p`` of every prompt; needs prompts of one length), and the value's unit
            axis (``"head"`` for head-shaped values, key/value heads for ``keys`` and
            ``values``; ``"neuron"`` for ``mlp_neurons``). An axis not swept is patched
            whole (``over=("layer", "head")`` patches a head at every position).
        layers: Layers to sweep (default: every layer that has the value).
        positions: Positions to sweep (default: all; negative counts from the end).
        heads: Heads (or neurons) to sweep (default: all).
        mode: ``"denoise"`` (clean values into the corrupted run) or ``"noise"``.
        batch_size: Rows per forward; an index takes one row per prompt.

    Returns:
        `PatchResult`: ``values`` shaped by ``over``, with labels, the clean and
        corrupted metrics, ``normalized()``, ``to_dataframe()`` and ``plot()``.

    Raises:
        InputError: Mismatched prompt counts or lengths (with the lengths), an unknown
            axis or one the value does not have, a metric that does not return a
            scalar, indices out of range.
        UnavailableError: The value does not exist on this model (with the reason).
    """
    metric = check_metric(metric)
    mode = check_mode(mode)
    batch_size = positive_int(batch_size, "batch_size")
    axes = check_over(over)
    targets = sweep_sites(model, site, layers, "layer" in axes)
    pairs = encode_pairs(model, clean, corrupted, one_length="position" in axes)
    model.dispatch()
    source_enc, base_enc = pairs.runs(mode)
    source, source_metric, base = _read_runs(model, pairs, source_enc, base_enc, targets, metric)
    labels = _axis_values(axes, targets, source, pairs, positions, heads)
    indices = list(itertools.product(*[range(len(labels[a])) for a in axes]))
    groups: list[dict[str, int]] = [
        {axis: labels[axis][i] for axis, i in zip(axes, index)} for index in indices
    ]
    values = _run(model, pairs, base_enc, base, targets, source, groups, metric, batch_size)
    base_metric = base.metric
    result = values.view(*[len(labels[a]) for a in axes])
    clean_metric, corrupted_metric = (
        (source_metric, base_metric) if mode == "denoise" else (base_metric, source_metric)
    )
    return PatchResult(
        values=result,
        axes=axes,
        labels=labels,
        site=site,
        tokens=pairs.tokens,
        mode=mode,
        clean_metric=clean_metric,
        corrupted_metric=corrupted_metric,
    )


def _run(
    model: StandardizedTransformer,
    pairs: Pairs,
    encoding: dict[str, torch.Tensor],
    base: _Base,
    targets: list[ToolSite],
    source: dict[str, torch.Tensor],
    groups: list[dict[str, int]],
    metric: Any,
    batch_size: int,
) -> torch.Tensor:
    """The metric of each group (one patched index).

    Where the patched values sit in layers, the groups run in forwards that skip
    the layers before the shallowest one they patch (those layers' outputs are the
    base run's, read once): a row computes little more than what its patch can
    change. The first forward also rebuilds the unpatched base run that way; if its
    logits differ from the base run's (a model whose layers pass on more than their
    output), the sweep runs every layer instead.
    """
    if base.deepest is None:
        return _run_groups(model, pairs, encoding, targets, source, list(groups), metric, batch_size, {})
    deepest = base.deepest
    by_layer: dict[int, list[int]] = {}
    for i, group in enumerate(groups):
        by_layer.setdefault(group.get("layer", deepest), []).append(i)
    through_output = all(t.ref.site == "layers_output" for t in targets)
    out = torch.empty(len(groups))
    checked = False
    for pack in _packs(by_layer, pairs.n, batch_size):
        members = [i for layer in pack for i in by_layer[layer]]
        first = min(pack)
        skip = {
            "layers": first + 1 if through_output else first,
            "values": base.values,
            "check": None if checked else base.logits,
        }
        checked = True
        try:
            values = _run_groups(
                model,
                pairs,
                encoding,
                targets,
                source,
                [groups[i] for i in members],
                metric,
                batch_size,
                skip,
            )
        except SkipMismatch as error:
            logger.info(
                "uniterp: %s: skipping early layers changed the logits (%s); running every layer",
                model.model_type,
                error,
            )
            return _run_groups(model, pairs, encoding, targets, source, list(groups), metric, batch_size, {})
        out[members] = values
    return out


def _packs(by_layer: dict[int, list[int]], n: int, batch_size: int) -> list[list[int]]:
    """Consecutive layers packed into forwards (see `uniterp._skipping.pack_layers`), deepest first."""
    return pack_layers({layer: len(rows) * n for layer, rows in by_layer.items()}, batch_size)


def _run_groups(
    model: StandardizedTransformer,
    pairs: Pairs,
    base: dict[str, torch.Tensor],
    targets: list[ToolSite],
    source: dict[str, torch.Tensor],
    groups: list[dict[str, int] | None],
    metric: Any,
    batch_size: int,
    skip: dict[str, Any],
) -> torch.Tensor:
    """The metric of each group of rows (``None``: unpatched), ``batch_size`` rows per forward.

    With ``skip``, layers ``0 .. skip["layers"] - 1`` are skipped (their outputs are
    the base run's); with ``skip["check"]`` one unpatched group is added to the first
    forward and its logits compared with the base run's.
    """
    n = pairs.n
    per_chunk = max(1, batch_size // n)
    kwargs = logits_kwargs(model, metric)
    by_layer = {int(s.ref.layer) if s.ref.layer is not None else None: s for s in targets}
    check = skip.get("check") if skip else None
    out: list[torch.Tensor] = []
    start = 0
    while start < len(groups):
        chunk: list[dict[str, int] | None] = list(groups[start : start + per_chunk])
        start += per_chunk
        if check is not None:
            chunk.append(None)
        edits = Edits()
        for layer, site in by_layer.items():
            mask = _mask(site, source[site.key], chunk, layer, pairs)
            if mask is not None:
                edits.add(site, _patch(source[site.key], mask, len(chunk)))
        encoding = {k: v.repeat(len(chunk), 1) for k, v in base.items()}
        saved: dict[str, torch.Tensor] = {}
        with torch.no_grad(), model.trace(encoding, **kwargs):
            if skip:
                _skip_layers(model, skip["layers"], skip["values"], len(chunk))
            edits.run(model)
            saved["logits"] = model.logits.save()
        logits = saved["logits"]
        if check is not None:
            compare_logits(logits[-n:], check)
            chunk, logits, check = chunk[:-1], logits[:-n], None
        for g in range(len(chunk)):
            out.append(metric_value(metric, logits[g * n : (g + 1) * n], n).detach().cpu())
    return torch.stack(out)


def _skip_layers(
    model: StandardizedTransformer, layer: int, values: dict[int, torch.Tensor], groups: int
) -> None:
    """Skip layers ``0 .. layer - 1``: each returns the base run's output there (the last one's, repeated for
    every group; only the last skipped layer's output is read by a running layer, or patched)."""
    if layer == 0:
        return
    last = values[layer - 1]
    skip_first_layers(model, layer, last.repeat(groups, *([1] * (last.dim() - 1))))


def _mask(
    site: ToolSite, value: torch.Tensor, chunk: list[dict[str, int] | None], layer: int | None, pairs: Pairs
) -> torch.Tensor | None:
    """Where the chunk's rows take the source value at ``site``: ``(len(chunk) * n, ...)`` bool, or ``None``."""
    n = pairs.n
    pos_dim, unit_dim, unit_name = unit_dims(site.ref)
    mask: torch.Tensor | None = None
    for g, index in enumerate(chunk):
        if index is None or ("layer" in index and index["layer"] != layer):
            continue
        if mask is None:
            mask = torch.zeros((len(chunk) * n, *value.shape[1:]), dtype=torch.bool)
        where: list[Any] = [slice(g * n, (g + 1) * n)] + [slice(None)] * (value.dim() - 1)
        if "position" in index and pos_dim is not None:
            where[pos_dim] = pairs.columns([index["position"]])[0]
        if unit_name in index and unit_dim is not None:
            where[unit_dim] = index[unit_name]
        mask[tuple(where)] = True
    return mask


def _patch(source: torch.Tensor, mask: torch.Tensor, groups: int) -> Any:
    def patch(value: torch.Tensor) -> torch.Tensor:
        rows = source.to(value.device, value.dtype).repeat(groups, *([1] * (source.dim() - 1)))
        return torch.where(mask.to(value.device), rows, value)

    return patch


# -- presets ----------------------------------------------------------------------------------


def patch_residual(
    model: StandardizedTransformer,
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    metric: Any,
    site: str = "layers_output",
    **kwargs: Any,
) -> PatchResult:
    """The residual stream by layer and position (``site``: ``"layers_output"``, ``"layers_input"``, ``"residual_mid"``).

    Example::

        >>> patch_residual(model, clean, corrupted, metric).values.shape   # (n_layers, n_tokens)
    """
    return patch_sweep(model, clean, corrupted, metric, site, over=("layer", "position"), **kwargs)


def patch_attention_outputs(
    model: StandardizedTransformer,
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    metric: Any,
    **kwargs: Any,
) -> PatchResult:
    """Each layer's attention output by layer and position.

    Example::

        >>> patch_attention_outputs(model, clean, corrupted, metric).values.shape   # (n_layers, n_tokens)
    """
    return patch_sweep(
        model, clean, corrupted, metric, "attentions_output", over=("layer", "position"), **kwargs
    )


def patch_mlp_outputs(
    model: StandardizedTransformer,
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    metric: Any,
    **kwargs: Any,
) -> PatchResult:
    """Each layer's MLP output by layer and position.

    Example::

        >>> patch_mlp_outputs(model, clean, corrupted, metric).values.shape   # (n_layers, n_tokens)
    """
    return patch_sweep(model, clean, corrupted, metric, "mlps_output", over=("layer", "position"), **kwargs)


def patch_heads(
    model: StandardizedTransformer,
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    metric: Any,
    site: str = "head_outputs",
    **kwargs: Any,
) -> PatchResult:
    """Each head by layer and head, at every position (``site``: ``"head_outputs"``, ``"queries"``,
    ``"keys"``, ``"values"``, ``"attention_probabilities"``; grouped key/value heads stay grouped).

    Example::

        >>> patch_heads(model, clean, corrupted, metric).values.shape   # (n_layers, n_heads)
    """
    return patch_sweep(model, clean, corrupted, metric, site, over=("layer", "head"), **kwargs)


def patch_heads_by_position(
    model: StandardizedTransformer,
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    metric: Any,
    site: str = "head_outputs",
    **kwargs: Any,
) -> PatchResult:
    """Each head at each position: ``(n_layers, n_heads, n_tokens)``.

    Example::

        >>> patch_heads_by_position(model, clean, corrupted, metric).values.shape
    """
    return patch_sweep(model, clean, corrupted, metric, site, over=("layer", "head", "position"), **kwargs)
