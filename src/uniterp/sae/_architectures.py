"""The architectures: tensor names and shapes, and the activation functions (a registry).

Example::

    >>> tensor_shapes("gated", 512, 4096)
    {'W_enc': (512, 4096), 'W_dec': (4096, 512), 'b_dec': (512,), 'b_gate': (4096,), 'b_mag': (4096,), 'r_mag': (4096,)}
    >>> ACTIVATIONS["topk"](sae, pre)        # pre-activations (..., d_sae) -> latents (..., d_sae)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .._errors import InputError

if TYPE_CHECKING:
    from ._base import SparseAutoencoder

__all__ = ["ACTIVATIONS", "ARCHITECTURES", "check_k", "tensor_shapes"]


def tensor_shapes(
    architecture: str, d_in: int, d_sae: int, d_out: int | None = None, skip: bool = False
) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors of an architecture (SAELens names).

    Example::

        >>> tensor_shapes("jumprelu", 512, 4096)
        {'W_enc': (512, 4096), 'W_dec': (4096, 512), 'b_dec': (512,), 'b_enc': (4096,), 'threshold': (4096,)}

    Args:
        architecture: One of `ARCHITECTURES`.
        d_in: Input width.
        d_sae: Number of latents.
        d_out: Output width (a transcoder's); ``d_in`` by default.
        skip: Whether there is a skip connection ``W_skip (d_out, d_in)``.
    """
    d_out = d_in if d_out is None else d_out
    shapes: dict[str, tuple[int, ...]] = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    if architecture == "gated":
        shapes.update(b_gate=(d_sae,), b_mag=(d_sae,), r_mag=(d_sae,))
    else:
        shapes["b_enc"] = (d_sae,)
    if architecture == "jumprelu":
        shapes["threshold"] = (d_sae,)
    if skip:
        shapes["W_skip"] = (d_out, d_in)
    return shapes


# --- activation functions: pre-activations (..., d_sae) -> latents (..., d_sae) -------------------


def _relu(sae: SparseAutoencoder, pre: torch.Tensor) -> torch.Tensor:
    return pre.relu()


def _jumprelu(sae: SparseAutoencoder, pre: torch.Tensor) -> torch.Tensor:
    return pre.relu() * (pre > sae.threshold).to(pre.dtype)


def _topk(sae: SparseAutoencoder, pre: torch.Tensor) -> torch.Tensor:
    values, indices = pre.topk(sae.k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, values.relu())


def _abstopk(sae: SparseAutoencoder, pre: torch.Tensor) -> torch.Tensor:
    indices = pre.abs().topk(sae.k, dim=-1, sorted=False).indices
    return torch.zeros_like(pre).scatter_(-1, indices, pre.gather(-1, indices))


def _groupmax(sae: SparseAutoencoder, pre: torch.Tensor) -> torch.Tensor:
    acts = pre.relu()
    values, indices = acts.unflatten(-1, (sae.k, -1)).max(dim=-1)
    group = sae.d_sae // sae.k
    offsets = torch.arange(0, sae.d_sae, group, device=pre.device)
    return torch.zeros_like(acts).scatter_(-1, indices + offsets, values)


def _gated(sae: SparseAutoencoder, pre: torch.Tensor) -> torch.Tensor:
    # ``pre`` is x @ W_enc without a bias: the gate and the magnitude share it.
    gate = (pre + sae.b_gate > 0).to(pre.dtype)
    magnitude = (pre * sae.r_mag.exp() + sae.b_mag).relu()
    return gate * magnitude


ACTIVATIONS: dict[str, Callable[[SparseAutoencoder, torch.Tensor], torch.Tensor]] = {
    "relu": _relu,
    "jumprelu": _jumprelu,
    "topk": _topk,
    "abstopk": _abstopk,
    "groupmax": _groupmax,
    "gated": _gated,
}
ARCHITECTURES = tuple(ACTIVATIONS)
"""Architectures: ``relu`` (SAELens "standard"), ``jumprelu``, ``topk``, ``groupmax`` (sparsify), ``gated``."""


def check_k(architecture: str, k: Any, d_sae: int) -> int | None:
    if architecture not in ("topk", "abstopk", "groupmax"):
        return None
    if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= d_sae:
        raise InputError(f"architecture {architecture!r} needs k, an int in [1, d_sae={d_sae}]; got {k!r}")
    if architecture == "groupmax" and d_sae % k:
        raise InputError(
            f"groupmax splits the latents into k={k} equal groups, but d_sae={d_sae} is not a multiple"
        )
    return k
