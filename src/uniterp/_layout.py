"""Where each standardized value sits: `Locator`, `Layout`, and the views between native and standard.

The probe that fills a `Layout` is in ``_layout_probe.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = ["FORWARD_ORDER", "LAYER_SITES", "FrozenDict", "Layout", "Locator", "to_native", "to_standard"]

#: Per-layer standardized values, in forward order.
LAYER_SITES: tuple[str, ...] = (
    "layers_input",
    "attentions_input",
    "attentions_output",
    "mlps_input",
    "mlps_output",
    "layers_output",
)


#: Every per-layer value, in the order a block computes them (attention before MLP). Reads
#: and writes inside one invoke must follow it; tools sort what they touch by it.
FORWARD_ORDER: tuple[str, ...] = (
    "layers_input",
    "attentions_input",
    "queries_pre_rotary",
    "keys_pre_rotary",
    "queries",
    "keys",
    "values",
    "attention_scores",
    "attention_probabilities",
    "head_outputs",
    "attentions_output",
    "attentions_output_normed",
    "residual_mid",
    "mlps_input",
    "router_logits",
    "expert_indices",
    "expert_weights",
    "mlp_neurons",
    "mlps_output",
    "mlps_output_normed",
    "layers_output",
)


@dataclass(frozen=True)
class Locator:
    """Where one value lives: a module, its input or output, and which element.

    Attributes:
        path: Native module path relative to the ``*ForCausalLM`` module.
        io: ``"input"`` or ``"output"``.
        key: For inputs, the positional index (int) or keyword name (str) of the
            hidden states; for outputs, the tuple index, or ``None`` for a tensor.
        flat: The module sees ``(batch * seq, hidden)`` instead of ``(batch, seq, hidden)``.
        tuple_len: Length of the output tuple (0 for a tensor output).
        tuple_nones: Indices of tuple elements that were ``None`` at probe time.
        clone: The model modifies this tensor in place later in the forward pass
            (Falcon adds the attention output into the MLP output), so a read
            takes a copy to keep the value as the module produced it.
        streams: How a value holding several residual streams per token is
            packed natively: ``"split"`` ``(batch, seq, n, hidden)``, ``"packed"``
            ``(batch, seq, n * hidden)`` or ``"leading"`` ``(n, batch, seq,
            hidden)``; it is always shown as ``(batch, seq, n, hidden)``.
        n_streams: Number of residual streams (1 without ``streams``).
        seq_first: The model keeps hidden states as ``(seq, batch, hidden)``
            (XLNet); they are shown as ``(batch, seq, hidden)``.
        op: An operation inside the module's forward (a ``.source`` label path,
            e.g. the attention-kernel call) whose input or output holds the value,
            instead of the module's own input or output.
        heads: The last dimension is ``heads * head_dim`` natively and shown split
            as ``(..., heads, head_dim)`` (the input of the attention's output
            projection).
        expect: The standard shape the value must have (``None`` for any size),
            checked when it is read; for values found by operation, not by the probe.
    """

    path: str
    io: Literal["input", "output"]
    key: int | str | None
    flat: bool = False
    tuple_len: int = 0
    tuple_nones: tuple[int, ...] = ()
    clone: bool = False
    streams: Literal["split", "packed", "leading"] | None = None
    n_streams: int = 1
    seq_first: bool = False
    op: tuple[str, ...] = ()
    heads: int | None = None
    expect: tuple[int | None, ...] | None = None


def to_standard(loc: Locator, value: torch.Tensor) -> torch.Tensor:
    """The native value at ``loc`` shown as ``(batch, seq, hidden)`` or ``(batch, seq, n_streams, hidden)`` (a view)."""
    if loc.seq_first:
        return value.transpose(0, 1)
    if loc.streams == "packed":
        return value.unflatten(-1, (loc.n_streams, -1))
    if loc.streams == "leading":
        return value.permute(1, 2, 0, 3)
    if loc.heads is not None:
        return value.unflatten(-1, (loc.heads, -1))
    return value


def to_native(loc: Locator, value: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_standard`: a standard-shaped value in the native packing."""
    if loc.seq_first:
        return value.transpose(0, 1)
    if loc.streams == "packed":
        return value.flatten(-2)
    if loc.streams == "leading":
        return value.permute(2, 0, 1, 3)
    if loc.heads is not None:
        return value.flatten(-2)
    return value


class FrozenDict(dict):  # type: ignore[type-arg]
    """A dict that refuses changes (picklable, unlike ``MappingProxyType``)."""

    def _refuse(self, *_: Any, **__: Any) -> None:
        raise TypeError("the layout is read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))


@dataclass(frozen=True)
class Layout:
    """The probe's findings for one model (read-only).

    Attributes:
        token_embeddings: Locator of the token embeddings.
        layers: One mapping per layer from a site name to its `Locator`.
        unavailable: One mapping per layer from a site name to the reason it is
            unavailable there.
        modules: One mapping per layer from ``self_attn``/``mlp`` to the native
            path (relative to the block) bound under that name.
        probed_with: ``"scan"`` (fake tensors, no weights) or ``"forward"``.
        final_norm_runs: Whether the final norm ran ``"after"`` the last layer in
            the probe forward, ``"before"`` it, or ``"never"``; ``None`` when the
            spec names no final norm module.
        embedding_width: Last dimension of ``token_embeddings`` (``hidden_size``
            except where the embedding is narrower and the projection to the hidden
            size comes after other additions, as in ELECTRA).
    """

    token_embeddings: Locator
    layers: tuple[Mapping[str, Locator], ...] = ()
    unavailable: tuple[Mapping[str, str], ...] = ()
    modules: tuple[Mapping[str, str], ...] = ()
    probed_with: str = "scan"
    embedding_width: int | None = None
    final_norm_runs: str | None = None

    @property
    def has_flat_sites(self) -> bool:
        """Whether any value is flattened and needs the batch shape to unflatten."""
        return any(loc.flat for layer in self.layers for loc in layer.values())

    @property
    def has_copies(self) -> bool:
        """Whether any value is handed out as a copy (the model edits it in place later)."""
        return (
            any(loc.clone for layer in self.layers for loc in layer.values()) or self.token_embeddings.clone
        )
