"""Skipping the layers before a patch: rows that patch layer ``L`` reuse the unpatched run's layers below ``L``.

Shared by the activation-patching sweeps (`uniterp.patching`) and the patchscope
engine (`uniterp._patching`). A row patched at layer ``L`` computes the same
layers ``0 .. L - 1`` as the unpatched run, so a forward of such rows lets those
layers return the unpatched run's output (nnsight's ``skip``) and computes only
what the patch can change. Rows are packed by layer so that each forward skips
as much as it can while still batching enough rows, and the first forward carries
one unpatched row whose logits must equal the unpatched run's (`compare_logits`):
a model whose layers pass on more than their output (a second residual stream,
per-layer inputs) fails that check, and the caller then runs every layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ._layout import to_native

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["MIN_ROWS", "SkipMismatch", "compare_logits", "pack_layers", "skip_first_layers"]

#: Rows worth batching together even when it means skipping fewer layers.
MIN_ROWS = 32


class SkipMismatch(Exception):
    """The unpatched run rebuilt from skipped layers differs from the unpatched run."""


def pack_layers(sizes: dict[int, int], batch_size: int, min_rows: int = MIN_ROWS) -> list[list[int]]:
    """Consecutive layers packed into forwards of at least `MIN_ROWS` rows (at most ``batch_size``), deepest first.

    Example::

        >>> pack_layers({0: 9, 1: 9, 2: 9, 3: 9, 4: 9}, 64)
        [[4, 3, 2, 1], [0]]

    A forward skips the layers before its shallowest one, so small packs skip more;
    but a forward of a few rows uses the hardware poorly. Packs grow until they have
    ``min_rows`` rows or would exceed ``batch_size``.

    Args:
        sizes: Rows patched first at each layer.
        batch_size: Most rows in one forward.
        min_rows: Rows a pack takes before it is closed.
    """
    packs: list[list[int]] = []
    current: list[int] = []
    rows = 0
    for layer in sorted(sizes, reverse=True):
        size = sizes[layer]
        if current and (rows >= min_rows or rows + size > batch_size):
            packs.append(current)
            current, rows = [], 0
        current.append(layer)
        rows += size
    if current:
        packs.append(current)
    return packs


def skip_first_layers(model: StandardizedTransformer, layer: int, hidden: torch.Tensor) -> None:
    """Inside a trace: layers ``0 .. layer - 1`` do not run and each returns ``hidden`` ``(batch, seq, hidden)``.

    Only the last skipped layer's output is read by a running layer (or patched),
    so every skipped layer returns the same tensor.
    """
    if layer == 0:
        return
    binding = model.binding
    for i in range(layer):
        loc = binding.locator("layers_output", i)
        native = to_native(loc, hidden)
        if loc.key is None:
            model.layers[i].skip(native)
        else:
            items: list[Any] = [None] * loc.tuple_len
            items[loc.key] = native
            model.layers[i].skip(tuple(items))


def compare_logits(logits: torch.Tensor, reference: torch.Tensor) -> None:
    """Raise `SkipMismatch` when ``logits`` differ from ``reference`` beyond batching noise."""
    scale = max(1.0, float(reference.abs().max()))
    tolerance = (1e-4 if reference.dtype == torch.float32 else 2e-2) * scale
    diff = float((logits.float() - reference.float()).abs().max())
    if not diff <= tolerance:
        raise SkipMismatch(f"max |diff| {diff:.3g}")
