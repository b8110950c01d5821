"""Readable/writable views of standardized values inside a trace.

``model.layers_output`` is a `LayerValues`; indexing it inside ``model.trace()``
reads the value, assigning to an index writes it, keeping the other elements of a
tuple output intact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from ._errors import LayerIndexError, OutsideTraceError, UnavailableError
from ._layout import Locator, to_native, to_standard

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["LayerList", "LayerValues", "read_value", "refresh_envoys", "write_value"]


def envoy_at(root: Any, path: str) -> Any:
    """The envoy at native module ``path`` under ``root`` (an envoy).

    A submodule named like a value nnsight serves on every envoy (BERT's
    ``output``) is mounted by nnsight under a prefixed name; this follows it.
    """
    import inspect

    from nnsight.intervention.envoy import Envoy

    obj = root
    for part in path.split(".") if path else ():
        if not part.startswith("_") and inspect.isdatadescriptor(getattr(Envoy, part, None)):
            part = f"{Envoy.OVERLOAD_PREFIX}{part}"
        obj = getattr(obj, part)
    return obj


def refresh_envoys(root: Any) -> list[str]:
    """Re-point envoys whose module the model has since replaced; their paths.

    nnsight wraps the modules present at load. A model that swaps a submodule
    for a new one in its forward (BigBird replaces its block-sparse attention by
    full attention on short inputs) leaves the envoy on the old module, whose
    values never arrive. The envoy object is kept, so paths cached elsewhere stay
    valid.

    Example::

        >>> refresh_envoys(model)
        ['model.bert.encoder.layer.0.attention.self', ...]
    """
    refreshed: list[str] = []
    for name, child in list(getattr(root, "_child_map", {}).items()):
        current = root._module._modules.get(name)
        if current is not None and current is not child._module:
            child._update(current)
            refreshed.append(child.path)
        else:
            refreshed += refresh_envoys(child)
    return refreshed


def _envoy(model: StandardizedTransformer, path: str) -> Any:
    cache = model._envoy_cache
    envoy = cache.get(path)
    if envoy is None:
        envoy = envoy_at(model, path)
        cache[path] = envoy
    return envoy


def in_trace() -> bool:
    """Whether the caller runs as intervention code of an active trace."""
    from greenlet import getcurrent

    return getattr(getcurrent(), "mediator", None) is not None


def outside_trace(name: str) -> OutsideTraceError:
    """The error for reading or writing ``name`` with no trace running."""
    return OutsideTraceError(
        f"{name} can only be read or written inside `with model.trace(...)` (or `model.generate(...)`)"
    )


def _unflatten(model: StandardizedTransformer, value: torch.Tensor) -> torch.Tensor:
    shape = model._batch_shape
    if shape is None:  # pragma: no cover - the pre-hook always runs first
        raise UnavailableError(model.model_type, "flattened value", "batch shape unknown")
    return value.view(*shape, value.shape[-1])


def read_value(model: StandardizedTransformer, loc: Locator) -> torch.Tensor:
    """Read the value at ``loc`` in the running trace, shaped ``(batch, seq, hidden)``.

    Values of models with several residual streams are ``(batch, seq, n_streams, hidden)``.
    """
    envoy = _envoy(model, loc.path)
    if loc.io == "output":
        value = envoy.output
        if loc.key is not None:
            value = value[loc.key]
    else:
        args, kwargs = envoy.inputs
        value = args[loc.key] if isinstance(loc.key, int) else kwargs[loc.key]
    if loc.flat:
        value = _unflatten(model, value)
    if loc.clone:
        value = value.clone()
    return to_standard(loc, value)


def write_value(model: StandardizedTransformer, loc: Locator, value: torch.Tensor) -> None:
    """Replace the value at ``loc`` in the running trace by ``value``."""
    envoy = _envoy(model, loc.path)
    value = to_native(loc, value)
    if loc.flat:
        value = value.reshape(-1, value.shape[-1])
    if loc.io == "output":
        if loc.key is None:
            envoy.output = value
        else:
            current = envoy.output
            items = list(current)
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

    Indexing reads the value inside a trace; assignment replaces it. Negative
    indices count from the last layer; an index out of range raises
    `LayerIndexError` stating the valid range.
    """

    def __init__(self, model: StandardizedTransformer, name: str) -> None:
        self._model = model
        self._name = name

    def _locator(self, index: Any) -> tuple[int, Locator]:
        i = normalize_layer(self._model, index, self._name)
        layout = self._model._layout
        loc = layout.layers[i].get(self._name)
        if loc is None:
            raise UnavailableError(
                self._model.model_type, f"{self._name}[{i}]", layout.unavailable[i].get(self._name, "unknown")
            )
        return i, loc

    def __getitem__(self, index: int) -> torch.Tensor:
        i, loc = self._locator(index)
        if not in_trace():
            raise outside_trace(f"{self._name}[{i}]")
        return read_value(self._model, loc)

    def __setitem__(self, index: int, value: torch.Tensor) -> None:
        i, loc = self._locator(index)
        if not in_trace():
            raise outside_trace(f"{self._name}[{i}]")
        write_value(self._model, loc, value)

    def __len__(self) -> int:
        return self._model.num_layers

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self)):
            yield self[i]

    def available(self, index: int) -> bool:
        """Whether this value exists at layer ``index`` (e.g. attention on a hybrid)."""
        i = normalize_layer(self._model, index, self._name)
        return self._name in self._model._layout.layers[i]

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

    def __init__(self, model: StandardizedTransformer) -> None:
        self._model = model

    def __getitem__(self, index: int) -> torch.Tensor:
        from ._attention import read_probabilities

        i = normalize_layer(self._model, index, "attention_probabilities")
        if not in_trace():
            raise outside_trace(f"attention_probabilities[{i}]")
        return read_probabilities(self._model, i)

    def __setitem__(self, index: int, value: torch.Tensor) -> None:
        from ._attention import write_probabilities

        i = normalize_layer(self._model, index, "attention_probabilities")
        if not in_trace():
            raise outside_trace(f"attention_probabilities[{i}]")
        write_probabilities(self._model, i, value)

    def __len__(self) -> int:
        return self._model.num_layers

    def available(self, index: int) -> bool:
        """Whether layer ``index`` has verified attention probabilities."""
        i = normalize_layer(self._model, index, "attention_probabilities")
        entries = self._model._attention_probs
        return entries is not None and not isinstance(entries[i], str)


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
        return f"<layers: {len(self)} x {type(self._stack[0]._module).__name__}>"
