"""The model's readout applied to any residual-stream state: ``project_on_vocab``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ._errors import InputError, ShapeError, UnavailableError
from ._layout import to_native

if TYPE_CHECKING:
    from ._binding import Binding
    from ._model import StandardizedTransformer

__all__ = ["postprocess_logits", "project"]


def project(model: StandardizedTransformer, hidden: Any) -> torch.Tensor:
    """Final norm, unembedding and logit post-processing applied to ``hidden`` (see `project_on_vocab`)."""
    binding = model.binding
    if binding.lens_unavailable is not None:
        raise UnavailableError(model.model_type, "project_on_vocab", binding.lens_unavailable)
    if not isinstance(hidden, torch.Tensor):
        raise InputError(f"project_on_vocab takes a tensor (..., hidden); got {type(hidden).__name__}")
    spec = binding.spec
    width = binding.sizes.hidden_size
    x = hidden
    if spec.stream_readout:
        x = _merge_streams(model, binding, x)
    if width is not None and (x.dim() == 0 or x.shape[-1] != width):
        raise ShapeError(
            f"project_on_vocab of {model.model_type} takes (..., hidden={width}) states; got shape "
            f"{tuple(hidden.shape)}"
        )
    norm = model._native(spec.final_norm) if spec.final_norm else None
    if norm is not None:
        x = norm(x)
    for path in spec.pre_unembed:
        extra = model._native(path)
        if extra is not None:
            x = extra(x)
    return postprocess_logits(binding, model._native(spec.lm_head)(x))


def _merge_streams(model: StandardizedTransformer, binding: Binding, hidden: torch.Tensor) -> torch.Tensor:
    """``(..., n_streams, hidden)`` -> ``(..., hidden)`` through the model's own stream readout."""
    loc = binding.layout.layers[-1]["layers_output"]
    if loc.streams is None:
        return hidden
    if hidden.dim() < 2 or hidden.shape[-2] != loc.n_streams:
        raise ShapeError(
            f"{model.model_type} keeps {loc.n_streams} residual streams: project_on_vocab expects "
            f"(..., {loc.n_streams}, hidden), got {tuple(hidden.shape)}"
        )
    lead = hidden.shape[:-2]
    rows = to_native(loc, hidden.reshape(-1, 1, loc.n_streams, hidden.shape[-1]))
    merged = model._native(binding.spec.stream_readout)(rows)
    return merged.reshape(*lead, merged.shape[-1])


def postprocess_logits(binding: Binding, logits: torch.Tensor) -> torch.Tensor:
    """The model's logit scaling, division and soft-capping applied to ``logits``."""
    if binding.logit_scale is not None:
        logits = logits * binding.logit_scale
    if binding.logit_divisor is not None:
        logits = logits / binding.logit_divisor
    if binding.logit_softcap is not None:
        logits = torch.tanh(logits / binding.logit_softcap) * binding.logit_softcap
    return logits
