"""Frozen attention patterns and norm scales: values taken from a clean run and detached.

Attribution graphs and some attribution methods linearise a model by holding
parts of it at the values they had on the prompt: the attention probabilities and
the scale (the denominator) of every LayerNorm / RMS norm. Gradients then do not
flow through them.

- **attention_probabilities**: each layer's probabilities are replaced by the
  detached clean ones (needs ``enable_attention_probs=True``: eager attention).
- **norm_scales**: every norm module computes ``f(x) = A(x) / s(x) + b`` with
  ``A`` linear (centring and gain) and ``s`` its scale (``sqrt(mean(x^2) + eps)``
  for RMS norms, of the centred ``x`` for LayerNorms). A forward hook turns its
  output into ``f(x) + (f(x) - b) * (s(x) / s0 - 1) = A(x) / s0 + b`` with ``s0``
  the clean scale, detached: the value is unchanged on the clean run and the
  gradient is ``A / s0``. No per-family code: the norm's kind and epsilon come
  from the module (as for ``ln1.hook_scale``), and before a module is trusted
  its output is checked to be ``w * normalized(x) + b`` on the first call; a norm
  that fails (another formula) is refused with its path.

Modes: ``"self"`` detaches the run's own values (the clean run is the run);
``"record"`` keeps the clean run's values; ``"apply"`` uses recorded values in a
later run whose rows map to clean prompts (integrated gradients' steps).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import torch

from ._aliases import normalize, resolve_name
from ._errors import InputError, UnavailableError
from ._nnsight_compat import native_module
from ._probes import Edits, ToolSite
from ._rules import NORM_CLASS

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["FREEZABLE", "Freezer", "check_freeze"]

#: What can be frozen.
FREEZABLE: tuple[str, ...] = ("attention_probabilities", "norm_scales")
Mode = Literal["self", "record", "apply"]

_VERIFIED: weakref.WeakKeyDictionary[torch.nn.Module, str | None] = weakref.WeakKeyDictionary()


def check_freeze(freeze: Any) -> tuple[str, ...]:
    """``freeze`` as a tuple of names from `FREEZABLE`, or `InputError`."""
    if freeze is None or freeze is False:
        return ()
    names = (freeze,) if isinstance(freeze, str) else tuple(freeze)
    for name in names:
        if name not in FREEZABLE:
            raise InputError(f"freeze: {name!r} cannot be frozen; choose from {FREEZABLE}")
    return tuple(dict.fromkeys(names))


class Freezer:
    """Freezes what ``freeze`` names in the traces a tool runs.

    Example::

        >>> freezer = Freezer(model, ("attention_probabilities", "norm_scales"))
        >>> edits = Edits()
        >>> with freezer.norms("self"), model.trace(prompts):
        ...     freezer.add_attention(edits, "self")
        ...     edits.run(model)
    """

    def __init__(self, model: StandardizedTransformer, freeze: Any) -> None:
        self.model = model
        self.names = check_freeze(freeze)
        self.scales: dict[str, list[torch.Tensor]] = {}
        self.patterns: dict[int, torch.Tensor] = {}
        self._recorded: Edits | None = None
        self._norms: list[tuple[str, torch.nn.Module]] = []
        if "attention_probabilities" in self.names:
            self._layers = self._attention_layers()
        if "norm_scales" in self.names:
            self._norms = self._norm_modules()

    def __bool__(self) -> bool:
        return bool(self.names)

    # -- attention probabilities ------------------------------------------------------------------

    def _attention_layers(self) -> list[ToolSite]:
        model = self.model
        sites = []
        for layer in range(model.num_layers):
            name = f"attention_probabilities.{layer}"
            try:
                ref = resolve_name(model.binding, name)
            except UnavailableError as error:
                raise UnavailableError(
                    model.model_type,
                    "freeze=attention_probabilities",
                    f"layer {layer} has no attention probabilities to freeze: {error.reason}",
                ) from error
            sites.append(ToolSite(ref, name))
        return sites

    def add_attention(self, edits: Edits, mode: Mode, rows: torch.Tensor | None = None) -> None:
        """Add the attention edits of ``mode`` to ``edits`` (call before ``edits.run``)."""
        if "attention_probabilities" not in self.names:
            return
        for site in self._layers:
            layer = int(site.ref.layer or 0)
            if mode == "self":
                edits.add(site, _detached)
            elif mode == "record":
                edits.add(site, None, keep=True)
                self._recorded = edits
            else:
                edits.add(site, _replaced(self.patterns[layer], rows))

    def collect(self) -> None:
        """After a ``"record"`` trace: keep the attention patterns it read (detached)."""
        if self._recorded is not None:
            for site in self._layers:
                self.patterns[int(site.ref.layer or 0)] = self._recorded.seen[site.key].detach()
            self._recorded = None

    # -- norm scales ----------------------------------------------------------------------------

    def _norm_modules(self) -> list[tuple[str, torch.nn.Module]]:
        root = native_module(self.model)
        found = [
            (path, module)
            for path, module in root.named_modules()
            if path and NORM_CLASS.search(type(module).__name__) and not any(True for _ in module.children())
        ]
        if not found:
            raise UnavailableError(
                self.model.model_type, "freeze=norm_scales", "the model has no norm modules"
            )
        return found

    @contextmanager
    def norms(self, mode: Mode, rows: torch.Tensor | None = None) -> Iterator[None]:
        """Hooks on every norm for the next forward (``mode`` as in the module docstring)."""
        if "norm_scales" not in self.names:
            yield
            return
        handles = []
        calls: dict[str, int] = {}
        if mode == "record":
            self.scales = {}
        for path, module in self._norms:
            handles.append(
                module.register_forward_hook(self._hook(path, mode, rows, calls), with_kwargs=True)
            )
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, path: str, mode: Mode, rows: torch.Tensor | None, calls: dict[str, int]) -> Any:
        model_type = self.model.model_type

        def hook(module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
            x = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))
            if not isinstance(output, torch.Tensor) or not isinstance(x, torch.Tensor):
                raise UnavailableError(
                    model_type,
                    "freeze=norm_scales",
                    f"{path} ({type(module).__name__}) does not map a tensor to a tensor",
                )
            _verify(module, path, x, output, model_type)
            scale = normalize(module, x.float(), "scale", model_type, path)
            index = calls.get(path, 0)
            calls[path] = index + 1
            if mode == "self":
                frozen = scale.detach()
            elif mode == "record":
                self.scales.setdefault(path, []).append(scale.detach())
                frozen = scale.detach()
            else:
                recorded = self.scales[path][index]
                frozen = recorded if rows is None else recorded[rows.to(recorded.device)]
            bias = getattr(module, "bias", None)
            centred = output - bias if isinstance(bias, torch.Tensor) else output
            return output + centred * (scale / frozen - 1).to(output.dtype)

        return hook


def _detached(value: torch.Tensor) -> torch.Tensor:
    return value.detach()


def _replaced(pattern: torch.Tensor, rows: torch.Tensor | None) -> Any:
    def replace(value: torch.Tensor) -> torch.Tensor:
        new = pattern if rows is None else pattern[rows.to(pattern.device)]
        return new.to(value.dtype)

    return replace


def _verify(module: torch.nn.Module, path: str, x: torch.Tensor, y: torch.Tensor, model_type: str) -> None:
    """Refuse a norm whose output is not ``w * normalized(x) + b`` (checked once per module).

    ``normalized(x)`` is the LayerNorm or RMS normalisation uniterp reads off the
    module; the gain ``w`` is fitted per feature over the tokens of the call, so
    Gemma's ``1 + weight`` and weightless norms pass, while a norm of another kind
    (or one misread as LayerNorm/RMS) leaves a residual and is refused. The module is
    not called again (that would count as a call in the running trace).
    """
    if module in _VERIFIED:
        reason = _VERIFIED[module]
        if reason:
            raise UnavailableError(model_type, "freeze=norm_scales", reason)
        return
    reason = None
    with torch.no_grad():
        try:
            normed = normalize(module, x.detach().float(), "normalized", model_type, path)
            out = y.detach().float()
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                out = out - bias.float()
            normed, out = normed.reshape(-1, normed.shape[-1]), out.reshape(-1, out.shape[-1])
            gain = (out * normed).sum(0) / normed.pow(2).sum(0).clamp_min(1e-30)
            error = float((out - gain * normed).norm() / out.norm().clamp_min(1e-30))
            tolerance = 1e-4 if y.dtype == torch.float32 else 2e-2
            if not error <= tolerance:
                reason = (
                    f"{path} ({type(module).__name__}) does not compute gain * normalized(x) + bias with the "
                    f"normalisation of a LayerNorm or an RMS norm (relative residual {error:.2g}): its scale "
                    "cannot be frozen"
                )
        except UnavailableError as error:
            reason = f"{path}: {error.reason}"
    _VERIFIED[module] = reason
    if reason:
        raise UnavailableError(model_type, "freeze=norm_scales", reason)
