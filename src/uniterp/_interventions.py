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
) -> None:
    """Add ``factor * steering_vector`` to ``layers_output`` (see `StandardizedTransformer.steer`)."""
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
        cols = _index_tensor(token_positions, hidden.shape[1], hidden.device, "token_positions")
        if steering_vector.ndim == 2 and steering_vector.shape[0] != len(cols):
            raise ShapeError(
                f"steer: the steering vector has {steering_vector.shape[0]} rows (n_positions, hidden) but "
                f"token_positions selects {len(cols)} positions of layers_output[{layer}] "
                f"{tuple(hidden.shape)}; give one row per position, or a (hidden,) vector"
            )
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
