"""Path patching: a sender's effect on the metric through chosen receivers only.

Example::

    >>> from uniterp.path_patching import path_patch
    >>> result = path_patch(model, clean, corrupted, metric, senders=["head.3.1", "head.3.2", "mlp.3"],
    ...                     receivers=["q.5.0", "k.5.1", "mlp.5"])
    >>> result.values                     # the metric with each sender patched along those paths only

Nodes are named as in `uniterp.edges`: senders ``"head.L.h"`` (a head's output),
``"attn.L"`` (every head of the layer) or ``"mlp.L"``; receivers ``"q.L.h"`` /
``"k.L.g"`` / ``"v.L.g"`` (one head's query, or one key/value head's key or value,
as the attention kernel receives them), ``"attn.L"`` (the attention's input),
``"mlp.L"`` (the MLP's input) or ``"logits"`` (the last layer's output).

Two runs of the base prompts, each sender a group of rows (``mode="denoise"``:
the base is the corrupted run and the sender takes its clean value):

1. the sender takes its source value while every other head output and MLP
   output from the sender's layer on is held at its base value, so the stream
   differs from the base run only by the sender's direct write; the receivers'
   inputs are recorded;
2. the base run again with only the receivers' inputs replaced by the recorded
   ones: the metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._aliases import resolve_name
from ._errors import InputError
from ._pairs import check_mode, encode_pairs, positive_int
from ._probes import Edits, ToolSite, read_sites
from ._results import PatchResult
from .metrics import check_metric, logits_kwargs, metric_value

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["path_patch"]


def _parse(name: Any, kinds: tuple[str, ...], what: str, n_layers: int) -> tuple[str, int, int | None]:
    """``"head.3.1"`` -> ``("head", 3, 1)``; `InputError` for anything else."""
    parts = name.split(".") if isinstance(name, str) else []
    try:
        kind = parts[0]
        layer = n_layers if kind == "logits" and len(parts) == 1 else int(parts[1])
        index = int(parts[2]) if len(parts) == 3 else None
    except (IndexError, ValueError):
        kind, layer, index = "", -1, None
    wants_index = kind in ("head", "q", "k", "v")
    if kind not in kinds or (wants_index != (index is not None)) or not 0 <= layer <= n_layers:
        raise InputError(
            f"{what} {name!r} is not a node name; use {', '.join(_EXAMPLES[k] for k in kinds)} "
            f"(layers 0 to {n_layers - 1})"
        )
    if kind != "logits" and layer == n_layers:
        raise InputError(f"{what} {name!r}: layer {layer} is out of range (the model has {n_layers} layers)")
    return kind, layer, index


_EXAMPLES = {
    "head": "'head.L.h'",
    "attn": "'attn.L'",
    "mlp": "'mlp.L'",
    "q": "'q.L.h'",
    "k": "'k.L.g'",
    "v": "'v.L.g'",
    "logits": "'logits'",
}


def path_patch(
    model: StandardizedTransformer,
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    metric: Any,
    senders: str | Sequence[str],
    receivers: str | Sequence[str],
    *,
    mode: str = "denoise",
    batch_size: int = 64,
) -> PatchResult:
    """The metric when each sender is patched along its direct paths to ``receivers`` only.

    Example::

        >>> r = path_patch(model, "The capital of France is", "The capital of Japan is",
        ...                logit_diff(model, " Paris", " Tokyo"), senders=["head.2.0", "head.2.1"],
        ...                receivers=["logits"])
        >>> r.values, r.effects              # (n_senders,): metric and change from the base run

    Args:
        model: The model.
        clean: Clean prompt(s).
        corrupted: One corrupted prompt per clean prompt, of the same token length.
        metric: As for `uniterp.patching.patch_sweep`.
        senders: One sender or several (each its own rows): ``"head.L.h"``, ``"attn.L"``, ``"mlp.L"``.
        receivers: Where the sender's effect is let in: ``"q.L.h"``, ``"k.L.g"``, ``"v.L.g"``,
            ``"attn.L"``, ``"mlp.L"``, ``"logits"``; each after every sender.
        mode: ``"denoise"`` (clean sender into the corrupted run) or ``"noise"``.
        batch_size: Rows per forward.

    Returns:
        `PatchResult` with axis ``"sender"``.

    Raises:
        InputError: Malformed node names, a receiver not after a sender, and the
            errors of the sweeps.
        UnavailableError: A value a node needs does not exist on this model (e.g. the
            attention kernel's queries on a model that computes attention inline).
    """
    metric = check_metric(metric)
    mode = check_mode(mode)
    batch_size = positive_int(batch_size, "batch_size")
    n_layers = model.num_layers
    sender_names = [senders] if isinstance(senders, str) else list(senders)
    receiver_names = [receivers] if isinstance(receivers, str) else list(receivers)
    if not sender_names or not receiver_names:
        raise InputError("give at least one sender and one receiver")
    parsed_senders = [_parse(s, ("head", "attn", "mlp"), "sender", n_layers) for s in sender_names]
    parsed_receivers = [
        _parse(r, ("q", "k", "v", "attn", "mlp", "logits"), "receiver", n_layers) for r in receiver_names
    ]
    parallel = model.binding.block == "parallel"
    for s, (skind, slayer, _) in zip(sender_names, parsed_senders):
        for r, (rkind, rlayer, _) in zip(receiver_names, parsed_receivers):
            same_layer_ok = rlayer == slayer and skind != "mlp" and rkind == "mlp" and not parallel
            if not (rlayer > slayer or same_layer_ok):
                raise InputError(
                    f"receiver {r!r} does not read what sender {s!r} writes (it is not after it)"
                )
    pairs = encode_pairs(model, clean, corrupted, one_length=False)
    model.dispatch()
    source_enc, base_enc = pairs.runs(mode)
    first = min(layer for _, layer, _ in parsed_senders)
    last = min(max(layer for _, layer, _ in parsed_receivers), n_layers - 1)
    heads = [_site(model, f"head_outputs.{i}") for i in range(first, last + 1)]
    mlps = [_site(model, f"mlps_output.{i}") for i in range(first, last + 1)]
    receiver_sites = [_receiver_site(model, kind, layer) for kind, layer, _ in parsed_receivers]
    source, source_metric = read_sites(model, source_enc, heads + mlps, metric, pairs.n)
    base, base_metric = read_sites(model, base_enc, heads + mlps, metric, pairs.n)
    n = pairs.n
    per_chunk = max(1, batch_size // n)
    values: list[torch.Tensor] = []
    for start in range(0, len(parsed_senders), per_chunk):
        chunk = parsed_senders[start : start + per_chunk]
        rows = len(chunk)
        frozen = Edits()
        for site in heads + mlps:
            frozen.add(site, _held(site, source[site.key], base[site.key], chunk))
        keys = [frozen.add(site, None, keep=True) for site in receiver_sites]
        encoding = {k: v.repeat(rows, 1) for k, v in base_enc.items()}
        with torch.no_grad(), model.trace(encoding):
            frozen.run(model)
        recorded = {k: frozen.seen[k].detach().clone() for k in keys}
        patched = Edits()
        for site, key, (kind, _, index) in zip(receiver_sites, keys, parsed_receivers):
            patched.add(site, _receive(recorded[key], kind, index))
        saved: dict[str, torch.Tensor] = {}
        with torch.no_grad(), model.trace(encoding, **logits_kwargs(model, metric)):
            patched.run(model)
            saved["logits"] = model.logits.save()
        for g in range(rows):
            values.append(metric_value(metric, saved["logits"][g * n : (g + 1) * n], n).cpu())
    clean_metric, corrupted_metric = (
        (source_metric, base_metric) if mode == "denoise" else (base_metric, source_metric)
    )
    return PatchResult(
        values=torch.stack(values),
        axes=("sender",),
        labels={"sender": sender_names},
        site="path: " + ", ".join(receiver_names),
        tokens=pairs.tokens,
        mode=mode,
        clean_metric=clean_metric,
        corrupted_metric=corrupted_metric,
    )


def _site(model: StandardizedTransformer, name: str) -> ToolSite:
    return ToolSite(resolve_name(model.binding, name), name)


def _receiver_site(model: StandardizedTransformer, kind: str, layer: int) -> ToolSite:
    name = {
        "q": f"queries.{layer}",
        "k": f"keys.{layer}",
        "v": f"values.{layer}",
        "attn": f"attentions_input.{layer}",
        "mlp": f"mlps_input.{layer}",
        "logits": f"layers_output.{model.num_layers - 1}",
    }[kind]
    return _site(model, name)


def _held(
    site: ToolSite, source: torch.Tensor, base: torch.Tensor, chunk: list[tuple[str, int, int | None]]
) -> Any:
    """Base values for every row, except the sender's own value in its rows."""
    layer = int(site.ref.layer or 0)
    n = base.shape[0]
    mask = torch.zeros((len(chunk) * n, *base.shape[1:]), dtype=torch.bool)
    for g, (kind, sender_layer, index) in enumerate(chunk):
        if sender_layer != layer:
            continue
        rows = slice(g * n, (g + 1) * n)
        if kind == "mlp" and site.ref.site == "mlps_output":
            mask[rows] = True
        elif kind == "attn" and site.ref.site == "head_outputs":
            mask[rows] = True
        elif kind == "head" and site.ref.site == "head_outputs":
            mask[rows, :, index] = True

    def hold(value: torch.Tensor) -> torch.Tensor:
        repeat = [len(chunk)] + [1] * (base.dim() - 1)
        new = torch.where(mask, source.repeat(*repeat), base.repeat(*repeat))
        return new.to(value.device, value.dtype)

    return hold


def _receive(recorded: torch.Tensor, kind: str, index: int | None) -> Any:
    """The receiver's input from the recorded run (one head's slice for q/k/v receivers)."""

    def receive(value: torch.Tensor) -> torch.Tensor:
        new = recorded.to(value.device, value.dtype)
        if kind in ("q", "k", "v"):
            if not 0 <= int(index or 0) < value.shape[1]:
                raise InputError(f"{kind}.{index}: the layer has {value.shape[1]} such heads")
            merged = value.clone()
            merged[:, index] = new[:, index]
            return merged
        return new

    return receive
