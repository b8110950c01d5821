"""Weights on the model: ``model.W_Q[i]``, ``model.W_U``, ... in standard shapes.

A mixin (`WeightViews`) that `StandardizedTransformer` carries, over the plain
functions of `uniterp._weights` and `uniterp._mlp_weights`. Per-layer weights are
`LayerWeights` views (``model.W_O[3]``, ``model.W_O[-1]``, ``model.W_O.stack()``);
whole-model ones are tensors (``model.W_U``). The modules come from the binding
(``binding.layout.modules[i]``), so hybrid stacks and families whose MLP sits on the
decoder layer (OPT) are read where they are, and refused with the reason elsewhere.

Reading one layer's weights splits its fused projections once; the result is kept
on the model (`WeightViews.refresh_weights` forgets it, e.g. after editing
parameters that are not views: see `uniterp._weights` for which are).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from ._errors import UnavailableError, UniterpError
from ._mlp_weights import MLPWeights, mlp_weights
from ._nnsight_compat import native_module
from ._sites import normalize_layer
from ._weight_layouts import mlp_layout_for
from ._weights import (
    AttentionWeights,
    UnembeddingWeights,
    attention_weights,
    embedding_weights,
    positional_weights,
    unembedding_weights,
)

if TYPE_CHECKING:
    from ._model import StandardizedTransformer
    from ._support import ValueSupport

__all__ = [
    "ATTENTION_WEIGHTS",
    "MLP_WEIGHTS",
    "MODEL_WEIGHTS",
    "LayerWeights",
    "WeightViews",
    "layer_weight",
    "model_weight",
    "weight_support",
]

#: Per-layer attention weights and their shapes.
ATTENTION_WEIGHTS: dict[str, str] = {
    "W_Q": "(n_heads, hidden, head_dim)",
    "W_K": "(n_kv_heads, hidden, head_dim)",
    "W_V": "(n_kv_heads, hidden, head_dim)",
    "W_O": "(n_heads, head_dim, hidden)",
    "b_Q": "(n_heads, head_dim)",
    "b_K": "(n_kv_heads, head_dim)",
    "b_V": "(n_kv_heads, head_dim)",
    "b_O": "(hidden,)",
}
#: Per-layer dense-MLP weights and their shapes.
MLP_WEIGHTS: dict[str, str] = {
    "W_in": "(hidden, d_mlp)",
    "W_gate": "(hidden, d_mlp)",
    "W_out": "(d_mlp, hidden)",
    "b_in": "(d_mlp,)",
    "b_gate": "(d_mlp,)",
    "b_out": "(hidden,)",
}
#: Whole-model weights and their shapes.
MODEL_WEIGHTS: dict[str, str] = {
    "W_E": "(vocab, hidden)",
    "W_pos": "(n_positions, hidden)",
    "W_U": "(hidden, vocab)",
    "b_U": "(vocab,)",
}


def _store(model: Any) -> dict[Any, Any]:
    """The model's weight store (``(kind, layer) -> weights or the error``)."""
    store = model.__dict__.get("_uniterp_weights")
    if store is None:
        store = model.__dict__["_uniterp_weights"] = {}
    return store


def _ready(model: StandardizedTransformer) -> torch.nn.Module:
    """The native root module with real weights (loaded on first use)."""
    model.dispatch()
    return native_module(model)


def _block(model: StandardizedTransformer, layer: int) -> torch.nn.Module:
    return _ready(model).get_submodule(f"{model.binding.spec.layers}.{layer}")


def _attention(model: StandardizedTransformer, layer: int) -> AttentionWeights:
    store = _store(model)
    key = ("attention", layer)
    if key not in store:
        binding = model.binding
        rel = binding.layout.modules[layer].get("self_attn")
        try:
            if rel is None:
                reason = binding.reason("attentions_output", layer)
                if reason == "not located on this layer":
                    reason = "this layer has no softmax attention module"
                raise UnavailableError(model.model_type, "W_Q", reason)
            store[key] = attention_weights(
                _block(model, layer).get_submodule(rel), model.text_config, model.model_type
            )
        except UniterpError as error:
            store[key] = error
    found = store[key]
    if isinstance(found, UniterpError):
        raise found
    return found


def _mlp(model: StandardizedTransformer, layer: int) -> MLPWeights:
    store = _store(model)
    key = ("mlp", layer)
    if key not in store:
        binding = model.binding
        rel = binding.layout.modules[layer].get("mlp")
        try:
            if rel is not None:
                module = _block(model, layer).get_submodule(rel)
            else:
                row = mlp_layout_for(model.model_type, model.text_config)
                if row is None or not row.on_block:
                    reason = binding.reason("mlps_output", layer)
                    if reason == "not located on this layer":
                        reason = "this layer has no MLP module"
                    raise UnavailableError(model.model_type, "W_in", reason)
                module = _block(model, layer)  # OPT: fc1/fc2 on the decoder layer
            store[key] = mlp_weights(module, model.text_config, model.model_type)
        except UniterpError as error:
            store[key] = error
    found = store[key]
    if isinstance(found, UniterpError):
        raise found
    return found


def _renamed(error: UniterpError, model_type: str, name: str, layer: int | None) -> UniterpError:
    """``error`` as an `UnavailableError` naming the weight asked for (and its layer)."""
    reason = getattr(error, "reason", str(error))
    where = name if layer is None else f"{name}[{layer}]"
    return UnavailableError(model_type, where, reason)


def layer_weight(model: StandardizedTransformer, name: str, layer: int) -> torch.Tensor:
    """One per-layer weight of ``model``: ``layer_weight(model, "W_O", 3)`` is ``model.W_O[3]``.

    Example::

        >>> layer_weight(model, "W_Q", -1).shape          # (n_heads, hidden, head_dim)

    Args:
        model: The model.
        name: A key of `ATTENTION_WEIGHTS` or `MLP_WEIGHTS`.
        layer: Layer index (negative counts from the end).

    Raises:
        InputError: ``name`` is not a per-layer weight.
        LayerIndexError: ``layer`` is out of range.
        UnavailableError: The layer has no such weight, with the reason.
    """
    from ._errors import InputError

    if name not in ATTENTION_WEIGHTS and name not in MLP_WEIGHTS:
        known = ", ".join([*ATTENTION_WEIGHTS, *MLP_WEIGHTS])
        raise InputError(f"{name!r} is not a per-layer weight; known: {known}")
    i = normalize_layer(model, layer, name)
    try:
        if name in ATTENTION_WEIGHTS:
            return getattr(_attention(model, i), name)
        value = getattr(_mlp(model, i), name)
    except UniterpError as error:
        raise _renamed(error, model.model_type, name, i) from error
    if value is None:
        raise UnavailableError(model.model_type, f"{name}[{i}]", "the MLP is not gated (no gate projection)")
    return value


def model_weight(model: StandardizedTransformer, name: str) -> torch.Tensor:
    """A whole-model weight: ``model_weight(model, "W_U")`` is ``model.W_U``.

    Example::

        >>> model_weight(model, "W_U").shape              # (hidden, vocab)

    Raises:
        InputError: ``name`` is not one of `MODEL_WEIGHTS`.
        UnavailableError: The model has no such weight, with the reason.
    """
    from ._errors import InputError

    if name not in MODEL_WEIGHTS:
        raise InputError(f"{name!r} is not a whole-model weight; known: {', '.join(MODEL_WEIGHTS)}")
    store = _store(model)
    if name not in store:
        spec, root = model.binding.spec, _ready(model)
        try:
            if name in ("W_U", "b_U"):
                if spec.lm_head is None:
                    raise UnavailableError(model.model_type, name, "the model has no unembedding module")
                unembed: UnembeddingWeights = unembedding_weights(
                    root.get_submodule(spec.lm_head), model.text_config, model.model_type
                )
                store["W_U"], store["b_U"] = unembed.W_U, unembed.b_U
            elif name == "W_E":
                store[name] = embedding_weights(
                    root.get_submodule(spec.embed_tokens), model.text_config, model.model_type
                )
            else:
                store[name] = positional_weights(root, model.text_config, model.model_type)
        except UniterpError as error:
            store[name] = _renamed(error, model.model_type, name, None)
            if name in ("W_U", "b_U"):
                store["W_U" if name == "b_U" else "b_U"] = store[name]
    found = store[name]
    if isinstance(found, UniterpError):
        raise found
    return found


class LayerWeights:
    """One weight at every layer, e.g. ``model.W_O``.

    Example::

        >>> model.W_O[3].shape                 # (n_heads, head_dim, hidden)
        >>> model.W_O[-1]                      # the last layer's
        >>> model.W_O.stack().shape            # (n_layers, n_heads, head_dim, hidden)
        >>> model.W_in.available(0)            # False on a mixture-of-experts layer

    Tensors are detached, in the parameters' dtype and device, views of the
    parameters where the layout allows (see `uniterp._weights`).
    """

    def __init__(self, model: StandardizedTransformer, name: str) -> None:
        self._model = model
        self._name = name

    def __getitem__(self, index: int) -> torch.Tensor:
        return layer_weight(self._model, self._name, index)

    def __len__(self) -> int:
        return self._model.num_layers

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self)):
            yield self[i]

    def available(self, index: int) -> bool:
        """Whether layer ``index`` has this weight."""
        try:
            self[index]
        except UnavailableError:
            return False
        return True

    def unavailable(self) -> dict[int, str]:
        """Layer -> reason, for the layers without this weight."""
        reasons: dict[int, str] = {}
        for i in range(len(self)):
            try:
                self[i]
            except UnavailableError as error:
                reasons[i] = error.reason
        return reasons

    def stack(self) -> torch.Tensor:
        """Every layer's weight stacked: ``(n_layers, *shape)`` (a new tensor).

        Example::

            >>> model.W_Q.stack().shape        # (n_layers, n_heads, hidden, head_dim)

        Raises:
            UnavailableError: Some layers have no such weight; the message names them
                and says why.
        """
        missing = self.unavailable()
        if missing:
            by_reason: dict[str, list[int]] = {}
            for layer, reason in missing.items():
                by_reason.setdefault(reason, []).append(layer)
            text = "; ".join(f"layers {layers}: {reason}" for reason, layers in by_reason.items())
            raise UnavailableError(
                self._model.model_type, f"{self._name}.stack()", f"not every layer has {self._name} ({text})"
            )
        return torch.stack(list(self))

    def __repr__(self) -> str:
        shape = ATTENTION_WEIGHTS.get(self._name) or MLP_WEIGHTS.get(self._name)
        return f"<{self._name} {shape}: {len(self)} layers of {self._model.model_type}>"


def _layer_property(name: str, shape: str) -> property:
    def get(self: Any) -> LayerWeights:
        views = self.__dict__.get("_uniterp_weight_views")
        if views is None:
            views = self.__dict__["_uniterp_weight_views"] = {}
        if name not in views:
            views[name] = LayerWeights(self, name)
        return views[name]

    return property(get, doc=f"``{name}[i]``: {shape} per layer (`LayerWeights`; ``.stack()`` for all).")


def _model_property(name: str, shape: str) -> property:
    return property(lambda self: model_weight(self, name), doc=f"``{name}``: {shape}.")


class WeightViews:
    """Weights in standard (TransformerLens-like) shapes, as attributes of the model.

    Example::

        >>> model.W_Q[0].shape      # (n_heads, hidden, head_dim)
        >>> model.W_K[0].shape      # (n_kv_heads, hidden, head_dim): grouped heads stay grouped
        >>> model.W_O[-1].shape     # (n_heads, head_dim, hidden)
        >>> model.W_in[2].shape     # (hidden, d_mlp)
        >>> model.W_U.shape         # (hidden, vocab)
        >>> model.W_O.stack().shape # (n_layers, n_heads, head_dim, hidden)

    Per layer: ``W_Q``, ``W_K``, ``W_V``, ``W_O``, ``b_Q``, ``b_K``, ``b_V``, ``b_O``
    (attention), ``W_in``, ``W_gate``, ``W_out``, ``b_in``, ``b_gate``, ``b_out``
    (dense MLP). Whole model: ``W_E``, ``W_pos``, ``W_U``, ``b_U``. Conventions
    (pre-rotary queries, missing biases as zeros, the logit transforms not in
    ``W_U``) are those of `uniterp._weights` and `uniterp._mlp_weights`. Where a
    layer has no such weight (a mixture of experts, a state-space mixer, a fused
    layout not in the table) reading it raises `UnavailableError` with the reason;
    `weight_support` lists them all.
    """

    def refresh_weights(self) -> None:
        """Forget the weights read so far (read again on next use, e.g. after replacing parameters)."""
        self.__dict__.pop("_uniterp_weights", None)

    def weight_support(self) -> list[ValueSupport]:
        """Per weight, the layers that have it and why the others do not (see `weight_support`)."""
        return weight_support(self)  # type: ignore[arg-type]


for _name, _shape in {**ATTENTION_WEIGHTS, **MLP_WEIGHTS}.items():
    setattr(WeightViews, _name, _layer_property(_name, _shape))
for _name, _shape in MODEL_WEIGHTS.items():
    setattr(WeightViews, _name, _model_property(_name, _shape))


def weight_support(model: StandardizedTransformer) -> list[ValueSupport]:
    """Availability of every weight: per-layer ones with their layers and reasons, whole-model ones.

    Example::

        >>> for entry in weight_support(model):
        ...     print(entry.name, entry.layers, entry.unavailable or entry.reason)
        W_Q (0, 1, 2) {}
        ...
        W_pos () no learned absolute position table ...

    Returns `uniterp.ValueSupport` entries (the same records as ``model.support()``),
    so ``support_report`` can append them to its values.
    """
    from ._support import ValueSupport

    entries: list[ValueSupport] = []
    n = model.num_layers
    for name in [*ATTENTION_WEIGHTS, *MLP_WEIGHTS]:
        view = LayerWeights(model, name)
        missing = view.unavailable()
        layers = tuple(i for i in range(n) if i not in missing)
        entries.append(ValueSupport(name, per_layer=True, layers=layers, unavailable=missing))
    for name in MODEL_WEIGHTS:
        try:
            model_weight(model, name)
            reason = ""
        except UnavailableError as error:
            reason = error.reason
        entries.append(ValueSupport(name, per_layer=False, reason=reason))
    return entries
