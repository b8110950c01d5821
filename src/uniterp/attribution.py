"""Attribution patching (AtP) and AtP*: activation patching estimated from one backward pass.

Example::

    >>> from uniterp.attribution import attribution_patching
    >>> atp = attribution_patching(model, clean, corrupted, metric, "layers_output")
    >>> atp.values.shape                    # (n_layers, n_positions), like patch_residual(...)
    >>> heads = attribution_patching(model, clean, corrupted, metric, "head_outputs", over=("layer", "head"))
    >>> star = attribution_patching(model, clean, corrupted, metric, ["queries", "keys"], qk_fix=True,
    ...                             grad_drop=True)      # AtP* (needs enable_attention_probs=True)

Definition (Nanda 2023; Kramár et al. 2024): the effect of patching node ``n`` is
estimated to first order, ``(n_source - n_base) . dM/dn`` at the base run. The
direction follows the sweeps: ``mode="denoise"`` (default) estimates patching
clean values into the corrupted run, so the gradient is taken on the corrupted
run and multiplied by ``clean - corrupted``; ``mode="noise"`` is the AtP paper's
convention (gradient on the clean run, times ``corrupted - clean``). A node is
one index of ``over``, exactly as in `uniterp.patching.patch_sweep`, and the
estimate of patching a node is the sum of its elements' terms, so
``attribution_patching(...).values`` estimates ``patch_sweep(...).effects``.

Cost: the source run (no gradient), the base run with gradient recording, and one
``torch.autograd.grad`` for every requested value at once.

AtP* improvements:

- ``qk_fix=True``: for ``queries`` and ``keys`` nodes the attention pattern is
  recomputed exactly (see `uniterp._qk`); needs the attention probabilities
  (``enable_attention_probs=True``) and scores of the form ``scale * q.k + bias``.
- ``grad_drop=True``: the base run is repeated once per layer, the gradient through
  that layer's block (not its residual skip) dropped; the result is
  ``sum_prompts 1/(L-1) sum_l |estimate with layer l dropped|``, a non-negative
  score that cancellation between paths cannot hide. The copies are rows of
  batched forwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._aliases import resolve_name
from ._errors import InputError, UnavailableError
from ._pairs import Pairs, check_mode, encode_pairs, positive_int
from ._probes import PER_LAYER, Edits, ToolSite, grad_mode, probe, read_sites, unit_dims
from ._qk import fit_scale, key_effects, query_effects
from ._results import AttributionResult
from .grads import _grad
from .metrics import check_metric, logits_kwargs, metric_value
from .patching import _axis_values, check_over, sweep_sites

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["AttributionResult", "attribution_patching", "default_axes"]


def default_axes(model: StandardizedTransformer, site: str) -> tuple[str, ...]:
    """The node axes `attribution_patching` uses for ``site`` when ``over`` is not given.

    Example::

        >>> default_axes(model, "head_outputs"), default_axes(model, "blocks.3.hook_resid_post")
        (('layer', 'position', 'head'), ('position',))

    ``layer`` for per-layer names, ``position``, and the value's head or neuron axis.
    """
    from ._aliases import TL_HOOKS

    bare = site in PER_LAYER or site in TL_HOOKS
    ref = sweep_sites(model, site, None, bare)[0].ref
    pos, unit, name = unit_dims(ref)
    axes: tuple[str, ...] = ("layer",) if bare else ()
    axes += ("position",) if pos is not None else ()
    return axes + ((name,) if unit is not None and name else ())


def attribution_patching(
    model: StandardizedTransformer,
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    metric: Any,
    sites: str | Sequence[str] = "layers_output",
    *,
    over: str | Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    mode: str = "denoise",
    qk_fix: bool = False,
    grad_drop: bool = False,
    batch_size: int = 64,
) -> AttributionResult | dict[str, AttributionResult]:
    """First-order estimates of activation patching for every node of ``sites``, from one backward pass.

    Example::

        >>> atp = attribution_patching(model, "The capital of France is", "The capital of Japan is",
        ...                            logit_diff(model, " Paris", " Tokyo"), "layers_output")
        >>> atp.values                                       # estimates of patch_residual(...).effects
        >>> both = attribution_patching(model, clean, corrupted, metric, ["head_outputs", "mlp_neurons"])
        >>> both["head_outputs"].axes                        # ('layer', 'position', 'head')

    Args:
        model: The model.
        clean: Clean prompt(s).
        corrupted: One corrupted prompt per clean prompt, of the same token length.
        metric: As for `uniterp.patching.patch_sweep`.
        sites: One value name or several, as in `patch_sweep` (per-layer names such
            as ``"head_outputs"``, or one value such as ``"layers_output.3"``).
        over: The node axes, as in `patch_sweep` (applied to every site). Default per
            site: ``layer`` (per-layer names), ``position``, and the value's head or
            neuron axis.
        layers: Layers to include (default: every layer that has the value).
        mode: ``"denoise"`` (default; gradient on the corrupted run) or ``"noise"``
            (gradient on the clean run, as in the AtP* paper).
        qk_fix: AtP*'s exact softmax for ``queries`` and ``keys`` sites.
        grad_drop: AtP*'s GradDrop scores (non-negative) instead of signed estimates.
        batch_size: Rows per forward for GradDrop's copies of the base run.

    Returns:
        One `AttributionResult` for a single site name, else a dict of them by name.

    Raises:
        InputError: As for `patch_sweep`; ``qk_fix`` without a queries/keys site.
        UnavailableError: A value, the attention probabilities ``qk_fix`` needs, or a
            residual skip GradDrop needs does not exist on this model (with the reason).
    """
    metric = check_metric(metric)
    mode = check_mode(mode)
    batch_size = positive_int(batch_size, "batch_size")
    names = [sites] if isinstance(sites, str) else list(sites) if isinstance(sites, (list, tuple)) else []
    if not names:
        raise InputError(f"sites: give one value name or a non-empty list; got {sites!r}")
    plans = []
    for name in names:
        axes = check_over(over) if over is not None else default_axes(model, name)
        plans.append((name, axes, sweep_sites(model, name, layers, "layer" in axes)))
    pairs = encode_pairs(model, clean, corrupted, one_length=any("position" in a for _, a, _ in plans))
    if qk_fix and not any(t.ref.site in ("queries", "keys") for _, _, ts in plans for t in ts):
        raise InputError("qk_fix applies to 'queries' and 'keys' sites; none was requested")
    model.dispatch()
    targets = [t for _, _, ts in plans for t in ts]
    qk_layers = sorted(
        {int(t.ref.layer or 0) for t in targets if qk_fix and t.ref.site in ("queries", "keys")}
    )
    qk = _QK(model, qk_layers) if qk_layers else None
    source_enc, base_enc = pairs.runs(mode)
    source, source_metric = read_sites(
        model, source_enc, targets, metric, pairs.n, also=qk.read if qk is not None else None
    )
    if qk is not None:
        qk.fit(source)
    labels = {name: _axis_values(axes, ts, source, pairs, None, None) for name, axes, ts in plans}
    copies: list[int | None] = list(range(model.num_layers)) if grad_drop else [None]
    if grad_drop:
        _check_grad_drop(model)
    tables: dict[str, list[torch.Tensor]] = {t.key: [] for t in targets}
    base_metric = 0.0
    per_chunk = max(1, batch_size // pairs.n)
    for start in range(0, len(copies), per_chunk):
        chunk = copies[start : start + per_chunk]
        grads, seen, base_metric = _base_run(model, base_enc, targets, qk, chunk, metric, pairs.n)
        n = pairs.n
        for c in range(len(chunk)):
            rows = slice(c * n, (c + 1) * n)
            for (_, axes, ts), name in zip(plans, names):
                for t in ts:
                    tables[t.key].append(
                        _node_effects(t, axes, labels[name], source, seen, grads, qk, pairs, rows)
                    )
    results: dict[str, AttributionResult] = {}
    clean_metric, corrupted_metric = (
        (source_metric, base_metric) if mode == "denoise" else (base_metric, source_metric)
    )
    method = ("graddrop" if grad_drop else "atp") + ("+qk" if qk is not None else "")
    for name, axes, ts in plans:
        per_layer = []
        for t in ts:
            stacked = torch.stack(tables[t.key])  # (copies, n_prompts, *index)
            if grad_drop:
                per_layer.append(stacked.abs().sum(0).sum(0) / max(len(copies) - 1, 1))
            else:
                per_layer.append(stacked[0].sum(0))
        values = torch.stack(per_layer) if "layer" in axes else per_layer[0]
        results[name] = AttributionResult(
            values=values.cpu(),
            axes=axes,
            labels=labels[name],
            site=name,
            tokens=pairs.tokens,
            method=method,
            mode=mode,
            clean_metric=clean_metric,
            corrupted_metric=corrupted_metric,
        )
    return results[names[0]] if isinstance(sites, str) else results


class _QK:
    """What the QK fix needs per layer: queries, keys, probabilities and scores of both runs."""

    def __init__(self, model: StandardizedTransformer, layers: list[int]) -> None:
        self.layers = layers
        self.model = model
        self.sites: dict[int, dict[str, ToolSite]] = {}
        for layer in layers:
            entry: dict[str, ToolSite] = {}
            for what in ("queries", "keys", "attention_scores", "attention_probabilities"):
                name = f"{what}.{layer}"
                try:
                    entry[what] = ToolSite(resolve_name(model.binding, name), f"qk:{name}")
                except UnavailableError as error:
                    raise UnavailableError(model.model_type, "qk_fix", f"{name}: {error.reason}") from error
            self.sites[layer] = entry
        self.scale: dict[int, float] = {}
        self.source: dict[str, torch.Tensor] = {}
        self.keys: dict[int, dict[str, str]] = {}

    def read(self, edits: Edits, store: dict[str, torch.Tensor] | None = None) -> None:
        """Record what the fix needs (after the targets are added); with ``store``, probe the probabilities."""
        for layer, entry in self.sites.items():
            keys = self.keys.setdefault(layer, {})
            for what, site in entry.items():
                if what != "attention_probabilities":
                    keys[what] = edits.add(site, None, keep=True)
                elif store is not None:
                    edit = None if edits.edited(site) else probe(store, site.key)
                    keys[what] = edits.add(site, edit, keep=True)

    def fit(self, source: dict[str, torch.Tensor]) -> None:
        """Keep the source run's values (the scale is fitted once the base run is there)."""
        self.source = source

    def fit_with_base(self, seen: dict[str, torch.Tensor], rows: slice) -> None:
        for layer in self.sites:
            if layer in self.scale:
                continue
            k = self.keys[layer]
            scale, misfit = fit_scale(
                self.source[k["attention_scores"]],
                seen[k["attention_scores"]][rows],
                self.source[k["queries"]],
                self.source[k["keys"]],
                seen[k["queries"]][rows],
                seen[k["keys"]][rows],
            )
            if not misfit <= 1e-4:
                raise UnavailableError(
                    self.model.model_type,
                    "qk_fix",
                    f"the attention scores of layer {layer} are not scale * q.k plus a bias independent of q and k "
                    f"(relative misfit {misfit:.2g}; soft-capped or otherwise transformed scores): the softmax "
                    "cannot be recomputed from patched queries or keys",
                )
            self.scale[layer] = scale


class _DropBlock(torch.autograd.Function):
    """Identity on a layer's output; backward sends the masked rows' gradient to the layer input only (the skip)."""

    @staticmethod
    def forward(
        ctx: Any, output: torch.Tensor, layer_input: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(mask)
        return output.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        dropped = grad * mask
        return grad - dropped, dropped, None


def _check_grad_drop(model: StandardizedTransformer) -> None:
    binding = model.binding
    if binding.block in ("post_norm", "unknown") or (binding.sizes.n_streams or 1) > 1:
        raise UnavailableError(
            model.model_type,
            "grad_drop",
            f"GradDrop drops a block and keeps its residual skip; this model's blocks ({binding.block}, "
            f"{binding.sizes.n_streams or 1} residual streams) have no identity skip around the block",
        )


def _base_run(
    model: StandardizedTransformer,
    encoding: dict[str, torch.Tensor],
    targets: list[ToolSite],
    qk: _QK | None,
    copies: list[int | None],
    metric: Any,
    n: int,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
    """The base run (``len(copies)`` copies as rows, copy ``c`` dropping layer ``copies[c]``) and its gradients."""
    edits = Edits()
    store: dict[str, torch.Tensor] = {}
    rows = len(copies) * n
    for t in targets:
        edits.add(t, probe(store, t.key), keep=True)
    if any(c is not None for c in copies):
        for layer in range(model.num_layers):
            mask = torch.zeros(rows, 1, 1)
            for c, dropped in enumerate(copies):
                if dropped == layer:
                    mask[c * n : (c + 1) * n] = 1.0
            if not bool(mask.any()):
                continue
            inp = ToolSite(resolve_name(model.binding, f"layers_input.{layer}"), f"drop:in.{layer}")
            out = ToolSite(resolve_name(model.binding, f"layers_output.{layer}"), f"drop:out.{layer}")
            key = edits.add(inp, None, keep=True)
            # before any probe of the layer's output: the probe sees the gradient from above
            edits.add(out, _gate(edits, key, mask), first=True)
    if qk is not None:
        qk.read(edits, store)
    encoding = {k: v.repeat(len(copies), 1) for k, v in encoding.items()}
    saved: dict[str, torch.Tensor] = {}
    with grad_mode("attribution_patching"):
        with model.trace(encoding, **logits_kwargs(model, metric)):
            edits.run(model)
            saved["logits"] = model.logits.save()
        logits = saved["logits"]
        values = [
            metric_value(metric, logits[c * n : (c + 1) * n], n, need_grad=True) for c in range(len(copies))
        ]
        keys = list(store)
        grads = dict(zip(keys, _grad(torch.stack(values).sum(), [store[k] for k in keys])))
    seen = {k: v.detach() for k, v in edits.seen.items()}
    if qk is not None:
        qk.fit_with_base(seen, slice(0, n))
    return grads, seen, float(values[0].detach())


def _gate(edits: Edits, input_key: str, mask: torch.Tensor) -> Any:
    def gate(value: torch.Tensor) -> torch.Tensor:
        layer_input = edits.written.get(input_key, edits.seen[input_key])
        return _DropBlock.apply(value, layer_input, mask.to(value.device, value.dtype))

    return gate


def _node_effects(
    site: ToolSite,
    axes: tuple[str, ...],
    labels: dict[str, list[int]],
    source: dict[str, torch.Tensor],
    seen: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    qk: _QK | None,
    pairs: Pairs,
    rows: slice,
) -> torch.Tensor:
    """Per prompt, the estimated effect of each node of one layer's value: ``(n_prompts, *index)``."""
    pos_dim, unit_dim, unit_name = unit_dims(site.ref)
    layer = int(site.ref.layer or 0)
    if qk is not None and site.ref.site in ("queries", "keys") and layer in qk.sites:
        return _qk_effects(site, axes, labels, source, seen, grads, qk, pairs, rows)
    terms = (source[site.key].float() - seen[site.key][rows].float()) * grads[site.key][rows].float()
    keep = [d for d, axis in ((pos_dim, "position"), (unit_dim, unit_name)) if axis in axes and d is not None]
    order = [a for a in axes if a != "layer"]
    dims = sorted(keep)
    moved = terms.movedim(dims, list(range(1, 1 + len(dims)))) if dims else terms
    table = moved.reshape(*moved.shape[: 1 + len(dims)], -1).sum(-1)
    names = [("position" if d == pos_dim else unit_name) for d in dims]
    table = _select(table, names, labels, pairs)
    return table.permute(0, *[1 + names.index(a) for a in order]) if order else table


def _select(
    table: torch.Tensor, names: list[str | None], labels: dict[str, list[int]], pairs: Pairs
) -> torch.Tensor:
    """Keep the labelled positions (as columns) and units of a ``(n, *names)`` table."""
    for i, name in enumerate(names):
        index = pairs.columns(labels["position"]) if name == "position" else labels[name or ""]
        table = table.index_select(1 + i, torch.tensor(index, device=table.device))
    return table


def _qk_effects(
    site: ToolSite,
    axes: tuple[str, ...],
    labels: dict[str, list[int]],
    source: dict[str, torch.Tensor],
    seen: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    qk: _QK,
    pairs: Pairs,
    rows: slice,
) -> torch.Tensor:
    layer = int(site.ref.layer or 0)
    if site.ref.transform != "same":
        raise InputError(f"qk_fix takes the standardized names 'queries'/'keys'; got {site.ref.name!r}")
    entry = qk.keys[layer]
    probs_key = entry["attention_probabilities"]
    args = (
        seen[probs_key][rows],
        grads[probs_key][rows],
        seen[entry["attention_scores"]][rows],
    )
    per_position = "position" in axes
    if site.ref.site == "queries":
        table = query_effects(
            *args,
            seen[entry["queries"]][rows],
            qk.source[entry["queries"]],
            seen[entry["keys"]][rows],
            qk.scale[layer],
            per_position,
        )
    else:
        table = key_effects(
            *args,
            seen[entry["queries"]][rows],
            seen[entry["keys"]][rows],
            qk.source[entry["keys"]],
            qk.scale[layer],
            per_position,
        )
    # table: (n, heads, T) or (n, heads)
    names: list[str | None] = ["head"] + (["position"] if per_position else [])
    if "head" not in axes:
        table = table.sum(1)
        names = names[1:]
    table = _select(table, names, labels, pairs)
    order = [a for a in axes if a != "layer"]
    return table.permute(0, *[1 + names.index(a) for a in order]) if order else table
