"""The batched patching engine behind the patchscope tools.

Rows of one batched forward each patch a latent into one layer of one target
prompt; a shared key/value cache of the target tokens before the patched one is
reused across rows when every row patches at the same distance from the end.
"""

from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ._errors import InputError, ShapeError
from ._fastpath import Read, fast_path_available, read_values
from ._nnsight_compat import cache_selectable, drop_last_cache_tokens, native_module, select_cache_rows
from ._skipping import compare_logits, pack_layers, skip_first_layers
from ._tooling import as_prompt_list, pad_left, tokenize

if TYPE_CHECKING:
    from ._model import StandardizedTransformer
    from .patchscope import TargetPromptBatch

logger = logging.getLogger("uniterp")


@dataclass
class _Patch:
    """Row ``rows[i]`` gets ``latents[i]`` at layer ``layer``: ``rows (n,)``, ``latents (n, hidden)``."""

    layer: int
    rows: torch.Tensor
    latents: torch.Tensor


def _cache_kwarg(model: StandardizedTransformer) -> str | None:
    """Name of the key/value cache argument of the model's forward, if any."""
    params = inspect.signature(native_module(model).forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def _patched_probs(
    model: StandardizedTransformer,
    targets: list[list[int]],
    patch_pos: list[int],
    row_target: torch.Tensor,
    patches: list[_Patch],
    site: str,
    remote: bool | str,
    max_batch_size: int,
    prefix_cache: bool,
) -> torch.Tensor:
    """Next-token probabilities ``(n_rows, vocab)`` of patched target rows.

    Row ``r`` runs target ``row_target[r]`` (token ids ``targets[t]``, patched
    at non-negative position ``patch_pos[t]``); each `_Patch` writes its
    latents into ``getattr(model, site)[layer]`` of its rows at that position.
    """
    if max_batch_size < 1:
        raise InputError(f"max_batch_size must be at least 1; got {max_batch_size}")
    suffix = {len(ids) - pos for ids, pos in zip(targets, patch_pos, strict=True)}
    cache_name = _cache_kwarg(model)
    cached = (
        prefix_cache and not remote and cache_name is not None and len(suffix) == 1 and min(patch_pos) > 0
    )
    if cached and (model.binding.sizes.n_streams or 1) == 1:
        try:
            run = _run_targets(model, targets, patch_pos, cache_name)
            if run is not None:
                return _run_skipping(model, targets, row_target, patches, site, max_batch_size, run)
        except Exception as error:  # noqa: BLE001 - SkipMismatch, or layers that cannot be skipped
            logger.info(
                "uniterp: %s: skipping the layers before the patch failed (%s: %s); running every layer",
                model.model_type,
                type(error).__name__,
                error,
            )
    prefix: dict[str, Any] = {}
    if cached:
        prefix = _run_prefix(model, targets, patch_pos, cache_name)
        cached = prefix["cache"] is not None
    if cached:
        try:
            return _run_rows(
                model, targets, patch_pos, row_target, patches, site, remote, max_batch_size, prefix
            )
        except Exception as error:  # noqa: BLE001 - a cache the model cannot continue from
            logger.info(
                "uniterp: %s could not continue from the shared prefix cache (%s: %s); patching full prompts",
                model.model_type,
                type(error).__name__,
                error,
            )
    return _run_rows(model, targets, patch_pos, row_target, patches, site, remote, max_batch_size, {})


def _run_rows(
    model: StandardizedTransformer,
    targets: list[list[int]],
    patch_pos: list[int],
    row_target: torch.Tensor,
    patches: list[_Patch],
    site: str,
    remote: bool | str,
    max_batch_size: int,
    prefix: dict[str, Any],
) -> torch.Tensor:
    """Run the patched rows in chunks, continuing from ``prefix``'s cache when it has one."""
    cached = bool(prefix)
    n_rows = row_target.shape[0]
    values = getattr(model, site)
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, n_rows, max_batch_size):
            stop = min(start + max_batch_size, n_rows)
            chunk_targets = row_target[start:stop]
            plan = _chunk_plan(patches, start, stop)
            kwargs: dict[str, Any] = {}
            if cached:
                encoding, cols = _suffix_encoding(model, targets, prefix, chunk_targets)
                cache = copy.deepcopy(prefix["cache"])
                select_cache_rows(cache, chunk_targets)
                kwargs[prefix["cache_name"]] = cache
            else:
                rows_ids = [targets[int(t)] for t in chunk_targets]
                encoding = pad_left(model, rows_ids)
                width = encoding["input_ids"].shape[1]
                cols = torch.tensor([width - len(targets[int(t)]) + patch_pos[int(t)] for t in chunk_targets])
            with model.trace(encoding, remote=remote, **kwargs):
                for patch in plan:
                    # a copy: the value may be shared (Falcon feeds one normed tensor to attention and MLP)
                    hidden = values[patch.layer].clone()
                    rows = patch.rows.to(hidden.device)
                    hidden[rows, cols.to(hidden.device)[rows]] = patch.latents.to(hidden.device, hidden.dtype)
                    values[patch.layer] = hidden
                probs = model.next_token_probs.cpu().save()
            out.append(probs)
    return torch.cat(out, dim=0)


def _run_skipping(
    model: StandardizedTransformer,
    targets: list[list[int]],
    row_target: torch.Tensor,
    patches: list[_Patch],
    site: str,
    max_batch_size: int,
    run: dict[str, Any],
) -> torch.Tensor:
    """The rows from the shared prefix cache, each forward skipping the layers before its rows' first patch.

    ``run`` is `_run_targets`': the prefix cache, and the targets' own suffix (the
    tokens from the patched one on) at every layer. A row first patched at layer
    ``L`` starts from the targets' output of layer ``L - 1`` (`uniterp._skipping`).
    Rows patched only at the last layer's output, on the last token, need no
    forward at all: their probabilities are the lens of the latent,
    ``softmax(project_on_vocab(latent))``, where the lens is the model's readout.
    The first forward carries one unpatched row, checked against the targets' own
    logits (`SkipMismatch` if they differ).
    """
    n_rows, n_layers = row_target.shape[0], model.num_layers
    states, base_logits = run["states"], run["logits"]
    first = torch.full((n_rows,), n_layers, dtype=torch.long)
    for patch in patches:
        first[patch.rows] = torch.minimum(first[patch.rows], torch.full_like(patch.rows, patch.layer))
    out = torch.empty(n_rows, base_logits.shape[-1])
    unpatched = first == n_layers
    out[unpatched] = base_logits[row_target[unpatched]].float().softmax(-1).cpu()
    if site == "layers_output" and states[0].shape[1] == 1 and model.binding.lens_unavailable is None:
        for patch in patches:
            if patch.layer != n_layers - 1:
                continue
            keep = first[patch.rows] == n_layers - 1
            with torch.no_grad():
                logits = model.project_on_vocab(patch.latents[keep.to(patch.latents.device)])
            out[patch.rows[keep]] = logits.float().softmax(-1).cpu()
        first[first == n_layers - 1] = n_layers
    by_layer: dict[int, list[int]] = {}
    for row, layer in enumerate(first.tolist()):
        if layer < n_layers:
            by_layer.setdefault(layer, []).append(row)
    values = getattr(model, site)
    check = True
    sizes = {layer: len(rows) for layer, rows in by_layer.items()}
    for pack in pack_layers(sizes, max(1, max_batch_size - 1)):
        members = torch.tensor(sorted(row for layer in pack for row in by_layer[layer]), dtype=torch.long)
        chunk_targets = row_target[members]
        if check:
            chunk_targets = torch.cat([chunk_targets, chunk_targets[:1]])
        plan = _rows_plan(patches, members)
        skip = min(pack)
        encoding, cols = _suffix_encoding(model, targets, run, chunk_targets)
        cache = copy.deepcopy(run["cache"])
        select_cache_rows(cache, chunk_targets, from_layer=skip)
        saved: dict[str, torch.Tensor] = {}
        with torch.no_grad(), model.trace(encoding, **{run["cache_name"]: cache}):
            if skip > 0:
                hidden = states[skip - 1]
                skip_first_layers(model, skip, hidden[chunk_targets.to(hidden.device)])
            for patch in plan:
                hidden = values[patch.layer].clone()
                rows = patch.rows.to(hidden.device)
                hidden[rows, cols.to(hidden.device)[rows]] = patch.latents.to(hidden.device, hidden.dtype)
                values[patch.layer] = hidden
            saved["logits"] = model.logits[:, -1].save()
        logits = saved["logits"]
        if check:
            compare_logits(logits[-1:], base_logits[chunk_targets[-1:]])
            logits, check = logits[:-1], False
        out[members] = logits.float().softmax(-1).cpu()
    return out


def _run_targets(
    model: StandardizedTransformer, targets: list[list[int]], patch_pos: list[int], cache_name: str
) -> dict[str, Any] | None:
    """One forward of the whole targets: the key/value cache of the tokens before the patched one, and the
    suffix (the tokens from the patched one on) at every layer, ``(n_targets, k, hidden)``, with the last
    position's logits ``(n_targets, vocab)``. A cache that cannot drop the suffix again is rebuilt from a
    forward of the prefixes alone; ``None`` when the model returns no selectable cache."""
    k = len(targets[0]) - patch_pos[0]
    encoding = pad_left(model, targets)
    binding = model.binding
    locators = [binding.locator("layers_output", layer) for layer in range(model.num_layers)]

    def suffix(hidden: torch.Tensor) -> torch.Tensor:
        return hidden[:, -k:]

    if fast_path_available(model, locators):
        reads = {str(i): Read(loc, suffix) for i, loc in enumerate(locators)}
        found, output = read_values(model, encoding, reads, keep_output=True, use_cache=True)
        states = [found[str(i)] for i in range(len(locators))]
        logits, cache = output.logits[:, -1], getattr(output, cache_name, None)
        if cache is None:
            cache = getattr(output, "past_key_values", None)
    else:
        states, saved = [], {}
        with torch.no_grad(), model.trace(encoding, use_cache=True):
            for layer in range(model.num_layers):
                states.append(suffix(model.layers_output[layer]).save())
            output = model.output
            saved["logits"] = output.logits[:, -1].save()
            found_cache = getattr(output, cache_name, None)
            if found_cache is None:
                found_cache = getattr(output, "past_key_values", None)
            saved["cache"] = found_cache.save() if found_cache is not None else None
        logits, cache = saved["logits"], saved["cache"]
    if cache is not None and cache_selectable(cache) and drop_last_cache_tokens(cache, k):
        run = {
            "cache": cache,
            "cache_name": cache_name,
            "mask": encoding["attention_mask"][:, :-k],
            "lengths": torch.tensor([len(ids) - k for ids in targets]),
            "positions": "position_ids" in inspect.signature(native_module(model).forward).parameters,
        }
    else:  # a cache that cannot drop tokens (sliding windows): the prefix on its own
        run = _run_prefix(model, targets, patch_pos, cache_name)
        if run["cache"] is None:
            return None
    return {**run, "states": states, "logits": logits}


def _rows_plan(patches: list[_Patch], members: torch.Tensor) -> list[_Patch]:
    """The patches touching rows ``members`` (sorted), rows made local to them, in layer order."""
    position = torch.full((int(members.max()) + 1,), -1, dtype=torch.long)
    position[members] = torch.arange(len(members))
    plan = []
    for patch in sorted(patches, key=lambda p: p.layer):
        inside = patch.rows <= members.max()
        local = torch.full_like(patch.rows, -1)
        local[inside] = position[patch.rows[inside]]
        keep = local >= 0
        if bool(keep.any()):
            plan.append(_Patch(patch.layer, local[keep], patch.latents[keep.to(patch.latents.device)]))
    return plan


def _chunk_plan(patches: list[_Patch], start: int, stop: int) -> list[_Patch]:
    """The patches touching rows ``[start, stop)``, rows made chunk-local, in layer order."""
    plan = []
    for patch in sorted(patches, key=lambda p: p.layer):
        keep = (patch.rows >= start) & (patch.rows < stop)
        if bool(keep.any()):
            plan.append(
                _Patch(patch.layer, patch.rows[keep] - start, patch.latents[keep.to(patch.latents.device)])
            )
    return plan


def _run_prefix(
    model: StandardizedTransformer, targets: list[list[int]], patch_pos: list[int], cache_name: str
) -> dict[str, Any]:
    """Run each target's tokens before its patched one; keep the key/value cache."""
    prefixes = [ids[:pos] for ids, pos in zip(targets, patch_pos, strict=True)]
    encoding = pad_left(model, prefixes)
    with torch.no_grad():
        with model.trace(encoding, use_cache=True):
            output = model.output
            cache = getattr(output, cache_name, None)
            if cache is None:
                cache = getattr(output, "past_key_values", None)
            cache = cache.save() if cache is not None else None
    # hybrid caches hold layers (linear attention, state space) that cannot select rows
    usable = cache is not None and cache_selectable(cache)
    if not usable:
        logger.debug("uniterp: %s returned no selectable cache; patching full prompts", model.model_type)
    return {
        "cache": cache if usable else None,
        "cache_name": cache_name,
        "mask": encoding["attention_mask"],
        "lengths": torch.tensor([len(p) for p in prefixes]),
        "positions": "position_ids" in inspect.signature(native_module(model).forward).parameters,
    }


def _suffix_encoding(
    model: StandardizedTransformer,
    targets: list[list[int]],
    prefix: dict[str, Any],
    chunk_targets: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Inputs for the rows' tokens from the patched one on, after the shared prefix cache."""
    prefix_lengths = prefix["lengths"]
    rows = []
    for t in chunk_targets.tolist():
        rows.append(targets[t][int(prefix_lengths[t]) :])
    ids = torch.tensor(rows, dtype=torch.long)
    k = ids.shape[1]
    mask = torch.cat([prefix["mask"][chunk_targets], torch.ones((len(rows), k), dtype=torch.long)], dim=1)
    encoding = {"input_ids": ids, "attention_mask": mask}
    if prefix["positions"]:
        encoding["position_ids"] = prefix_lengths[chunk_targets].unsqueeze(1) + torch.arange(k)
    return encoding, torch.zeros(len(rows), dtype=torch.long)


def _target_tokens(
    model: StandardizedTransformer, batch: TargetPromptBatch
) -> tuple[list[list[int]], list[int], list[int]]:
    """Distinct target prompts' token ids, their patch positions (non-negative), and each prompt's target index."""
    keys: dict[tuple[str, int], int] = {}
    index: list[int] = []
    for prompt, position in zip(batch.prompts, batch.index_to_patch.tolist(), strict=True):
        index.append(keys.setdefault((prompt, int(position)), len(keys)))
    distinct = list(keys)
    ids = tokenize(model, as_prompt_list([p for p, _ in distinct], "target prompts"))
    positions = []
    for (prompt, position), row in zip(distinct, ids, strict=True):
        n = len(row)
        if not -n <= position < n:
            raise InputError(
                f"index_to_patch={position} is outside the target prompt {prompt!r}, which has {n} tokens "
                f"(valid: {-n} to {n - 1})"
            )
        positions.append(position % n)
    return ids, positions, index


def _check_latents(model: StandardizedTransformer, latents: Any, n_layers: int) -> torch.Tensor:
    if not isinstance(latents, torch.Tensor):
        raise ShapeError(f"latents must be a tensor; got {type(latents).__name__}")
    hidden = model.hidden_size
    if latents.ndim == 2:
        latents = latents.unsqueeze(0)
    if (
        latents.ndim != 3
        or latents.shape[1] != n_layers
        or latents.shape[2] != hidden
        or latents.shape[0] == 0
    ):
        raise ShapeError(
            f"latents have shape {tuple(latents.shape)}; expected (n_sources, n_layers={n_layers}, "
            f"hidden={hidden}), or (n_layers={n_layers}, hidden={hidden}) for one source"
        )
    return latents
