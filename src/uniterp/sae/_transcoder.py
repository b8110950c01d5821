"""Transcoders: an SAE's encoder on one site, a decoder predicting another site."""

from __future__ import annotations

from typing import Any

import torch

from .._errors import InputError, ShapeError
from ._base import SparseAutoencoder, describe, splice

__all__ = ["Transcoder"]


class Transcoder(SparseAutoencoder):
    """A transcoder: latents of one site's value predict another site's value.

    Example::

        >>> tc = load_sae("path/to/transcoder")            # hook_name -> hook_name_out
        >>> y_hat = tc(x)                                   # x: (..., d_in) -> (..., d_out)
        >>> latents = tc.encode(x)
        >>> y_new = tc.reconstruct_with_error(latents, x, target=y)   # == y when unedited

    Same encoder as `SparseAutoencoder` (``apply_b_dec_to_input`` only where
    ``d_out == d_in``; no input normalisation); ``forward(x) = latents @ W_dec
    + b_dec (+ x @ W_skip.T)``. The error term is measured against the output
    site's actual value ``target``.

    Args:
        d_in: Input width.
        d_sae: Number of latents.
        d_out: Output width.
        **kwargs: As `SparseAutoencoder` (``apply_b_dec_to_input`` defaults to False).
    """

    def __init__(self, d_in: int, d_sae: int, d_out: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("apply_b_dec_to_input", False)
        for option, plain in (("normalize_activations", "none"), ("reshape_activations", "none")):
            if kwargs.get(option, plain) != plain:
                raise InputError(
                    f"{option}={kwargs[option]!r} is not supported for transcoders (only {plain!r})"
                )
        super().__init__(d_in, d_sae, d_out=d_in if d_out is None else d_out, **kwargs)

    @property
    def is_transcoder(self) -> bool:
        return True

    def error(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """The error term ``target - forward(x)`` (``target`` cast to the transcoder's dtype).

        Example::

            >>> e = tc.error(x, target=y)           # (..., d_out)

        Args:
            x: The input site's value, ``(..., d_in)``.
            target: The output site's value, ``(..., d_out)``.
        """
        target = self._as_target(target, x)
        return target.to(self.dtype) - self(x)

    def reconstruct_with_error(  # type: ignore[override]
        self,
        latents: torch.Tensor,
        x: torch.Tensor,
        *,
        target: torch.Tensor | None = None,
        clean_reconstruction: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``target - (decode(encode(x)) - decode(latents))``: ``target`` bit for bit when unedited.

        Example::

            >>> torch.equal(tc.reconstruct_with_error(tc.encode(x), x, target=y), y)
            True

        The skip term does not depend on the latents and cancels.

        Args:
            latents: ``(..., d_sae)``.
            x: The input site's value, ``(..., d_in)``.
            target: The output site's value, ``(..., d_out)`` (required).
            clean_reconstruction: ``decode(encode(x))`` if already computed.

        Returns:
            A tensor of ``target``'s shape and dtype.
        """
        return splice(self, latents, x, self._as_target(target, x), clean_reconstruction)

    def _as_target(self, target: Any, x: torch.Tensor) -> torch.Tensor:
        if target is None:
            raise InputError(
                "a transcoder's error term is measured against the output site's value: pass target=y "
                f"(the value at {self.hook_name_out!r})"
            )
        if not isinstance(target, torch.Tensor) or not target.is_floating_point():
            raise InputError(f"target must be a floating-point tensor; got {describe(target)}")
        if target.shape[-1:] != (self.d_out,) or target.shape[:-1] != x.shape[:-1]:
            raise ShapeError(
                f"target must have shape (..., d_out={self.d_out}) with the same leading shape as x "
                f"{tuple(x.shape[:-1])}; got {tuple(target.shape)}"
            )
        self._check_device(target, "target")
        return target
