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
from ._nnsight_compat import cache_selectable, native_module, select_cache_rows
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
