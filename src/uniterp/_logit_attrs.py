"""Norms applied to stacks of components, and direct logit attribution, on an `ActivationCache`.

`LogitAttribution.apply_ln_to_stack` applies a norm to every component with the scale
the norm computed on the cached residual, which makes it linear in the stack. Unlike
TransformerLens (whose weights have the norm's gain folded in, so it only centres and
divides), it also multiplies by the norm's gain; the bias belongs to no component and
is not added. `LogitAttribution.logit_attrs` then projects onto unembedding columns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ._aliases import normalize
from ._decompose import CacheBase, PosSlice, _pos
from ._errors import InputError, ShapeError, UnavailableError
from ._nnsight_compat import native_module
from ._paths import module_at
from ._weight_views import model_weight

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["LogitAttribution", "NormAffine", "norm_affine"]


class NormAffine:
    """How a norm maps its input: ``normalize(x) * gain + bias``, centring or not.

    Attributes:
        path: Native path of the norm.
        centers: Whether it subtracts the mean (a LayerNorm) before dividing.
        gain: ``(hidden,)`` or ``None`` (no gain).
        bias: ``(hidden,)`` or ``None`` (no bias).
    """

    def __init__(
        self, path: str, centers: bool, gain: torch.Tensor | None, bias: torch.Tensor | None
    ) -> None:
        self.path, self.centers, self.gain, self.bias = path, centers, gain, bias


def norm_affine(model: StandardizedTransformer, path: str, name: str) -> NormAffine:
    """The centring, gain and bias of the norm at ``path``, checked against the module itself.

    Example::

        >>> norm_affine(model, "model.norm", "ln_final").gain.shape     # (hidden,)

    The gain is the norm's ``weight`` or ``1 + weight`` (Gemma's convention), whichever
    reproduces the module's output on a random input; a norm neither reproduces is
    refused.

    Raises:
        UnavailableError: The norm is not ``normalize(x) * gain + bias`` for its weights.
    """
    store = model.__dict__.setdefault("_uniterp_weights", {})
    key = ("norm", path)
    if key not in store:
        store[key] = _read_affine(model, path, name)
    return store[key]


def _read_affine(model: StandardizedTransformer, path: str, name: str) -> NormAffine:
    model.dispatch()
    norm = native_module(model).get_submodule(path)
    kind = type(norm).__name__
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    weight = weight.detach() if isinstance(weight, torch.Tensor) else None
    bias = bias.detach() if isinstance(bias, torch.Tensor) else None
    width = weight.shape[-1] if weight is not None else model.binding.sizes.hidden_size
    like = weight if weight is not None else next(iter(norm.parameters()), None)
    dtype = like.dtype if like is not None else torch.float32
    device = like.device if like is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 3, width, generator=generator) * 3 + 0.5).to(device=device, dtype=dtype)
    with torch.no_grad():
        out = norm(x)
        base = normalize(norm, x, "normalized", model.model_type, name).float()
    centers = "rms" not in kind.lower()  # the rule `normalize` follows
    if isinstance(out, torch.Tensor) and out.shape == x.shape:
        out = out.float()
        # the candidate gain that reproduces the module, within a few ulps of its dtype
        tolerance = (1e-5 if dtype == torch.float32 else 16 * torch.finfo(dtype).eps) * max(
            1.0, float(out.abs().max())
        )
        for gain in [weight, 1 + weight] if weight is not None else [None]:
            predicted = base * gain.float() if gain is not None else base
            predicted = predicted + bias.float() if bias is not None else predicted
            if float((predicted - out).abs().max()) <= tolerance:
                return NormAffine(path, centers, gain, bias)
    raise UnavailableError(
        model.model_type,
        name,
        f"{path} ({kind}) does not compute normalize(x) * weight (+ bias) for its weights, so it cannot be "
        "applied to a stack of components with the cached scale",
    )


class LogitAttribution(CacheBase):
    """Norms with the cached scale and logit attribution (mixed into `uniterp.cache.ActivationCache`)."""

    def apply_ln_to_stack(
        self,
        residual_stack: torch.Tensor,
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: PosSlice = None,
    ) -> torch.Tensor:
        """A norm applied to every component with the scale of the cached residual: linear in the stack.

        Example::

            >>> stack = cache.decompose_resid(pos_slice=-1)            # (n, batch, hidden)
            >>> normed = cache.apply_ln_to_stack(stack, pos_slice=-1)  # final norm, cached scale
            >>> normed.sum(0) + ln_final_bias                          # == ln_final(final residual)

        Each component ``c`` becomes ``center(c) / scale * gain``: ``center`` subtracts the
        mean for LayerNorms (nothing for RMS norms), ``scale`` is the norm's divisor on the
        cached residual the norm actually read (``ln_final.hook_scale`` /
        ``blocks.{l}.ln1.hook_scale`` / ``ln2``), ``gain`` the norm's weight (``1 + weight``
        on Gemma). The bias, which belongs to no component, is not added, so the
        normed components sum to the norm's output minus its bias. TransformerLens
        centres and divides only (its weights have the gain folded in).

        Args:
            residual_stack: ``(n_components, batch, seq, hidden)`` (``seq`` as cut by
                ``pos_slice``; ``(n_components, batch, hidden)`` after an int ``pos_slice``).
            layer: ``None``/``-1``/``n_layers``: the final norm; else layer ``layer``'s
                attention norm (its MLP norm with ``mlp_input``).
            mlp_input: Use the MLP's norm, whose scale comes from ``residual_mid``.
            pos_slice: The positions the stack holds.

        Raises:
            ShapeError: The stack's shape does not match the cache's batch and positions.
            UnavailableError: No such norm, a readout that is not the final norm, or a
                norm that is not ``normalize(x) * gain + bias``.
        """
        upto = self._upto(layer, "apply_ln_to_stack")
        if not isinstance(residual_stack, torch.Tensor):
            raise InputError(f"apply_ln_to_stack takes a tensor; got {type(residual_stack).__name__}")
        stack = residual_stack if self.has_batch_dim else residual_stack.unsqueeze(1)
        return self._out(self._apply_ln(stack, upto, mlp_input, pos_slice))

    def _norm_for(self, layer: int, mlp_input: bool) -> tuple[str, str, str]:
        """(norm path, name for messages, cached residual it reads)."""
        binding = self.binding
        n = binding.sizes.num_layers
        if layer == n:
            if binding.lens_unavailable is not None:
                raise UnavailableError(binding.model_type, "ln_final", binding.lens_unavailable)
            root = native_module(self.model)
            extra = [path for path in binding.spec.pre_unembed if module_at(root, path) is not None]
            if extra:
                raise UnavailableError(
                    binding.model_type,
                    "ln_final",
                    f"the readout applies {', '.join(extra)} between the final norm and the unembedding",
                )
            return binding.spec.final_norm or "", "ln_final", f"layers_output.{n - 1}"
        role, base = ("mlp_norm", "residual_mid") if mlp_input else ("attention_norm", "layers_input")
        rel = binding.layout.modules[layer].get(role)
        if rel is None:
            which = "MLP" if mlp_input else "attention"
            raise UnavailableError(
                binding.model_type,
                f"blocks.{layer}.ln{2 if mlp_input else 1}",
                f"no norm before the {which} of layer {layer}",
            )
        self._require(base, layer, "apply_ln_to_stack")
        return (
            f"{binding.spec.layers}.{layer}.{rel}",
            f"blocks.{layer}.ln{2 if mlp_input else 1}",
            f"{base}.{layer}",
        )

    def _apply_ln(
        self, stack: torch.Tensor, layer: int, mlp_input: bool, pos_slice: PosSlice
    ) -> torch.Tensor:
        path, name, base_name = self._norm_for(layer, mlp_input)
        if not path:  # no final norm: the readout reads the residual as is
            return stack
        base = self._base(base_name, "apply_ln_to_stack")
        if base.dim() != 3:
            raise UnavailableError(
                self.binding.model_type, name, "the residual holds several streams per token"
            )
        norm = native_module(self.model).get_submodule(path)
        scale = _pos(normalize(norm, base, "scale", self.model.model_type, name), pos_slice, 1, self._seq())
        if (
            stack.dim() != scale.dim() + 1
            or stack.shape[1:-1] != scale.shape[:-1]
            or stack.shape[-1] != base.shape[-1]
        ):
            expected = ("n_components", *scale.shape[:-1], base.shape[-1])
            raise ShapeError(
                f"apply_ln_to_stack: the stack has shape {tuple(stack.shape)}; with this cache and pos_slice="
                f"{pos_slice!r} it must be {expected} (components first, then the cache's batch and positions)"
            )
        affine = norm_affine(self.model, path, name)
        x = stack - stack.mean(-1, keepdim=True) if affine.centers else stack
        x = x / scale.to(device=x.device, dtype=x.dtype)
        if affine.gain is not None:
            x = x * affine.gain.to(device=x.device, dtype=x.dtype)
        return x

    def logit_attrs(
        self,
        residual_stack: torch.Tensor,
        tokens: Any = None,
        incorrect_tokens: Any = None,
        pos_slice: PosSlice = None,
        *,
        directions: torch.Tensor | None = None,
        pre_softcap: bool = False,
    ) -> torch.Tensor:
        """Direct logit attribution: each component's share of the logit of ``tokens`` (or of ``directions``).

        Example::

            >>> stack, labels = cache.stack_head_results(pos_slice=-1, return_labels=True)
            >>> target = model.tokenizer(" Paris").input_ids[0]
            >>> attrs = cache.logit_attrs(stack, tokens=target, pos_slice=-1)   # (n_heads_total, batch)
            >>> diff = cache.logit_attrs(stack, tokens=[5, 6], incorrect_tokens=[7, 8], pos_slice=-1)

        The stack goes through the final norm with the cached scale and gain
        (`apply_ln_to_stack`), then onto the unembedding columns ``W_U[:, tokens]`` (minus
        ``W_U[:, incorrect_tokens]``), times the model's logit scale (Cohere) or divided by
        its divisor (Granite). So the attributions of a full decomposition of the final
        residual sum to ``logits - b_U - (ln_final.bias @ W_U)`` (times that scale) at
        those tokens. Models with a final-logit soft-cap (Gemma 2/3) are not linear in the
        residual: they are refused unless ``pre_softcap=True``, which attributes the
        logits before the cap (the ``lm_head`` output).

        Args:
            residual_stack: ``(n_components, batch, seq, hidden)`` or
                ``(n_components, batch, hidden)`` (after an int ``pos_slice``).
            tokens: A token id, a one-token string, or ids of shape ``(batch,)`` (one per
                prompt) or ``(batch, seq)`` (one per position).
            incorrect_tokens: Ids of the same shape, subtracted (a logit difference).
            pos_slice: The positions the stack holds (as when it was built).
            directions: Instead of tokens, directions ``(hidden,)`` (or broadcastable
                to the stack) in the final norm's output space.
            pre_softcap: On soft-capped models, attribute the logits before the cap.

        Returns:
            ``(n_components, batch, seq)`` or ``(n_components, batch)``.

        Raises:
            InputError: Neither or both of ``tokens`` and ``directions``; token ids
                outside the vocabulary.
            ShapeError: Tokens or directions that do not fit the stack.
            UnavailableError: A soft-capped model without ``pre_softcap``; a readout
                that is not the final norm and the unembedding.
        """
        if (tokens is None) == (directions is None):
            raise InputError(
                "logit_attrs: give tokens (ids whose logits to attribute) or directions, not both"
            )
        binding = self.binding
        if directions is None:
            if binding.logit_softcap is not None and not pre_softcap:
                raise UnavailableError(
                    binding.model_type,
                    "logit_attrs",
                    f"the logits are soft-capped (tanh(x / {binding.logit_softcap:g}) * {binding.logit_softcap:g}), "
                    "which is not linear in the residual stream; pass pre_softcap=True to attribute the logits "
                    "before the cap",
                )
            w_u = model_weight(self.model, "W_U")
            dirs = self._token_directions(w_u, tokens)
            if incorrect_tokens is not None:
                wrong = self._token_directions(w_u, incorrect_tokens)
                if wrong.shape != dirs.shape:
                    raise ShapeError(
                        f"logit_attrs: incorrect_tokens {tuple(wrong.shape[:-1])} must have the shape of tokens "
                        f"{tuple(dirs.shape[:-1])}"
                    )
                dirs = dirs - wrong
            factor = (binding.logit_scale or 1.0) / (binding.logit_divisor or 1.0)
            if factor != 1.0:
                dirs = dirs * factor
        else:
            if incorrect_tokens is not None:
                raise InputError("logit_attrs: incorrect_tokens goes with tokens, not with directions")
            if not isinstance(directions, torch.Tensor) or directions.dim() == 0:
                raise InputError("logit_attrs: directions must be a tensor (..., hidden)")
            dirs = directions if self.has_batch_dim or directions.dim() == 1 else directions.unsqueeze(0)
        normed = self.apply_ln_to_stack(residual_stack, None, pos_slice=pos_slice)
        normed = normed if self.has_batch_dim else normed.unsqueeze(1)
        dirs = dirs.to(device=normed.device, dtype=normed.dtype)
        inner = normed.shape[1:]
        if dirs.dim() == 2 and len(inner) == 3 and dirs.shape[0] == inner[0] and tokens is not None:
            dirs = dirs.unsqueeze(1)  # one token per prompt, every position
        try:
            broadcast = torch.broadcast_shapes(dirs.shape, inner)
        except RuntimeError:
            broadcast = None
        if broadcast != inner:
            raise ShapeError(
                f"logit_attrs: tokens/directions of shape {tuple(dirs.shape[:-1])} (+ hidden) do not fit the stack "
                f"{tuple(normed.shape)}: give one id, one per prompt (batch,), or one per position {tuple(inner[:-1])}"
            )
        return self._out((normed * dirs).sum(-1))

    def _token_directions(self, w_u: torch.Tensor, tokens: Any) -> torch.Tensor:
        """``W_U[:, tokens]`` moved to ``(*tokens.shape, hidden)``."""
        if isinstance(tokens, str):
            ids = self.model.tokenizer(tokens, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise InputError(f"logit_attrs: {tokens!r} is {len(ids)} tokens, not one; pass token ids")
            tokens = ids[0]
        try:
            ids = torch.as_tensor(tokens)
        except (TypeError, ValueError, RuntimeError) as error:
            raise InputError(f"logit_attrs: tokens must be token ids; got {tokens!r}") from error
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise InputError(f"logit_attrs: token ids must be integers; got {ids.dtype}")
        vocab = w_u.shape[-1]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise InputError(f"logit_attrs: token ids must be in [0, {vocab}); got {ids.min()}..{ids.max()}")
        if not self.has_batch_dim and ids.dim() >= 1:
            ids = ids.unsqueeze(0)
        return w_u[:, ids.to(w_u.device).long()].movedim(0, -1)
