"""Residual decompositions on an `ActivationCache`: stacks of components that add up.

The methods of `CacheDecomposition` follow TransformerLens's ``ActivationCache`` names
and arguments, built from what each sub-block adds to the residual stream on this
model: the post-normed output on sandwich blocks (Gemma 2/3, OLMo 2), the output times
``residual_multiplier`` on Granite. A decomposition is refused (`UnavailableError`)
where the block layout makes the sum untrue (post-norm blocks, several residual
streams, per-head results across a post-attention norm); where the cache holds the
residual a decomposition should add up to, the sum is checked against it and a
mismatch is refused rather than returned. Norms and logits are in `uniterp._logit_attrs`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ._errors import InputError, LayerIndexError, UnavailableError
from ._weight_views import layer_weight, model_weight

if TYPE_CHECKING:
    from ._binding import Binding
    from ._model import StandardizedTransformer

__all__ = ["CacheBase", "CacheDecomposition", "PosSlice", "SumMismatchError"]

PosSlice = int | slice | list[int] | tuple[int, ...] | torch.Tensor | None


class SumMismatchError(UnavailableError):
    """A decomposition whose parts do not add up to the cached value on this model (so it is refused)."""


def _pos(value: torch.Tensor, pos_slice: PosSlice, dim: int, seq: int) -> torch.Tensor:
    """``value`` with ``pos_slice`` applied on dimension ``dim`` (an int drops the dimension)."""
    if pos_slice is None:
        return value
    if isinstance(pos_slice, bool):
        raise InputError(
            f"pos_slice must be an int, a slice, a list of ints or an index tensor; got {pos_slice!r}"
        )
    if isinstance(pos_slice, int):
        if not -seq <= pos_slice < seq:
            raise InputError(f"pos_slice {pos_slice} is outside the {seq} positions of the batch")
        return value.select(dim, pos_slice)
    if isinstance(pos_slice, slice):
        index: Any = pos_slice
    elif isinstance(pos_slice, (list, tuple, torch.Tensor)):
        index = torch.as_tensor(pos_slice, dtype=torch.long)
        if index.dim() != 1 or (index.numel() and not (-seq <= int(index.min()) and int(index.max()) < seq)):
            raise InputError(f"pos_slice {pos_slice!r} must be a 1-D list of positions in [-{seq}, {seq})")
        index = index.to(value.device)
    else:
        raise InputError(
            f"pos_slice must be an int, a slice, a list of ints or an index tensor; got {pos_slice!r}"
        )
    slicer = [slice(None)] * value.dim()
    slicer[dim] = index
    return value[tuple(slicer)]


def _sum_tolerance(parts: torch.Tensor) -> float:
    """Components added in another order than the model adds them: a few ulps per component."""
    eps = torch.finfo(parts.dtype).eps
    return 4 * parts.shape[0] * eps * max(1.0, float(parts.abs().max()))


class CacheBase:
    """What the decompositions read from an `ActivationCache` (its values, mask and model)."""

    model: StandardizedTransformer
    _values: dict[str, torch.Tensor]
    attention_mask: torch.Tensor
    input_ids: torch.Tensor
    has_batch_dim: bool
    binding: Binding

    # -- helpers ---------------------------------------------------------------------------------

    def _base(self, name: str, what: str) -> torch.Tensor:
        """The cached ``name`` with a batch dimension, or `InputError` saying how to cache it."""
        value = self._values.get(name)
        if value is None:
            raise InputError(
                f"{what} needs {name}, which is not in this cache: call run_with_cache with names=None "
                f"(the residual stream) or add {name!r} to names"
            )
        return value if self.has_batch_dim else value.unsqueeze(0)

    def _mask(self) -> torch.Tensor:
        mask = self.attention_mask
        return (mask if self.has_batch_dim else mask.unsqueeze(0)).bool()

    def _seq(self) -> int:
        return int(self.attention_mask.shape[-1])

    def _out(self, stack: torch.Tensor) -> torch.Tensor:
        return stack if self.has_batch_dim else stack.squeeze(1)

    def _upto(self, layer: int | None, what: str) -> int:
        n = self.binding.sizes.num_layers
        if layer is None or (isinstance(layer, int) and not isinstance(layer, bool) and layer == -1):
            return n
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n:
            raise LayerIndexError(
                f"{what}: layer={layer!r} must be an int in [0, {n}] (components before that layer), -1 or None (all)"
            )
        return layer

    def _require(self, site: str, layer: int, what: str) -> str:
        """``site.layer`` if the model has it, else `UnavailableError` with the binding's reason."""
        if self.binding.locator(site, layer) is None:
            raise UnavailableError(
                self.model.model_type, f"{what}: {site}[{layer}]", self.binding.reason(site, layer)
            )
        return f"{site}.{layer}"

    def _additive(self, what: str) -> None:
        """Refuse layouts whose residual stream is not a sum of the sub-blocks' outputs."""
        binding = self.binding
        if binding.sizes.n_streams > 1 or binding.spec.residual_streams:
            raise UnavailableError(
                binding.model_type,
                what,
                "the model keeps several residual streams per token and mixes them with learned weights, so one "
                "stream is not a sum of the sub-blocks' outputs",
            )
        if binding.block == "post_norm":
            raise UnavailableError(
                binding.model_type,
                what,
                "the blocks normalise the residual stream after each add (post-norm), so it is not a sum of the "
                "sub-blocks' outputs",
            )

    def _contribution(self, kind: str, layer: int, what: str) -> torch.Tensor:
        """What sub-block ``kind`` ("attention"/"mlp") of ``layer`` adds to the residual stream."""
        site = "attentions_output" if kind == "attention" else "mlps_output"
        if self.binding.locator(f"{site}_normed", layer) is not None:
            site = f"{site}_normed"  # sandwich blocks add the post-normed output
        value = self._base(self._require(site, layer, what), what)
        factor = self.binding.residual_factor
        return value * factor if factor != 1 else value

    def _target(self, layer: int, mlp_input: bool) -> str:
        n = self.binding.sizes.num_layers
        if layer == n:
            return f"layers_output.{n - 1}"
        return f"residual_mid.{layer}" if mlp_input else f"layers_input.{layer}"

    def _verify_sum(self, stack: torch.Tensor, target_name: str, what: str) -> None:
        """Refuse a decomposition whose components do not add up to the cached residual."""
        target = self._values.get(target_name)
        if target is None:
            if self.binding.block == "unknown":
                raise UnavailableError(
                    self.binding.model_type,
                    what,
                    f"the block layout was not recognised, so the sum is only trusted once checked: cache "
                    f"{target_name} too",
                )
            return
        target = target if self.has_batch_dim else target.unsqueeze(0)
        mask = self._mask().to(target.device)
        diff = float((stack.sum(0) - target)[mask].abs().max()) if mask.any() else 0.0
        if not diff <= _sum_tolerance(stack):
            raise SumMismatchError(
                self.binding.model_type,
                what,
                f"the components do not add up to {target_name} on this model (max |diff| {diff:.3g}, block "
                f"layout {self.binding.block!r}): the blocks add something else to the residual stream",
            )

    def _apply_ln(
        self, stack: torch.Tensor, layer: int, mlp_input: bool, pos_slice: PosSlice
    ) -> torch.Tensor:
        raise NotImplementedError  # `uniterp._logit_attrs.LogitAttribution`


class CacheDecomposition(CacheBase):
    """Decompositions of the cached residual stream (mixed into `uniterp.cache.ActivationCache`)."""

    # -- stacks ----------------------------------------------------------------------------------

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> Any:
        """The residual stream entering each layer up to ``layer``: ``(n_components, batch, seq, hidden)``.

        Example::

            >>> stack, labels = cache.accumulated_resid(return_labels=True)
            >>> labels                      # ['0_pre', '1_pre', ..., 'final_post']
            >>> cache.accumulated_resid(layer=2, incl_mid=True, pos_slice=-1).shape   # (4, batch, hidden)

        Args:
            layer: Stop at the input of this layer (included); ``None`` or ``-1``: every
                layer's input and the last layer's output (``"final_post"``).
            incl_mid: Also ``residual_mid`` of every layer before ``layer`` (``"{l}_mid"``;
                refused on parallel blocks, which have none).
            apply_ln: Apply ``layer``'s norm (the final norm for ``None``) with the
                cached scale (`apply_ln_to_stack`).
            pos_slice: Positions to keep: an int (drops the dimension), a slice, or a
                list of positions.
            mlp_input: Also ``residual_mid[layer]`` (the MLP's input side).
            return_labels: Return ``(stack, labels)``.
        """
        what = "accumulated_resid"
        n, upto = self.binding.sizes.num_layers, self._upto(layer, what)
        parts, labels = [], []
        for index in range(upto + 1):
            if index == n:
                parts.append(self._base(f"layers_output.{n - 1}", what))
                labels.append("final_post")
                break
            parts.append(self._base(self._require("layers_input", index, what), what))
            labels.append(f"{index}_pre")
            if (incl_mid and index < upto) or (mlp_input and index == upto):
                parts.append(self._base(self._require("residual_mid", index, what), what))
                labels.append(f"{index}_mid")
        stack = _pos(torch.stack(parts), pos_slice, 2, self._seq())
        if apply_ln:
            stack = self._apply_ln(stack, upto, mlp_input, pos_slice)
        stack = self._out(stack)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Any:
        """What each part of the model added to the residual stream: ``(n_components, batch, seq, hidden)``.

        Example::

            >>> stack, labels = cache.decompose_resid(return_labels=True)
            >>> labels          # ['embed', ('pos_embed',) '0_attn_out', '0_mlp_out', ..., '2_mlp_out']
            >>> torch.allclose(stack.sum(0), cache["layers_output.2"])   # the last layer's output
            True

        Components: ``"embed"`` (the residual stream entering layer 0; on models with a
        learned position table, ``"embed"`` is ``token_embeddings`` and ``"pos_embed"`` what
        the model adds to it before layer 0), then per layer ``"{l}_attn_out"`` and
        ``"{l}_mlp_out"``: what the sub-block adds to the residual stream (the post-normed
        output on sandwich blocks, times ``residual_multiplier`` on Granite). With
        ``incl_embeds`` and ``mode="all"`` they sum to the residual stream at ``layer``
        (checked against the cache when it holds that value).

        Args:
            layer: Components before this layer's input; ``None``/``-1``: all of them
                (summing to the last layer's output).
            mlp_input: Add ``layer``'s attention (summing to ``residual_mid[layer]``;
                refused on parallel blocks).
            mode: ``"all"``, ``"attn"`` or ``"mlp"``: which sub-blocks to include.
            apply_ln: Apply ``layer``'s norm with the cached scale (`apply_ln_to_stack`).
            pos_slice: Positions to keep (as in `accumulated_resid`).
            incl_embeds: Include the embedding components.
            return_labels: Return ``(stack, labels)``.

        Raises:
            UnavailableError: Post-norm blocks or several residual streams (the
                residual is not such a sum), a layer without an attention or MLP value,
                or components that do not add up to the cached residual.
            InputError: A needed value is not in the cache, or a bad ``mode``.
        """
        what = "decompose_resid"
        if mode not in ("all", "attn", "mlp"):
            raise InputError(f"{what}: mode must be 'all', 'attn' or 'mlp'; got {mode!r}")
        self._additive(what)
        n, upto = self.binding.sizes.num_layers, self._upto(layer, what)
        if mlp_input and upto == n:
            raise InputError(f"{what}: mlp_input=True needs a layer below {n} (the MLP of that layer)")
        if mlp_input:
            self._require("residual_mid", upto, what)
        parts: list[torch.Tensor] = []
        labels: list[str] = []
        if incl_embeds:
            parts, labels = self._embeddings(what)
        for index in range(upto):
            if mode != "mlp":
                parts.append(self._contribution("attention", index, what))
                labels.append(f"{index}_attn_out")
            if mode != "attn":
                parts.append(self._contribution("mlp", index, what))
                labels.append(f"{index}_mlp_out")
        if mlp_input and mode != "mlp":
            parts.append(self._contribution("attention", upto, what))
            labels.append(f"{upto}_attn_out")
        if not parts:
            raise InputError(
                f"{what}: no components (layer={layer!r}, mode={mode!r}, incl_embeds={incl_embeds})"
            )
        stack = torch.stack(parts)
        if incl_embeds and mode == "all":
            self._verify_sum(stack, self._target(upto, mlp_input), what)
        stack = _pos(stack, pos_slice, 2, self._seq())
        if apply_ln:
            stack = self._apply_ln(stack, upto, mlp_input, pos_slice)
        stack = self._out(stack)
        return (stack, labels) if return_labels else stack

    def _embeddings(self, what: str) -> tuple[list[torch.Tensor], list[str]]:
        first = self._base(self._require("layers_input", 0, what), what)
        try:
            model_weight(self.model, "W_pos")
        except UnavailableError:
            return [first], ["embed"]
        tokens = self._base("token_embeddings", what)
        if tokens.shape != first.shape:
            return [first], ["embed"]
        return [tokens, first - tokens], ["embed", "pos_embed"]

    def stack_head_results(
        self,
        layer: int | None = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: PosSlice = None,
        apply_ln: bool = False,
    ) -> Any:
        """Each head's contribution to the residual stream: ``(n_layers * n_heads, batch, seq, hidden)``.

        Example::

            >>> stack, labels = cache.stack_head_results(layer=2, return_labels=True)
            >>> labels[:2]          # ['L0H0', 'L0H1']
            >>> # per layer: the heads plus b_O give the attention output
            >>> torch.allclose(stack[:n_heads].sum(0) + model.b_O[0], cache["attentions_output.0"])
            True

        Head ``h`` of layer ``l`` contributes ``head_outputs[l][..., h, :] @ W_O[l][h]``
        (times ``residual_multiplier`` on Granite); the output bias ``b_O`` belongs to no
        head. Needs ``head_outputs`` of those layers in the cache; where the cache also
        holds ``attentions_output``, the heads plus ``b_O`` are checked against it.

        Args:
            layer: Heads of the layers before this one; ``None``/``-1``: every layer.
            return_labels: Return ``(stack, labels)`` with labels ``"L{l}H{h}"``.
            incl_remainder: Append ``"remainder"``: the residual at ``layer`` minus the
                heads (embeddings, MLPs and biases).
            pos_slice: Positions to keep (as in `accumulated_resid`).
            apply_ln: Apply ``layer``'s norm with the cached scale (`apply_ln_to_stack`).

        Raises:
            UnavailableError: Sandwich blocks (the post-attention norm sits between the
                output projection and the residual stream, so heads do not add up
                there), post-norm blocks, several residual streams, a layer without
                ``head_outputs`` or ``W_O``, or heads that do not add up to the cached
                attention output.
        """
        what = "stack_head_results"
        self._additive(what)
        upto, seq = self._upto(layer, what), self._seq()
        factor = self.binding.residual_factor
        parts: list[torch.Tensor] = []
        labels: list[str] = []
        for index in range(upto):
            if self.binding.locator("attentions_output_normed", index) is not None:
                norm = self.binding.layout.modules[index].get("attention_post_norm", "a post-attention norm")
                raise UnavailableError(
                    self.binding.model_type,
                    f"{what}: layer {index}",
                    f"the post-attention norm ({norm}) sits between the output projection and the residual "
                    "stream, so per-head contributions to the residual do not add up; head_outputs @ W_O gives "
                    "the heads' share of the attention output before that norm",
                )
            z = self._base(self._require("head_outputs", index, what), what)
            w_o = layer_weight(self.model, "W_O", index).to(device=z.device, dtype=z.dtype)
            z = _pos(z, pos_slice, 1, seq)
            heads = torch.einsum("...hd,hdm->h...m", z, w_o)
            self._verify_heads(heads, index, pos_slice, what)
            parts.append(heads * factor if factor != 1 else heads)
            labels += [f"L{index}H{h}" for h in range(heads.shape[0])]
        if not parts:
            raise InputError(f"{what}: layer={layer!r} leaves no layer before it")
        stack = torch.cat(parts)
        if incl_remainder:
            target = _pos(self._base(self._target(upto, False), what), pos_slice, 1, seq)
            stack = torch.cat([stack, (target - stack.sum(0)).unsqueeze(0)])
            labels.append("remainder")
        if apply_ln:
            stack = self._apply_ln(stack, upto, False, pos_slice)
        stack = self._out(stack)
        return (stack, labels) if return_labels else stack

    def _verify_heads(self, heads: torch.Tensor, layer: int, pos_slice: PosSlice, what: str) -> None:
        name = f"attentions_output.{layer}"
        if name not in self._values:
            return
        seq = self._seq()
        output = _pos(self._base(name, what), pos_slice, 1, seq)
        b_o = layer_weight(self.model, "b_O", layer).to(device=heads.device, dtype=heads.dtype)
        mask = _pos(self._mask(), pos_slice, 1, seq).to(heads.device)
        total = heads.sum(0) + b_o
        diff = float((total - output)[mask].abs().max()) if mask.any() else 0.0
        if not diff <= _sum_tolerance(torch.cat([heads, output.unsqueeze(0)])):
            raise SumMismatchError(
                self.binding.model_type,
                f"{what}: layer {layer}",
                f"head_outputs @ W_O + b_O differs from attentions_output (max |diff| {diff:.3g}): the attention "
                "does more after its output projection",
            )
