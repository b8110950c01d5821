"""Readable/writable views of standardized values inside a trace.

``model.layers_output`` is a `LayerValues`; indexing it inside ``model.trace()``
reads the value, assigning to an index writes it, keeping the other elements of a
tuple output intact. Every write is checked against the value it replaces (same
shape; floating dtypes are cast to the model's, other dtypes refused), and a read
the forward pass has already gone past names the standardized value.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import torch

from ._errors import (
    InputError,
    LayerIndexError,
    OrderError,
    OutsideTraceError,
    ShapeError,
    UnavailableError,
)
from ._layout import Locator, to_native, to_standard
from ._nnsight_compat import OutOfOrderError, in_step_loop, in_trace, source_op

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = [
    "AttentionProbabilities",
    "AttentionScores",
    "LayerList",
    "LayerValues",
    "conform",
    "normalize_layer",
    "raise_order_error",
    "read_value",
    "write_value",
]

_FORWARD_ORDER = (
    "inside one invoke, read and write values in the order the model computes them: layer by layer, and "
    "within a layer layers_input, attentions_input, attentions_output, mlps_input, mlps_output, "
    "layers_output; logits last"
)


class _OrderError(OrderError, OutOfOrderError):
    """`OrderError` that nnsight also recognises as its own ``OutOfOrderError``."""


def outside_trace(name: str) -> OutsideTraceError:
    """The error for reading or writing ``name`` with no trace running."""
    return OutsideTraceError(
        f"{name} can only be read or written inside `with model.trace(...)` (or `model.generate(...)`)"
    )


def require_trace(name: str) -> None:
    """Raise `OutsideTraceError` unless intervention code of a trace is running."""
    if not in_trace():
        raise outside_trace(name)


def raise_order_error(name: str, error: Exception) -> NoReturn:
    """Raise the uniterp error for ``name``, requested after the forward pass went past it.

    Inside a ``tracer.iter`` loop nnsight's own error is raised unchanged: that is
    how nnsight ends a loop that asked for a step the generation did not make.
    """
    if in_step_loop() or isinstance(error, OrderError):
        raise error
    raise _OrderError(
        f"{name} was requested after the forward pass had already run past it: {_FORWARD_ORDER}. Read it "
        f"before the values that come after it, or in a second `tracer.invoke(...)`. ({error})"
    ) from error


def _target(model: StandardizedTransformer, loc: Locator) -> Any:
    """The envoy whose input/output holds the value: the module's, or an operation's inside it."""
    envoy = model._envoy(loc.path)
    return source_op(envoy, loc.op) if loc.op else envoy


def _native_value(model: StandardizedTransformer, name: str, loc: Locator) -> Any:
    """The value at ``loc`` as the module sees it (before unflattening or re-layout)."""
    envoy = _target(model, loc)
    try:
        if loc.io == "output":
            value = envoy.output
            return value if loc.key is None else value[loc.key]
        args, kwargs = envoy.inputs
    except OutOfOrderError as error:
        raise_order_error(name, error)
    return args[loc.key] if isinstance(loc.key, int) else kwargs[loc.key]


def _unflatten(model: StandardizedTransformer, value: torch.Tensor) -> torch.Tensor:
    shape = model._runtime.batch_shape
    if shape is None:  # pragma: no cover - the pre-hook always runs first
        raise UnavailableError(model.model_type, "flattened value", "batch shape unknown")
    return value.view(*shape, value.shape[-1])


def read_value(model: StandardizedTransformer, name: str, loc: Locator) -> torch.Tensor:
    """Read the value at ``loc`` in the running trace, shaped ``(batch, seq, hidden)``.

    Values of models with several residual streams are ``(batch, seq, n_streams, hidden)``.
    Where the model edits the value in place later, a copy is returned (and an
    in-place edit of it is refused at the end of the layer).
    """
    value = _native_value(model, name, loc)
    if loc.flat:
        value = _unflatten(model, value)
    if loc.clone:
        value = value.clone()
        model._runtime.watch(name, value)
    value = to_standard(loc, value)
    if loc.expect is not None:
        _check_expected(model, name, loc, value)
    return value


def _check_expected(model: StandardizedTransformer, name: str, loc: Locator, value: Any) -> None:
    """A value found by operation must have the shape the binding expects, or it is refused."""
    shape = tuple(getattr(value, "shape", ()))
    expect = loc.expect or ()
    if len(shape) != len(expect) or any(e is not None and e != d for e, d in zip(expect, shape)):
        wanted = "(" + ", ".join("*" if e is None else str(e) for e in expect) + ")"
        hint = ""
        if len(shape) == len(expect) and expect[-1] is not None and shape[-1] < expect[-1]:
            hint = " (it receives part of each head: a partial rotary embedding)"
        raise UnavailableError(
            model.model_type,
            name,
            f"{loc.path}.source.{'.'.join(loc.op)} receives {loc.io} {loc.key} of shape {shape}, not "
            f"{wanted}{hint}",
        )


def conform(name: str, model_type: str, value: Any, current: torch.Tensor) -> torch.Tensor:
    """``value`` ready to replace ``current`` (same shape; dtype and device cast), or a uniterp error.

    Example::

        >>> conform("layers_output[0]", "llama", torch.zeros(2, 5, 64, dtype=torch.float64), h).dtype
        torch.float32
    """
    if not isinstance(value, torch.Tensor):
        raise InputError(
            f"{name} of {model_type} takes a tensor of shape {tuple(current.shape)}; got {type(value).__name__}"
        )
    if value.shape != current.shape:
        raise ShapeError(
            f"{name} of {model_type} has shape {tuple(current.shape)} {_dims_of(name, current)}; the tensor written "
            f"has shape {tuple(value.shape)}. Write a tensor of exactly that shape (no broadcasting), e.g. "
            f"`model.{name} = model.{name} + delta`."
        )
    if value.dtype != current.dtype:
        if not (value.is_floating_point() and current.is_floating_point()):
            raise ShapeError(
                f"{name} of {model_type} holds {current.dtype}; the tensor written is {value.dtype}. "
                "Write floating-point values (they are cast to the model's dtype)."
            )
        value = value.to(current.dtype)
    return value.to(current.device)


def _dims_of(name: str, value: torch.Tensor) -> str:
    site = name.split("[")[0]
    return SHAPES.get(site, _dims(value)) if site in SHAPES and site not in _RESIDUAL else _dims(value)


_RESIDUAL = (
    "layers_input",
    "layers_output",
    "attentions_input",
    "attentions_output",
    "mlps_input",
    "mlps_output",
)


def _dims(value: torch.Tensor) -> str:
    return {3: "(batch, seq, hidden)", 4: "(batch, seq, n_streams, hidden)"}.get(value.dim(), "")


#: Standard shapes of every per-layer value, for messages and docs.
SHAPES: dict[str, str] = {
    "layers_input": "(batch, seq, hidden)",
    "layers_output": "(batch, seq, hidden)",
    "attentions_input": "(batch, seq, hidden)",
    "attentions_output": "(batch, seq, hidden)",
    "mlps_input": "(batch, seq, hidden)",
    "mlps_output": "(batch, seq, hidden)",
    "residual_mid": "(batch, seq, hidden)",
    "attentions_output_normed": "(batch, seq, hidden)",
    "mlps_output_normed": "(batch, seq, hidden)",
    "queries": "(batch, n_heads, seq, head_dim)",
    "keys": "(batch, n_kv_heads, seq_k, head_dim)",
    "values": "(batch, n_kv_heads, seq_k, head_dim)",
    "queries_pre_rotary": "(batch, n_heads, seq, head_dim)",
    "keys_pre_rotary": "(batch, n_kv_heads, seq, head_dim)",
    "head_outputs": "(batch, seq, n_heads, head_dim)",
    "mlp_neurons": "(batch, seq, d_mlp)",
    "router_logits": "(batch, seq, n_experts)",
    "expert_indices": "(batch, seq, k)",
    "expert_weights": "(batch, seq, k)",
    "attention_scores": "(batch, heads, q, k)",
    "attention_probabilities": "(batch, heads, q, k)",
}


def write_value(model: StandardizedTransformer, name: str, loc: Locator, value: Any) -> None:
    """Replace the value at ``loc`` in the running trace by ``value`` (checked by `conform`)."""
    envoy = _target(model, loc)
    native = _native_value(model, name, loc)
    current = to_standard(loc, _unflatten(model, native) if loc.flat else native)
    value = to_native(loc, conform(name, model.model_type, value, current))
    if loc.flat:
        value = value.reshape(-1, value.shape[-1])
    if loc.clone:
        model._runtime.release(name)
    if loc.io == "output":
        if loc.key is None:
            envoy.output = value
        else:
            items = list(envoy.output)
            items[loc.key] = value
            envoy.output = tuple(items)
    else:
        args, kwargs = envoy.inputs
        if isinstance(loc.key, int):
            new_args = list(args)
            new_args[loc.key] = value
            envoy.inputs = (tuple(new_args), kwargs)
        else:
            envoy.inputs = (args, {**kwargs, loc.key: value})


def normalize_layer(model: StandardizedTransformer, index: Any, name: str) -> int:
    """``index`` as a layer number in ``[0, num_layers)``; raise `LayerIndexError` otherwise."""
    n = model.num_layers
    if isinstance(index, torch.Tensor) and index.numel() == 1:
        index = int(index.item())
    if isinstance(index, bool) or not isinstance(index, int):
        raise LayerIndexError(
            f"{name}[{index!r}]: a layer index must be an int in [-{n}, {n}); got {type(index).__name__}"
        )
    if not -n <= index < n:
        raise LayerIndexError(
            f"{name}[{index}]: layer index out of range for {model.model_type} with {n} layers "
            f"(valid: -{n} to {n - 1})"
        )
    return index % n


class LayerValues:
    """One standardized value at every layer, e.g. ``model.layers_output``.

    Example::

        >>> with model.trace("The Eiffel Tower is in the city of"):
        ...     h = model.layers_output[5].save()          # (batch, seq, hidden)
        ...     model.layers_output[6] = model.layers_output[6] * 2

    Indexing reads the value inside a trace; assignment replaces it with a tensor
    of exactly the same shape (a floating dtype is cast to the model's). Negative
    indices count from the last layer; an index out of range raises
    `LayerIndexError` stating the valid range.
    """

    def __init__(self, model: StandardizedTransformer, name: str) -> None:
        self._model = model
        self._name = name

    def _locator(self, index: Any) -> tuple[int, Locator]:
        i = normalize_layer(self._model, index, self._name)
        binding = self._model.binding
        loc = binding.locator(self._name, i)
        if loc is None:
            raise UnavailableError(
                self._model.model_type, f"{self._name}[{i}]", binding.reason(self._name, i)
            )
        return i, loc

    def __getitem__(self, index: int) -> torch.Tensor:
        i, loc = self._locator(index)
        require_trace(f"{self._name}[{i}]")
        return read_value(self._model, f"{self._name}[{i}]", loc)

    def __setitem__(self, index: int, value: torch.Tensor) -> None:
        i, loc = self._locator(index)
        require_trace(f"{self._name}[{i}]")
        write_value(self._model, f"{self._name}[{i}]", loc, value)

    def __len__(self) -> int:
        return self._model.num_layers

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self)):
            yield self[i]

    def available(self, index: int) -> bool:
        """Whether this value exists at layer ``index`` (e.g. attention on a hybrid)."""
        i = normalize_layer(self._model, index, self._name)
        return self._model.binding.locator(self._name, i) is not None

    def __repr__(self) -> str:
        return f"<{self._name}: {len(self)} layers of {self._model.model_type}>"


class AttentionProbabilities:
    """``model.attention_probabilities``: per-layer softmax attention weights.

    Example::

        >>> model = StandardizedTransformer(path, enable_attention_probs=True)
        >>> with model.trace("The Eiffel Tower is in"):
        ...     probs = model.attention_probabilities[3].save()    # (batch, heads, q, k)
        ...     model.attention_probabilities[4] = probs_edit      # writable

    Raises `UnavailableError` with the reason when the model was loaded without
    ``enable_attention_probs=True`` or layer ``i`` has no softmax attention.
    """

    _name = "attention_probabilities"

    def __init__(self, model: StandardizedTransformer) -> None:
        self._model = model

    def _read(self, layer: int) -> torch.Tensor:
        from ._attention import read_probabilities

        return read_probabilities(self._model, layer)

    def _write(self, layer: int, value: Any) -> None:
        from ._attention import write_probabilities

        write_probabilities(self._model, layer, value)

    def __getitem__(self, index: int) -> torch.Tensor:
        i = normalize_layer(self._model, index, self._name)
        require_trace(f"{self._name}[{i}]")
        try:
            return self._read(i)
        except OutOfOrderError as error:
            raise_order_error(f"{self._name}[{i}]", error)

    def __setitem__(self, index: int, value: torch.Tensor) -> None:
        i = normalize_layer(self._model, index, self._name)
        require_trace(f"{self._name}[{i}]")
        try:
            self._write(i, value)
        except OutOfOrderError as error:
            raise_order_error(f"{self._name}[{i}]", error)

    def __len__(self) -> int:
        return self._model.num_layers

    def available(self, index: int) -> bool:
        """Whether layer ``index`` has verified values."""
        i = normalize_layer(self._model, index, self._name)
        entries = self._model.binding.attention
        return entries is not None and not isinstance(entries[i], str)

    def __repr__(self) -> str:
        return f"<{self._name}: {len(self)} layers of {self._model.model_type}>"


class AttentionScores(AttentionProbabilities):
    """``model.attention_scores``: per-layer attention scores, the softmax's input.

    Example::

        >>> model = StandardizedTransformer(path, enable_attention_probs=True)
        >>> with model.trace("The Eiffel Tower is in"):
        ...     scores = model.attention_scores[3].save()    # (batch, heads, q, k)

    Scaled, soft-capped and masked as the model does before its softmax (masked
    positions hold the model's mask value), so ``scores.softmax(-1)`` is
    ``attention_probabilities``. Opt-in like the probabilities (eager attention);
    unavailable with the reason where the softmax also normalises something else
    (an attention sink).
    """

    _name = "attention_scores"

    def _read(self, layer: int) -> torch.Tensor:
        from ._attention import read_scores

        return read_scores(self._model, layer)

    def _write(self, layer: int, value: Any) -> None:
        from ._attention import write_scores

        write_scores(self._model, layer, value)

    def available(self, index: int) -> bool:
        """Whether layer ``index`` has verified scores."""
        i = normalize_layer(self._model, index, self._name)
        entries = self._model.binding.attention
        return entries is not None and not isinstance(entries[i], str) and entries[i].scores is None


class LayerList:
    """The decoder blocks as nnsight envoys, with range-checked indexing.

    Example::

        >>> model.layers[0].self_attn          # the native attention module's envoy
        >>> len(model.layers)
        12
    """

    def __init__(self, model: StandardizedTransformer, stack: Any) -> None:
        self._model = model
        self._stack = stack

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self._stack[i] for i in range(len(self))[index]]
        return self._stack[normalize_layer(self._model, index, "layers")]

    def __len__(self) -> int:
        return len(self._stack)

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self._stack[i]

    def __repr__(self) -> str:
        from ._nnsight_compat import native_module

        return f"<layers: {len(self)} x {type(native_module(self._stack[0])).__name__}>"
