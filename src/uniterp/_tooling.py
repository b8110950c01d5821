"""Helpers shared by the research tools: prompt and layer arguments, left-padded
encodings, remote registration, last-token reads."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._errors import InputError
from ._fastpath import Read, fast_path_available, read_values
from ._sites import normalize_layer

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

logger = logging.getLogger("uniterp")


_REGISTERED: list[bool] = []


def use_remote(remote: bool | str) -> None:
    """Register uniterp with nnsight (once) so remote traces can ship its code."""
    if remote and not _REGISTERED:
        import nnsight

        import uniterp

        nnsight.register(uniterp)
        _REGISTERED.append(True)
        logger.debug("uniterp: registered with nnsight for remote serialisation")


def as_prompt_list(prompts: Any, name: str = "prompts") -> list[str]:
    """``prompts`` as a non-empty list of non-empty strings, or `InputError`."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise InputError(f"{name} must be a string or a list of strings; got {type(prompts).__name__}")
    if not prompts:
        raise InputError(f"{name} is empty: pass at least one prompt")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise InputError(f"{name}[{i}] is a {type(prompt).__name__}, expected a string")
        if not prompt:
            raise InputError(f"{name}[{i}] is an empty string")
    return list(prompts)


def as_layer_list(model: StandardizedTransformer, layers: Any, name: str = "layers") -> list[int]:
    """``layers`` (None, an int or a sequence) as non-negative layer indices, in the given order."""
    if layers is None:
        return list(range(model.num_layers))
    values = (
        [layers]
        if isinstance(layers, int) or (isinstance(layers, torch.Tensor) and layers.ndim == 0)
        else list(layers)
    )
    if not values:
        raise InputError(f"{name}: the list of layers is empty")
    return [normalize_layer(model, layer, name) for layer in values]


def as_position_list(positions: Any) -> list[int]:
    """``positions`` (an int or a sequence of ints) as a non-empty list."""
    if isinstance(positions, torch.Tensor):
        positions = positions.tolist()
    values = [positions] if isinstance(positions, int) else list(positions)
    if not values or any(isinstance(p, bool) or not isinstance(p, int) for p in values):
        raise InputError(f"positions must be an int or a non-empty list of ints; got {positions!r}")
    return values


def tokenize(model: StandardizedTransformer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt as the model's trace would encode it (special tokens included)."""
    encoded = model.tokenizer(prompts)["input_ids"]
    for prompt, ids in zip(prompts, encoded, strict=True):
        if len(ids) == 0:
            raise InputError(f"the prompt {prompt!r} tokenizes to no tokens")
    return [list(ids) for ids in encoded]


def pad_left(model: StandardizedTransformer, rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Left-pad token id lists into ``input_ids`` and ``attention_mask``: ``(batch, seq)``."""
    width = max(len(row) for row in rows)
    tokenizer = model.tokenizer
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.as_tensor(list(row), dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def encode_prompts(
    model: StandardizedTransformer, prompts: list[str]
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Left-padded encoding of ``prompts`` and each prompt's token count."""
    rows = tokenize(model, prompts)
    return pad_left(model, rows), [len(row) for row in rows]


def _last(value: torch.Tensor) -> torch.Tensor:
    return value[:, -1, :]


def last_token_states(
    model: StandardizedTransformer, prompts: list[str], layers: list[int], site: str, remote: bool | str
) -> torch.Tensor:
    """``getattr(model, site)[l]`` at each prompt's last token: ``(n_prompts, n_layers, hidden)``.

    One forward (left-padded), stopped after the deepest layer; layers in the
    order given. The result stays on the model's device.
    """
    encoding, _ = encode_prompts(model, prompts)
    order = sorted(set(layers))
    binding = model.binding
    locators = [binding.locator(site, layer) for layer in order]
    if all(loc is not None for loc in locators) and fast_path_available(model, locators, remote):
        found, _ = read_values(
            model, encoding, {layer: Read(loc, _last) for layer, loc in zip(order, locators)}
        )
        first = found[order[0]].device
        return torch.stack([found[layer].to(first) for layer in layers], dim=1)
    values = getattr(model, site)
    read: dict[int, torch.Tensor] = {}
    stacked: list[torch.Tensor] = []
    with torch.no_grad():
        with model.trace(encoding, remote=remote) as tracer:
            for layer in order:
                read[layer] = values[layer][:, -1, :]
            device = read[order[0]].device
            for layer in layers:
                stacked.append(read[layer].to(device))
            states = torch.stack(stacked, dim=1).save()
            tracer.stop()
    return states
