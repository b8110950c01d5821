"""Reconstruction and sparsity metrics of SAEs, as pure functions of tensors.

Example::

    >>> latents = sae.encode(x)                                  # x: (n_tokens, d_in)
    >>> fvu(x, sae.decode(latents, x=x)), l0(latents)
    (tensor(0.0831), tensor(63.9))
    >>> evaluate_sae(sae, acts, mask=attention_mask)             # acts: (batch, seq, d_in)

Definitions, over the tokens ``t`` the mask keeps and the dimensions ``d``:

- ``fvu = sum_{t,d} (y - y_hat)^2 / sum_{t,d} (y - mean_t y)^2``: the squared
  error over the total variance around the per-dimension mean of the batch
  (sparsify's ``fvu``; SAELens's evaluation reports ``1 - fvu`` as
  ``explained_variance``, with the same total variance).
- ``explained_variance = 1 - fvu``.
- ``l0``: the mean over tokens of the number of nonzero latents.

Sums are taken in float32 (float64 inputs stay float64).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._errors import InputError, ShapeError
from ._base import SparseAutoencoder
from ._transcoder import Transcoder

__all__ = ["SAEMetrics", "evaluate_sae", "explained_variance", "fvu", "l0"]


def fvu(x: torch.Tensor, reconstruction: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of variance unexplained (see the module docstring for the formula).

    Example::

        >>> fvu(x, sae(x))                          # x, sae(x): (n_tokens, d_in) or (batch, seq, d_in)
        tensor(0.0831)

    Args:
        x: The true values, ``(..., d)``.
        reconstruction: The predicted values, same shape.
        mask: Optional bool ``(...)``: True for tokens to count (False for padding).

    Returns:
        A 0-dim tensor.
    """
    y, y_hat = _tokens(x, "x", mask), _tokens(reconstruction, "reconstruction", mask, like=x)
    if y.shape[0] < 2:
        raise InputError(
            f"FVU needs at least two tokens (the variance of one token is zero); got {y.shape[0]}"
        )
    total = (y - y.mean(dim=0)).pow(2).sum()
    if total == 0:
        raise InputError("FVU is undefined: every token has the same value (zero total variance)")
    return (y - y_hat).pow(2).sum() / total


def explained_variance(
    x: torch.Tensor, reconstruction: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``1 - fvu(x, reconstruction, mask)``.

    Example::

        >>> explained_variance(x, sae(x))
        tensor(0.9169)
    """
    return 1 - fvu(x, reconstruction, mask)


def l0(latents: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean number of nonzero latents per token.

    Example::

        >>> l0(sae.encode(x))                       # latents: (..., d_sae)
        tensor(63.9)

    Args:
        latents: ``(..., d_sae)``.
        mask: Optional bool ``(...)``: True for tokens to count.

    Returns:
        A 0-dim float tensor.
    """
    flat = _tokens(latents, "latents", mask, cast=False)
    if flat.shape[0] == 0:
        raise InputError("L0 needs at least one token; the mask keeps none")
    return (flat != 0).sum(dim=-1).to(torch.float64 if flat.dtype == torch.float64 else torch.float32).mean()


@dataclass(frozen=True)
class SAEMetrics:
    """`evaluate_sae`'s result.

    Attributes:
        fvu: Fraction of variance unexplained.
        explained_variance: ``1 - fvu``.
        l0: Mean number of active latents per token.
        n_tokens: Tokens counted.
    """

    fvu: float
    explained_variance: float
    l0: float
    n_tokens: int


@torch.no_grad()
def evaluate_sae(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    *,
    target: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> SAEMetrics:
    """FVU, explained variance and L0 of ``sae`` on activations ``x``.

    Example::

        >>> m = evaluate_sae(sae, acts, mask=attention_mask.bool())   # acts: (batch, seq, d_in)
        >>> m.fvu, m.l0

    Args:
        sae: An SAE, or a transcoder (then ``target`` is required).
        x: Input activations ``(..., d_in)``.
        target: A transcoder's true output ``(..., d_out)``.
        mask: Optional bool ``(...)`` over tokens.
    """
    if isinstance(sae, Transcoder) and target is None:
        raise InputError("a transcoder is evaluated against the output site's value: pass target=y")
    truth = target if isinstance(sae, Transcoder) else x
    latents = sae.encode(x)
    prediction = sae(x)
    value = fvu(truth, prediction.reshape(truth.shape), mask)
    count = _tokens(latents, "latents", mask, cast=False).shape[0]
    return SAEMetrics(
        fvu=float(value), explained_variance=float(1 - value), l0=float(l0(latents, mask)), n_tokens=count
    )


def _tokens(
    t: Any, name: str, mask: torch.Tensor | None, like: torch.Tensor | None = None, cast: bool = True
) -> torch.Tensor:
    """``t`` as ``(n_tokens, d)``, masked, in float32 (float64 kept)."""
    if not isinstance(t, torch.Tensor) or t.ndim < 1:
        raise InputError(f"{name} must be a tensor of shape (..., d); got {type(t).__name__}")
    if like is not None and t.shape != like.shape:
        raise ShapeError(f"{name} has shape {tuple(t.shape)} but x has {tuple(like.shape)}")
    flat = t.reshape(-1, t.shape[-1]) if t.ndim > 1 else t.reshape(1, -1)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(t.shape[:-1]):
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ShapeError(
                f"mask must have shape {tuple(t.shape[:-1])} (the token dimensions of {name}); got {got}"
            )
        flat = flat[mask.reshape(-1).to(device=flat.device, dtype=torch.bool)]
    if cast and flat.dtype != torch.float64:
        flat = flat.float()
    return flat
