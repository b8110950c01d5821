"""Interventions behind `StandardizedTransformer.steer` and ``skip_layer(s)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._errors import InputError, ShapeError
from ._sites import normalize_layer

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
) -> None:
    """Add ``factor * steering_vector`` to ``layers_output`` (see `StandardizedTransformer.steer`)."""
    if not isinstance(steering_vector, torch.Tensor):
        steering_vector = torch.as_tensor(steering_vector)
    if steering_vector.ndim == 0 or steering_vector.shape[-1] != self.hidden_size:
        raise ShapeError(
            f"steering vector has shape {tuple(steering_vector.shape)}; expected its last "
            f"dimension to be hidden_size={self.hidden_size} for {self.model_type}"
        )
    indices = [layers] if isinstance(layers, int) else list(layers)
    if not indices:
        raise InputError("steer: no layers given")
    ordered = sorted({normalize_layer(self, i, "steer layers") for i in indices})
    for layer in ordered:
        hidden = self.layers_output[layer]
        rows = _index_tensor(batch_index, hidden.shape[0], hidden.device)
        cols = _index_tensor(token_positions, hidden.shape[1], hidden.device)
        vector = steering_vector.to(dtype=hidden.dtype, device=hidden.device) * factor
        if hidden.dim() == 4 and vector.dim() == 2:  # (positions, hidden) onto every residual stream
            vector = vector.unsqueeze(-2)
        steered = hidden.clone()
        steered[rows[:, None], cols[None, :]] += vector
        self.layers_output[layer] = steered


def skip_layer_range(
    self: StandardizedTransformer, start: int, end: int, skip_with: torch.Tensor | None
) -> None:
    """Skip layers ``start..end`` (see `StandardizedTransformer.skip_layers`)."""
    first = normalize_layer(self, start, "skip_layers start")
    last = normalize_layer(self, end, "skip_layers end")
    if last < first:
        raise InputError(f"skip_layers: end ({end}) comes before start ({start})")
    layout = self._ensure_layout()
    hidden = skip_with if skip_with is not None else self.layers_input[first]
    for layer in range(first, last + 1):
        loc = layout.layers[layer]["layers_output"]
        if loc.key is None:
            replacement: Any = hidden
        else:
            # Other tuple elements (attention weights) are not computed for a
            # skipped layer; they become None.
            items: list[Any] = [None] * loc.tuple_len
            items[loc.key] = hidden
            replacement = tuple(items)
        self.layers[layer].skip(replacement)


def _index_tensor(index: int | Sequence[int] | None, size: int, device: torch.device) -> torch.Tensor:
    if index is None:
        return torch.arange(size, device=device)
    values = [index] if isinstance(index, int) else list(index)
    tensor = torch.as_tensor(values, dtype=torch.long, device=device)
    if ((tensor < -size) | (tensor >= size)).any():
        raise InputError(f"index {values} out of range for a dimension of size {size}")
    return tensor % size
