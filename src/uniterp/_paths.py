"""The one walker of native module paths (``"model.layers.0.self_attn"``)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["has_path", "join", "module_at"]


def join(base: str, rel: str) -> str:
    """``base.rel``, where either may be empty (``""`` is the module itself).

    Example::

        >>> join("model.layers.0", "mlp"), join("model.layers.0", "")
        ('model.layers.0.mlp', 'model.layers.0')
    """
    return f"{base}.{rel}" if base and rel else base or rel


def module_at(root: torch.nn.Module, path: str) -> torch.nn.Module | None:
    """The module at dotted ``path`` under ``root``, or ``None`` when there is none.

    Example::

        >>> module_at(hf_model, "model.norm")
        LlamaRMSNorm(...)
    """
    obj: Any = root
    for part in path.split(".") if path else ():
        obj = getattr(obj, part, None)
        if not isinstance(obj, torch.nn.Module):
            return None
    return obj


def has_path(root: torch.nn.Module, path: str) -> bool:
    """Whether the dotted attribute ``path`` exists on ``root`` (its value may be ``None``)."""
    obj: Any = root
    for part in path.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True
