"""Interventions behind `StandardizedTransformer.steer` and ``skip_layer(s)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._errors import InputError, ShapeError
from ._layout import to_native
from ._sites import conform, normalize_layer

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["skip_layer_range", "steer_layers"]


def steer_layers(
    self: StandardizedTransformer,
    layers: int | Sequence[int],
    steering_vector: torch.Tensor,
    factor: float,
    token_positions: int | Sequence[int] | None,
    batch_index: int | Sequence[int] | None,
    prompt_positions: int | Sequence[int] | None = None,
) -> None:
    """Add ``factor * steering_vector`` to ``layers_output`` (see `StandardizedTransformer.steer`)."""
    if prompt_positions is not None and token_positions is not None:
        raise InputError(
            "steer: pass token_positions (columns) or prompt_positions (within each prompt), not both"
        )
    if not isinstance(steering_vector, torch.Tensor):
        try:
            steering_vector = torch.as_tensor(steering_vector)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ShapeError(
                f"steer: the steering vector must be a tensor (hidden,); got {steering_vector!r}"
            ) from error
    if steering_vector.ndim not in (1, 2) or steering_vector.shape[-1] != self.hidden_size:
        raise ShapeError(
            f"steering vector has shape {tuple(steering_vector.shape)}; expected (hidden,) or "
            f"(n_positions, hidden) with hidden_size={self.hidden_size} for {self.model_type}"
        )
    if not steering_vector.is_floating_point():
        steering_vector = steering_vector.float()
    indices = [layers] if isinstance(layers, int) else list(layers)
    if not indices:
        raise InputError("steer: no layers given")
    ordered = sorted({normalize_layer(self, i, "steer layers") for i in indices})
    for layer in ordered:
        hidden = self.layers_output[layer]
        rows = _index_tensor(batch_index, hidden.shape[0], hidden.device, "batch_index")
        if prompt_positions is not None:
            cols = _prompt_columns(self, prompt_positions, hidden)[rows]  # (rows, n_positions)
        else:
            cols = _index_tensor(token_positions, hidden.shape[1], hidden.device, "token_positions")
        n_cols = cols.shape[-1] if cols.dim() == 2 else len(cols)
        if steering_vector.ndim == 2 and steering_vector.shape[0] != n_cols:
            raise ShapeError(
                f"steer: the steering vector has {steering_vector.shape[0]} rows (n_positions, hidden) but "
                f"the positions select {n_cols} positions of layers_output[{layer}] "
                f"{tuple(hidden.shape)}; give one row per position, or a (hidden,) vector"
            )
        vector = steering_vector.to(dtype=hidden.dtype, device=hidden.device) * factor
        if hidden.dim() == 4 and vector.dim() == 2:  # (positions, hidden) onto every residual stream
            vector = vector.unsqueeze(-2)
        steered = hidden.clone()
        steered[rows[:, None], cols if cols.dim() == 2 else cols[None, :]] += vector
        self.layers_output[layer] = steered


def skip_layer_range(
    self: StandardizedTransformer, start: int, end: int, skip_with: torch.Tensor | None
) -> None:
    """Skip layers ``start..end`` (see `StandardizedTransformer.skip_layers`)."""
    first = normalize_layer(self, start, "skip_layers start")
    last = normalize_layer(self, end, "skip_layers end")
    if last < first:
        raise InputError(f"skip_layers: end ({end}) comes before start ({start})")
    binding = self.binding
    current = self.layers_input[first]
    hidden = current if skip_with is None else conform("skip_with", self.model_type, skip_with, current)
    for layer in range(first, last + 1):
        loc = binding.locator("layers_output", layer)
        native = to_native(loc, hidden)
        if loc.key is None:
            replacement: Any = native
        else:
            # Other tuple elements (attention weights) are not computed for a
            # skipped layer; they become None.
            items: list[Any] = [None] * loc.tuple_len
            items[loc.key] = native
            replacement = tuple(items)
        self.layers[layer].skip(replacement)


def _index_tensor(
    index: int | Sequence[int] | None, size: int, device: torch.device, name: str
) -> torch.Tensor:
    if index is None:
        return torch.arange(size, device=device)
    values = [index] if isinstance(index, int) else list(index)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise InputError(f"steer: {name} must be an int or a non-empty list of ints; got {index!r}")
    if any(not -size <= v < size for v in values):
        raise InputError(f"steer: {name} {values} out of range for a dimension of size {size}")
    return torch.as_tensor(values, dtype=torch.long, device=device) % size


def _prompt_columns(
    self: StandardizedTransformer, positions: int | Sequence[int], hidden: torch.Tensor
) -> torch.Tensor:
    """Columns ``(batch, n_positions)`` of positions within each prompt, from this forward's attention mask."""
    from ._nnsight_compat import invoke_rows
    from ._positions import mask_columns

    values = [positions] if isinstance(positions, int) else list(positions)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise InputError(
            f"steer: prompt_positions must be an int or a non-empty list of ints; got {positions!r}"
        )
    mask = self._runtime.mask
    if mask is None:
        raise InputError(
            "steer: prompt_positions needs the batch's attention mask, which this run does not expose (a "
            "remote run, or a forward without attention_mask); pass token_positions (columns) instead"
        )
    rows = invoke_rows(mask.shape[0])
    if rows is not None:
        mask = mask[rows[0] : rows[1]]
    if mask.shape[0] != hidden.shape[0]:
        raise InputError(
            f"steer: the attention mask covers {mask.shape[0]} rows but layers_output has {hidden.shape[0]}"
        )
    return mask_columns(mask, values).to(hidden.device)
