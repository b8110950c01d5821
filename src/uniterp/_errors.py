"""uniterp's exceptions: one hierarchy, all rooted at `UniterpError`.

Each error also derives from the built-in exception a caller would naturally
catch (`IndexError` for a layer index out of range, `ValueError` for a bad
argument), so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "ArchitectureError",
    "CheckFailedError",
    "InputError",
    "LayerIndexError",
    "InPlaceEditError",
    "OrderError",
    "OutsideTraceError",
    "ShapeError",
    "UniterpError",
    "UnavailableError",
]

_CUSTOM_SPEC_HINT = (
    "If this architecture is laid out differently, pass your own description: "
    "StandardizedTransformer(model, spec=ArchitectureSpec(embed_tokens=..., layers=..., "
    "final_norm=..., attention=..., mlp=...)) or register it once with "
    "uniterp.register_spec(model_type, spec)."
)


class UniterpError(Exception):
    """Base class of every error uniterp raises on purpose."""

    def __reduce__(self) -> tuple:
        # errors whose constructor takes structured arguments pickle through them (remote runs)
        args = getattr(self, "_args", None)
        return (type(self), args) if args is not None else Exception.__reduce__(self)


class ArchitectureError(UniterpError):
    """A standardized name could not be located or verified on this model.

    Example::

        >>> raise ArchitectureError("mytype", "layers", ["model.layers", "transformer.h"],
        ...                         "no ModuleList of 12 blocks")
        Traceback (most recent call last):
        ...
        uniterp._errors.ArchitectureError: mytype: cannot locate 'layers' ...

    Attributes:
        model_type: The HF ``model_type`` of the model.
        name: The standardized name (``"layers"``, ``"mlps_output"``, ...).
        tried: Native module paths that were tried.
        reason: What went wrong.
    """

    def __init__(self, model_type: str, name: str, tried: list[str] | tuple[str, ...], reason: str) -> None:
        self.model_type = model_type
        self.name = name
        self.tried = list(tried)
        self.reason = reason
        self._args = (model_type, name, list(tried), reason)
        tried_text = ", ".join(repr(p) for p in self.tried) if self.tried else "nothing"
        Exception.__init__(
            self,
            f"{model_type}: cannot locate {name!r} ({reason}). Native paths tried: "
            f"{tried_text}. {_CUSTOM_SPEC_HINT}",
        )


class UnavailableError(UniterpError):
    """A standardized value exists in general but not on this model (or layer).

    Attributes:
        model_type: The HF ``model_type``.
        name: The standardized name.
        reason: Why it is unavailable.
    """

    def __init__(self, model_type: str, name: str, reason: str) -> None:
        self.model_type = model_type
        self.name = name
        self.reason = reason
        self._args = (model_type, name, reason)
        Exception.__init__(self, f"{model_type}: {name!r} is unavailable: {reason}")


class LayerIndexError(UniterpError, IndexError):
    """A layer index outside ``[-num_layers, num_layers)``."""


class ShapeError(UniterpError, ValueError):
    """A tensor argument of the wrong shape (e.g. a steering vector)."""


class InputError(UniterpError, ValueError):
    """An argument uniterp cannot use (empty prompt list, bad option, ...)."""


class OutsideTraceError(UniterpError, ValueError):
    """A standardized value was read or written outside ``with model.trace(...)``."""


class OrderError(UniterpError):
    """A value was requested after the forward pass had already run past it.

    Inside one invoke, values must be read and written in the order the model
    computes them. The error names the standardized value; it also derives from
    nnsight's ``OutOfOrderError``, so nnsight's own handling (the end of a
    generation loop) is unchanged.
    """


class InPlaceEditError(UniterpError, RuntimeError):
    """A value uniterp handed out as a copy was edited in place; the edit would not reach the model.

    Where the model itself edits a value in place later in the forward pass
    (Falcon adds the attention output into the MLP output), uniterp hands out a
    copy so a saved value stays as the module produced it. Assign instead:
    ``model.mlps_output[0] = edited``.
    """


class CheckFailedError(UniterpError):
    """Raised by `CheckResult.raise_on_failure` when a numerical check failed."""
