"""Shared pieces of the nnterp compatibility layer: model checks and refusals."""

from __future__ import annotations

from typing import Any

from .._errors import UnavailableError

#: Shown where an error names a model type: the refusal comes from this layer, not a model.
SCHEME = "uniterp.nnterp"


def unavailable(name: str, reason: str, instead: str) -> UnavailableError:
    """The error for an nnterp feature uniterp does not provide: what, why, and what to use."""
    return UnavailableError(SCHEME, name, f"{reason}. Instead: {instead}")


def require_model(model: Any, function: str) -> Any:
    """``model`` if it is a uniterp `StandardizedTransformer`; an explanation otherwise.

    nnterp's helpers also accept a plain nnsight ``LanguageModel`` renamed to
    llama names. uniterp reads values only through a model whose layout it has
    probed (tuple or tensor outputs, in-place edits, shapes), so a plain nnsight
    model is refused with the way to wrap it.
    """
    from .._model import StandardizedTransformer

    if isinstance(model, StandardizedTransformer):
        return model
    raise unavailable(
        f"{function}(<{type(model).__name__}>)",
        "uniterp reads values only through a model whose layout it has checked, not through a plain "
        "nnsight model renamed to llama names",
        "load the model with uniterp.nnterp.StandardizedTransformer(name_or_hf_model) (a HuggingFace "
        "model object works too) and pass that",
    )
