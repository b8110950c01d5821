"""``model.mixer_states``: the state a state-space or linear-attention mixer leaves after the forward.

A Mamba, Mamba-2, gated-delta-net or lightning-attention layer carries a fixed-size
state from token to token instead of keys and values; after the last token, that state
is what generation continues from. transformers keeps it in the forward's cache (one
cache layer per decoder layer, ``recurrent_states``), or, for a few models, on the
module that computes it (RecurrentGemma's RG-LRU). This module finds, once per model
and with plain torch hooks on one short forward, which module of each layer writes
which state, and reads it inside a trace right after that module has run.

The state is read-only: it is the input of the *next* forward (the one that continues
generation), so writing it cannot change the values of the forward that computed it.
Where a layer has softmax attention, its state is its keys and values (``keys[i]``,
``values[i]``); where a mixer keeps only a short convolution's last inputs (LFM2's
convolution layers), there is no recurrent state; both are refused with the reason.

Example::

    >>> with model.trace("The cat sat on the"):
    ...     state = model.mixer_states[0].save()   # Mamba: (batch, d_inner, d_state)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ._errors import InputError, UnavailableError
from ._nnsight_compat import OutOfOrderError, in_trace, invoke_rows, native_module, pipeline_text_encoding
from ._rules import ATTENTION_CLASS, MIXER_STATE_ATTRIBUTES, NORM_CLASS, PROBE_PROMPT, STATE_MIXER_CLASS
from ._sites import normalize_layer, raise_order_error, require_trace

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["MixerStates", "StateSite", "cache_state", "locate_mixer_states"]

NAME = "mixer_states"


@dataclass(frozen=True)
class StateSite:
    """Where layer ``i``'s recurrent state is found.

    Attributes:
        mixer: Native path of the mixer module (its inputs carry the forward's cache).
        kind: ``"cache"`` (the forward's cache: ``cache.layers[index].recurrent_states[0]``,
            or MiniMax's ``cache.get_linear_cache(index)``) or ``"module"`` (the tensor
            attribute ``attribute`` of the module at ``holder``).
        index: The cache layer the mixer writes (``"cache"``).
        holder: Native path of the module holding the state (``"module"``).
        attribute: The attribute holding it (``"module"``).
        after_attention: The mixer runs after the layer's softmax attention (Zamba2's
            hybrid layers); ``False`` where it runs first (Falcon-H1) or the layer has none.
    """

    mixer: str
    kind: str
    index: int = -1
    holder: str = ""
    attribute: str = ""
    after_attention: bool = False


def _is_mixer(module: torch.nn.Module) -> bool:
    """A module with parts whose class name marks a token mixer that is not softmax attention."""
    name = type(module).__name__
    if NORM_CLASS.search(name) or next(module.children(), None) is None:
        return False  # norms, and building blocks such as nn.Linear or transformers' Conv1D
    return STATE_MIXER_CLASS.search(name) is not None


def _mixer_path(layer: torch.nn.Module) -> str | None:
    """The relative path of the first outermost mixer module inside one decoder layer."""
    return next((path for path, module in layer.named_modules() if path and _is_mixer(module)), None)


def _no_state(binding: Any, i: int) -> str:
    if "queries" in binding.layout.layers[i] or binding.layout.modules[i].get("self_attn"):
        return "this layer has softmax attention: its state is its keys and values (keys[i], values[i])"
    return "this layer has no state-space or linear-attention mixer"


def _find_cache(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from transformers.cache_utils import Cache

    for value in (*args, *kwargs.values()):
        if isinstance(value, Cache):
            return value
    return None


def cache_state(cache: Any, index: int) -> torch.Tensor | None:
    """The recurrent state cache layer ``index`` holds, or ``None``."""
    layers = getattr(cache, "layers", None)
    if layers is not None and 0 <= index < len(layers):
        states = getattr(layers[index], "recurrent_states", None)
        initialized = getattr(layers[index], "is_recurrent_states_initialized", None)
        if isinstance(states, dict) and initialized and initialized.get(0):
            return states[0]
    getter = getattr(cache, "get_linear_cache", None)
    if getter is not None:
        try:
            state = getter(index)
        except IndexError:  # layers after the last one with a state
            return None
        return state if isinstance(state, torch.Tensor) else None
    return None


def _held_state(mixer: torch.nn.Module) -> tuple[str, str] | None:
    """``(relative path, attribute)`` of a tensor state the mixer keeps on one of its modules."""
    for path, module in mixer.named_modules():
        for attribute in MIXER_STATE_ATTRIBUTES:
            if isinstance(getattr(module, attribute, None), torch.Tensor):
                return path, attribute
    return None


def _has_conv_state(cache: Any, index: int) -> bool:
    layers = getattr(cache, "layers", None)
    if layers is None or not 0 <= index < len(layers):
        return False
    initialized = getattr(layers[index], "is_conv_states_initialized", None)
    return bool(initialized and initialized.get(0))


@torch.no_grad()
def locate_mixer_states(model: StandardizedTransformer) -> tuple[dict[int, StateSite], dict[int, str]]:
    """Find each layer's recurrent state on one short forward with plain hooks.

    Example::

        >>> sites, reasons = locate_mixer_states(model)
        >>> sites[0].kind, reasons.get(2)
        ('cache', 'this layer has softmax attention: its state is its keys and values (keys[i], values[i])')

    Returns:
        ``({layer: StateSite}, {layer: reason})``, one entry per layer in one of the two.
    """
    from ._fastpath import forward_inputs

    binding = model.binding
    n = binding.sizes.num_layers
    skeleton = native_module(model).get_submodule(binding.spec.layers)  # no weights needed yet
    found = {i: _mixer_path(skeleton[i]) for i in range(n)}
    reasons = {i: _no_state(binding, i) for i, rel in found.items() if rel is None}
    if len(reasons) == n:
        return {}, reasons  # no forward, no weights loaded
    model.dispatch()
    root = native_module(model)
    stack = root.get_submodule(binding.spec.layers)
    mixers = {i: (rel, stack[i].get_submodule(rel)) for i, rel in found.items() if rel is not None}
    encoding = pipeline_text_encoding(model, [PROBE_PROMPT])
    if encoding is None:
        return {}, {i: reasons.get(i, "the model takes no text prompt to probe with") for i in range(n)}
    seen: dict[int, Any] = {}  # layer -> the cache its mixer received
    started: dict[tuple[str, int], int] = {}  # (mixer | attention, layer) -> when it started
    handles = []
    for i, (_, mixer) in mixers.items():

        def grab(_module: Any, args: Any, kwargs: Any, i: int = i) -> None:
            seen.setdefault(i, _find_cache(args, kwargs))
            started.setdefault(("mixer", i), len(started))

        handles.append(mixer.register_forward_pre_hook(grab, with_kwargs=True))
        attention = binding.layout.modules[i].get("self_attn")
        if attention is not None:

            def start(*_: Any, i: int = i) -> None:
                started.setdefault(("attention", i), len(started))

            handles.append(stack[i].get_submodule(attention).register_forward_pre_hook(start))
    try:
        root(**forward_inputs(model, encoding), use_cache=True)
    except Exception as error:  # a model that cannot run with a cache: every other value still works
        why = f"the probe forward with use_cache=True failed ({type(error).__name__}: {error})"
        return {}, {i: reasons.get(i, why) for i in range(n)}
    finally:
        for handle in handles:
            handle.remove()
    sites: dict[int, StateSite] = {}
    for i, (rel, mixer) in mixers.items():
        path = f"{binding.spec.layers}.{i}.{rel}"
        index = getattr(mixer, "layer_idx", i)
        cache = seen.get(i)
        held = _held_state(mixer)
        after = started.get(("attention", i), len(started)) < started.get(("mixer", i), -1)
        if cache is not None and isinstance(index, int) and cache_state(cache, index) is not None:
            sites[i] = StateSite(path, "cache", index, after_attention=after)
        elif held is not None:
            holder = f"{path}.{held[0]}" if held[0] else path
            sites[i] = StateSite(path, "module", holder=holder, attribute=held[1], after_attention=after)
        elif "queries" in binding.layout.layers[i]:
            reasons[i] = _no_state(binding, i)  # softmax attention whose class name reads like a mixer
        elif ATTENTION_CLASS.search(type(mixer).__name__):
            reasons[i] = (
                f"the mixer {rel} ({type(mixer).__name__}) is softmax attention: it keeps keys and values, "
                "no recurrent state"
            )
        elif i not in seen:
            reasons[i] = f"the mixer {rel} ({type(mixer).__name__}) did not run on the probe prompt"
        elif cache is not None and isinstance(index, int) and _has_conv_state(cache, index):
            reasons[i] = (
                f"the mixer {rel} ({type(mixer).__name__}) keeps only its convolution's last inputs, "
                "no recurrent state"
            )
        else:
            reasons[i] = (
                f"the mixer {rel} ({type(mixer).__name__}) leaves no recurrent state uniterp can find"
            )
    return sites, reasons


class MixerStates:
    """``model.mixer_states[i]``: the recurrent state layer ``i``'s mixer leaves after the forward.

    Example::

        >>> with model.trace("The cat sat on the"):
        ...     state = model.mixer_states[-1].save()

    Shapes are the mixer's own (batch first): Mamba ``(batch, d_inner, d_state)``,
    Mamba-2 ``(batch, n_heads, head_dim, d_state)``, gated delta nets
    ``(batch, n_heads, d_key, d_value)``, RG-LRU ``(batch, lru_width)``. Read-only;
    needs the forward's cache (``use_cache`` is on by default). Read it before the
    values of later layers. `available` and ``model.support()`` say which layers have
    one, and why not.
    """

    def __init__(self, model: StandardizedTransformer) -> None:
        self._model = model
        self._located: tuple[dict[int, StateSite], dict[int, str]] | None = None

    def located(self) -> tuple[dict[int, StateSite], dict[int, str]]:
        """``({layer: StateSite}, {layer: reason})``, found once (one short forward, before the first
        local trace runs; never inside one)."""
        if self._located is None:
            if in_trace():
                raise UnavailableError(
                    self._model.model_type,
                    NAME,
                    "the states are located on a local forward before the first local trace; this trace "
                    "is remote (run one local trace, or call model.mixer_states.located(), first)",
                )
            self._located = locate_mixer_states(self._model)
        return self._located

    def available(self, index: int) -> bool:
        """Whether layer ``index`` has a recurrent state to read."""
        i = normalize_layer(self._model, index, NAME)
        return i in self.located()[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        i = normalize_layer(self._model, index, NAME)
        name = f"{NAME}[{i}]"
        require_trace(name)
        sites, reasons = self.located()
        site = sites.get(i)
        if site is None:
            raise UnavailableError(self._model.model_type, name, reasons.get(i, "no recurrent state"))
        try:
            state = self._read(site, name)
        except OutOfOrderError as error:
            raise_order_error(name, error)
        rows = invoke_rows(state.shape[0])
        if rows is not None:
            state = state[rows[0] : rows[1]]
        return state.clone()  # the cache's buffer is overwritten in place by the next forward

    def _read(self, site: StateSite, name: str) -> torch.Tensor:
        model = self._model
        if site.kind == "module":
            model._envoy(site.holder).output  # noqa: B018 - wait until the holder has run
            state = getattr(native_module(model).get_submodule(site.holder), site.attribute, None)
            if not isinstance(state, torch.Tensor):
                raise UnavailableError(model.model_type, name, f"{site.holder} kept no state on this forward")
            return state
        envoy = model._envoy(site.mixer)
        args, kwargs = envoy.inputs
        cache = _find_cache(args, kwargs)
        envoy.output  # noqa: B018 - the state is written while the mixer runs
        state = cache_state(cache, site.index) if cache is not None else None
        if state is None:
            raise UnavailableError(
                model.model_type, name, "the forward ran without a cache; pass use_cache=True to trace()"
            )
        return state

    def __setitem__(self, index: int, value: Any) -> None:
        i = normalize_layer(self._model, index, NAME)
        raise InputError(
            f"{NAME}[{i}] is read-only: it is the state the next forward starts from, so writing it cannot "
            "change this forward; edit the mixer's output (attentions_output or layers_output) instead"
        )

    def __len__(self) -> int:
        return self._model.num_layers

    def __repr__(self) -> str:
        return f"<{NAME}: {len(self)} layers of {self._model.model_type}>"
