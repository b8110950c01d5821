"""Named numerical tolerances: what "equal" means in each check, in one place."""

from __future__ import annotations

import torch

__all__ = ["exact_tolerance", "lens_tolerance", "probability_tolerance", "sum_tolerance"]


def exact_tolerance(reference: torch.Tensor) -> float:
    """A few ulps at the scale of ``reference``: for values that should be bit-identical up to reassociation."""
    eps = torch.finfo(reference.dtype).eps if reference.is_floating_point() else 0.0
    scale = float(reference.detach().abs().max()) if reference.numel() else 1.0
    return 8 * eps * max(1.0, scale)


def sum_tolerance(reference: torch.Tensor) -> float:
    """Parts of a block added up (``in + attn + mlp == out``): the model adds them in another order."""
    return 4 * exact_tolerance(reference)


def lens_tolerance(logits: torch.Tensor) -> float:
    """Lens vs logits: the model may unembed a slice of positions, so matmul shapes (and bits) differ."""
    scale = max(1.0, float(logits.detach().abs().max()))
    relative = 2e-4 if logits.dtype == torch.float32 else 64 * torch.finfo(logits.dtype).eps
    return max(exact_tolerance(logits) * 16, relative * scale)


def probability_tolerance(dtype: torch.dtype) -> float:
    """Attention probability rows summing to 1, and agreement with HF's ``output_attentions``."""
    return 1e-3 if dtype in (torch.float16, torch.bfloat16) else 1e-5
