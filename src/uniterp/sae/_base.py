"""Sparse autoencoders and transcoders as plain torch modules.

Example::

    >>> sae = SparseAutoencoder(512, 4096, architecture="topk", k=32)
    >>> latents = sae.encode(x)                       # (..., 4096)
    >>> x_hat = sae.decode(latents)                   # (..., 512)
    >>> out = sae.reconstruct_with_error(latents, x)  # == x, bit for bit, when latents are unedited

One class covers the architectures the saved formats use; what differs between
them is the activation function (the registry in ``_architectures``) and a few
options carried by the configs; `Transcoder` (``_transcoder``) extends it. Tensor names and layouts follow SAELens: ``W_enc`` is
``(d_in, d_sae)``, ``W_dec`` is ``(d_sae, d_out)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._errors import InputError, ShapeError
from ._architectures import ACTIVATIONS, ARCHITECTURES, check_k, tensor_shapes

__all__ = ["NORMALIZATIONS", "SAEMetadata", "SparseAutoencoder"]

NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm")
"""Input normalisations that need no stored statistics (see `SparseAutoencoder`)."""

_RESHAPES = ("none", "hook_z")
_LAYER_NORM_EPS = 1e-5  # SAELens's run-time layer norm


@dataclass
class SAEMetadata:
    """What a saved SAE says about where and how it was trained.

    Hook names are kept exactly as the format wrote them; translating them to a
    model's standardized sites is the attach step's job.

    Attributes:
        format: ``"saelens"``, ``"sparsify"``, ``"dictionary_learning"``, or None
            for an SAE built in code.
        hook_name: The input hook point, raw (``"blocks.8.hook_resid_pre"``,
            ``"layers.10"``, ``"resid_post_layer_3"``).
        hook_name_out: A transcoder's output hook point (None for an SAE).
        hook_io: Which value of the module named by ``hook_name`` is read, for
            formats that name modules rather than values: ``"out"`` (its output),
            ``"in"`` (its input) or ``"in_and_out"`` (a transcoder reading the
            input and predicting the output). None for SAELens, whose
            TransformerLens hook names already name a value.
        hook_layer: The layer index where the config gives one.
        hook_head_index: SAELens's ``hook_head_index`` (an SAE on one head).
        model_name: The model the SAE was trained on, where given.
        statistics: Declared statistics with canonical keys ``"l0"``,
            ``"explained_variance"``, ``"fvu"`` (only those the files declare).
        statistic_sources: For each statistic, the file and field it came from.
        config: The configuration as read, untouched.
        path: The folder it was loaded from.
    """

    format: str | None = None
    hook_name: str | None = None
    hook_name_out: str | None = None
    hook_io: str | None = None
    hook_layer: int | None = None
    hook_head_index: int | None = None
    model_name: str | None = None
    statistics: dict[str, float] = field(default_factory=dict)
    statistic_sources: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    path: str | None = None


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder: ``encode``, ``decode``, and the error term.

    Example::

        >>> sae = load_sae("path/to/sae")                  # or SparseAutoencoder(d_in, d_sae, ...)
        >>> latents = sae.encode(x)                        # x: (..., d_in) -> (..., d_sae)
        >>> x_hat = sae.decode(latents, x=x)               # (..., d_in)
        >>> latents[..., 7] = 0.0                          # an edit
        >>> out = sae.reconstruct_with_error(latents, x)   # x plus the effect of the edit

    Encoding, in order: cast ``x`` to the SAE's dtype; flatten heads
    (``reshape_activations="hook_z"``); normalise (``normalize_activations``);
    subtract ``b_dec`` (``apply_b_dec_to_input``); ``pre = x @ W_enc + b_enc``;
    multiply by the decoder row norms (``rescale_acts_by_decoder_norm``); the
    architecture's activation. Decoding undoes these: divide by the decoder row
    norms, ``latents @ W_dec + b_dec``, undo the normalisation, restore heads.
    Each direction is one matrix product; nothing loops over latents.

    Activations (``pre`` as above):

    - ``relu``: ``relu(pre)``.
    - ``jumprelu``: ``relu(pre) * (pre > threshold)``.
    - ``topk``: the ``k`` largest entries of ``pre`` per token, through a ReLU;
      the rest zero.
    - ``abstopk``: the ``k`` entries of ``pre`` largest in absolute value, with
      their signs (latents can be negative); the rest zero.
    - ``groupmax``: the latents split into ``k`` equal groups; per group the
      largest ``relu(pre)``; the rest zero (sparsify).
    - ``gated``: with ``p = x @ W_enc``, ``(p + b_gate > 0) * relu(p * exp(r_mag) + b_mag)``.

    Normalisations: ``"none"``; ``"constant_norm_rescale"`` multiplies each
    input by ``sqrt(d_in) / |x|`` and divides the reconstruction by the same
    factor; ``"layer_norm"`` centres and scales each input by its own mean and
    standard deviation (``(x - mean) / (std + 1e-5)``) and undoes it on the way
    out. Both need the input when decoding (``decode(latents, x=x)``). A
    normalisation by a dataset statistic (SAELens ``expected_average_only_in``)
    is folded into the weights by the loader when the factor is known.

    Args:
        d_in: Input width.
        d_sae: Number of latents.
        architecture: One of `ARCHITECTURES`.
        k: Active latents per token (``topk``) or number of groups (``groupmax``).
        apply_b_dec_to_input: Subtract ``b_dec`` from the input before encoding.
        normalize_activations: One of `NORMALIZATIONS`.
        rescale_acts_by_decoder_norm: Scale pre-activations by the decoder row
            norms before the activation and divide latents by them before decoding.
        reshape_activations: ``"hook_z"`` accepts ``(..., n_heads, d_head)``
            inputs and gives outputs of the same shape.
        skip_connection: Add ``x @ W_skip.T`` to ``forward`` (not to ``decode``).
        weights: Tensors by name (see `tensor_shapes`); zeros when omitted.
        dtype: Parameter dtype (default: the weights' dtype, else float32).
        device: Parameter device.
        metadata: Hook names, model name, declared statistics, ...
        d_out: Output width; an SAE's is ``d_in`` (`Transcoder` takes another).

    Parameters have ``requires_grad=False``; call ``requires_grad_()`` to train.
    """

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        architecture: str = "relu",
        k: int | None = None,
        apply_b_dec_to_input: bool = True,
        normalize_activations: str = "none",
        rescale_acts_by_decoder_norm: bool = False,
        reshape_activations: str = "none",
        skip_connection: bool = False,
        weights: Mapping[str, torch.Tensor] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        metadata: SAEMetadata | None = None,
        d_out: int | None = None,
    ) -> None:
        super().__init__()
        self.d_in = _positive_int(d_in, "d_in")
        self.d_sae = _positive_int(d_sae, "d_sae")
        self.d_out = self.d_in if d_out is None else _positive_int(d_out, "d_out")
        if self.d_out != self.d_in and not self.is_transcoder:
            raise InputError(
                f"an SAE reconstructs its input, so d_out={self.d_out} must equal d_in={self.d_in}; "
                "for a map between two sites use Transcoder(d_in, d_sae, d_out)"
            )
        if architecture not in ACTIVATIONS:
            raise InputError(
                f"unknown SAE architecture {architecture!r}; supported: {', '.join(ARCHITECTURES)}"
            )
        self.architecture = architecture
        self.k = check_k(architecture, k, self.d_sae)
        if normalize_activations not in NORMALIZATIONS:
            raise InputError(
                f"normalize_activations={normalize_activations!r} is not supported here; supported: "
                f"{', '.join(NORMALIZATIONS)}. A scaling by a dataset statistic "
                "('expected_average_only_in') must be folded into the weights: "
                "load_sae(path, norm_scaling_factor=...)"
            )
        if reshape_activations not in _RESHAPES:
            raise InputError(
                f"reshape_activations={reshape_activations!r} is not supported; supported: {', '.join(_RESHAPES)}"
            )
        if rescale_acts_by_decoder_norm and architecture == "gated":
            raise InputError("rescale_acts_by_decoder_norm is not defined for the gated architecture")
        if apply_b_dec_to_input and self.d_out != self.d_in:
            raise InputError(
                f"apply_b_dec_to_input=True needs b_dec in the input space, but d_out={self.d_out} "
                f"differs from d_in={self.d_in}"
            )
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.normalize_activations = normalize_activations
        self.rescale_acts_by_decoder_norm = bool(rescale_acts_by_decoder_norm)
        self.reshape_activations = reshape_activations
        self.metadata = metadata if metadata is not None else SAEMetadata()

        shapes = tensor_shapes(architecture, self.d_in, self.d_sae, self.d_out, skip_connection)
        if weights is None:
            weights = {
                name: torch.zeros(shape, dtype=dtype or torch.float32) for name, shape in shapes.items()
            }
        _check_weights(weights, shapes)
        dtype = dtype or weights["W_enc"].dtype
        if not dtype.is_floating_point:
            raise InputError(f"an SAE needs a floating-point dtype, got {dtype}")
        for name in shapes:
            tensor = weights[name].detach().to(device=device, dtype=dtype).contiguous()
            self.register_parameter(name, nn.Parameter(tensor, requires_grad=False))

    # --- metadata -----------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype; inputs are cast to it."""
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        """The parameters' device."""
        return self.W_enc.device

    @property
    def format(self) -> str | None:
        """The saved format it was loaded from (``metadata.format``)."""
        return self.metadata.format

    @property
    def hook_name(self) -> str | None:
        """The input hook point, raw as the format wrote it (``metadata.hook_name``)."""
        return self.metadata.hook_name

    @property
    def hook_name_out(self) -> str | None:
        """A transcoder's output hook point, raw (``metadata.hook_name_out``)."""
        return self.metadata.hook_name_out

    @property
    def hook_layer(self) -> int | None:
        """The layer the config names, where it names one (``metadata.hook_layer``)."""
        return self.metadata.hook_layer

    @property
    def model_name(self) -> str | None:
        """The model it was trained on, where given (``metadata.model_name``)."""
        return self.metadata.model_name

    @property
    def statistics(self) -> dict[str, float]:
        """Declared statistics (``"l0"``, ``"explained_variance"``, ``"fvu"``) where the files give them."""
        return self.metadata.statistics

    @property
    def is_transcoder(self) -> bool:
        """Whether it predicts another site (`Transcoder`) rather than reconstructing its input."""
        return False

    def extra_repr(self) -> str:
        parts = [f"d_in={self.d_in}", f"d_sae={self.d_sae}"]
        if self.d_out != self.d_in or self.is_transcoder:
            parts.append(f"d_out={self.d_out}")
        parts.append(f"architecture={self.architecture!r}")
        if self.k is not None:
            parts.append(f"k={self.k}")
        parts += [f"format={self.format!r}", f"hook_name={self.hook_name!r}"]
        if self.hook_name_out is not None:
            parts.append(f"hook_name_out={self.hook_name_out!r}")
        return ", ".join(parts)

    # --- the computation ----------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents of ``x``.

        Example::

            >>> sae.encode(torch.randn(2, 5, sae.d_in)).shape
            torch.Size([2, 5, 4096])

        Args:
            x: ``(..., d_in)``; with ``reshape_activations="hook_z"`` also
                ``(..., n_heads, d_head)``. Cast to the SAE's dtype.

        Returns:
            ``(..., d_sae)`` in the SAE's dtype.
        """
        flat = self._as_input(x, "x")
        h = self._normalize(flat)
        if self.apply_b_dec_to_input:
            h = h - self.b_dec
        if self.architecture == "gated":
            pre = h @ self.W_enc
        else:
            pre = h @ self.W_enc + self.b_enc
        if self.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        return ACTIVATIONS[self.architecture](self, pre)

    def decode(self, latents: torch.Tensor, *, x: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction from ``latents`` (the dictionary part; no skip term).

        Example::

            >>> sae.decode(sae.encode(x), x=x).shape == x.shape
            True

        Args:
            latents: ``(..., d_sae)``.
            x: The input the latents came from. Needed only when the SAE
                normalises each input by its own statistics
                (``constant_norm_rescale``, ``layer_norm``); with ``hook_z``
                it also gives the head layout of the result.

        Returns:
            ``(..., d_out)`` in the SAE's dtype (``(..., n_heads, d_head)`` for a
            ``hook_z`` SAE given a head-split ``x``).
        """
        if not isinstance(latents, torch.Tensor) or latents.shape[-1:] != (self.d_sae,):
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ShapeError(f"latents must have shape (..., d_sae={self.d_sae}); got {got}")
        self._check_device(latents, "latents")
        f = latents.to(self.dtype)
        if self.rescale_acts_by_decoder_norm:
            f = f * (1 / self.W_dec.norm(dim=-1))  # as SAELens 6.5x computes it
        out = f @ self.W_dec + self.b_dec
        if self.normalize_activations != "none" or (x is not None and self.reshape_activations == "hook_z"):
            if x is None:
                raise InputError(
                    f"this SAE normalises each input by its own statistics (normalize_activations="
                    f"{self.normalize_activations!r}), so decoding needs that input: decode(latents, x=x)"
                )
            flat = self._as_input(x, "x")
            if flat.shape[:-1] != out.shape[:-1]:
                raise ShapeError(
                    f"x has {tuple(flat.shape[:-1])} tokens but latents have {tuple(out.shape[:-1])}; "
                    "pass the input the latents were encoded from"
                )
            out = self._denormalize(out, flat)
            if x.shape[-1] != self.d_in:  # hook_z given (..., n_heads, d_head)
                out = out.reshape(x.shape)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x), x=x)``, plus ``x @ W_skip.T`` where there is a skip connection.

        Example::

            >>> sae(x).shape == x.shape
            True

        Args:
            x: ``(..., d_in)``.

        Returns:
            ``(..., d_out)`` in the SAE's dtype.
        """
        out = self.decode(self.encode(x), x=x)
        if "W_skip" in self._parameters:
            out = out + self._as_input(x, "x") @ self.W_skip.T
        return out

    def error(self, x: torch.Tensor) -> torch.Tensor:
        """The error term ``x - forward(x)`` (``x`` cast to the SAE's dtype).

        Example::

            >>> e = sae.error(x)                     # (..., d_in)
            >>> torch.allclose(sae(x) + e, x.to(sae.dtype))
            True

        Mathematically ``forward(x) + error(x) == x``; in floating point the
        sum can differ from ``x`` in the last bit. To put an SAE in a model
        without changing it, use `reconstruct_with_error`, which is exact.
        """
        return self._as_input(x, "x").reshape(x.shape) - self(x)

    def reconstruct_with_error(
        self,
        latents: torch.Tensor,
        x: torch.Tensor,
        *,
        clean_reconstruction: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``decode(latents) + error(x)``, exact when ``latents`` are unedited.

        Example::

            >>> latents = sae.encode(x)
            >>> torch.equal(sae.reconstruct_with_error(latents, x), x)   # bit for bit
            True
            >>> latents[..., 3] += 10.0
            >>> out = sae.reconstruct_with_error(latents, x)             # x + 10 * W_dec[3], up to rounding

        Computed as ``x - (decode(encode(x)) - decode(latents))``: with no edit
        the bracket is exactly ``+0.0`` and the result is ``x`` itself, sign of
        zero included. The difference is cast to ``x``'s dtype, so an fp32 SAE
        on a bf16 model returns a bf16 tensor.

        Args:
            latents: ``(..., d_sae)``, usually ``encode(x)`` edited.
            x: The input, ``(..., d_in)``, any float dtype.
            clean_reconstruction: ``decode(encode(x), x=x)`` if already computed.

        Returns:
            A tensor of ``x``'s shape and dtype.
        """
        return splice(self, latents, x, x, clean_reconstruction)

    # --- helpers ------------------------------------------------------------------------------

    def _as_input(self, x: Any, name: str) -> torch.Tensor:
        """``x`` as ``(..., d_in)`` in the SAE's dtype (heads flattened for ``hook_z``)."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise InputError(f"{name} must be a floating-point tensor; got {describe(x)}")
        self._check_device(x, name)
        if x.shape[-1:] == (self.d_in,):
            return x.to(self.dtype)
        if self.reshape_activations == "hook_z" and x.ndim >= 2 and x.shape[-2] * x.shape[-1] == self.d_in:
            return x.flatten(-2).to(self.dtype)
        heads = (
            " or (..., n_heads, d_head) with n_heads * d_head == d_in"
            if self.reshape_activations == "hook_z"
            else ""
        )
        raise ShapeError(f"{name} must have shape (..., d_in={self.d_in}){heads}; got {tuple(x.shape)}")

    def _check_device(self, t: torch.Tensor, name: str) -> None:
        if t.device != self.W_enc.device:
            raise InputError(
                f"{name} is on {t.device} but the SAE is on {self.W_enc.device}; move one of them "
                f"(sae.to({str(t.device)!r}))"
            )

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize_activations == "constant_norm_rescale":
            return x * (self.d_in**0.5 / x.norm(dim=-1, keepdim=True))
        if self.normalize_activations == "layer_norm":
            centred = x - x.mean(dim=-1, keepdim=True)
            return centred / (centred.std(dim=-1, keepdim=True) + _LAYER_NORM_EPS)
        return x

    def _denormalize(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.normalize_activations == "constant_norm_rescale":
            return out / (self.d_in**0.5 / x.norm(dim=-1, keepdim=True))
        if self.normalize_activations == "layer_norm":
            mean = x.mean(dim=-1, keepdim=True)
            return out * (x - mean).std(dim=-1, keepdim=True) + mean
        return out

    @torch.no_grad()
    def _fold_input_scale(self, scale: float) -> None:
        """Fold a constant input scaling (SAELens ``expected_average_only_in``) into the weights.

        The SAE was trained on ``x * scale`` and reconstructs ``x * scale``;
        afterwards it takes and returns ``x`` itself (as SAELens's
        ``fold_activation_norm_scaling_factor``).
        """
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)


def splice(
    sae: SparseAutoencoder,
    latents: torch.Tensor,
    x: torch.Tensor,
    base: torch.Tensor,
    clean: torch.Tensor | None,
) -> torch.Tensor:
    """``base - (clean - decode(latents))`` in ``base``'s dtype."""
    if clean is None:
        clean = sae.decode(sae.encode(x), x=x)
    edited = sae.decode(latents, x=x)
    if clean.shape != edited.shape:
        raise ShapeError(
            f"clean_reconstruction has shape {tuple(clean.shape)} but decode(latents) has {tuple(edited.shape)}"
        )
    delta = (clean - edited).to(base.dtype)
    return base - delta.reshape(base.shape)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{name} must be a positive int; got {value!r}")
    return value


def _check_weights(weights: Mapping[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> None:
    missing = [name for name in shapes if name not in weights]
    if missing:
        raise InputError(f"missing SAE tensors {missing}; this architecture needs {list(shapes)}")
    extra = [name for name in weights if name not in shapes]
    if extra:
        raise InputError(f"unexpected SAE tensors {extra}; this architecture takes {list(shapes)}")
    for name, shape in shapes.items():
        tensor = weights[name]
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"SAE tensor {name!r} must be a torch.Tensor; got {describe(tensor)}")
        if tuple(tensor.shape) != shape:
            raise ShapeError(f"SAE tensor {name!r} must have shape {shape}; got {tuple(tensor.shape)}")


def describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
