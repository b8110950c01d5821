"""AtP*'s QK fix: the effect of patching queries or keys, exact through the attention softmax.

Attribution patching is linear in the patched value; through a saturated softmax
that misses large effects (Kramár et al. 2024, "AtP*"). For a query or key node
the attention scores it changes are recomputed exactly, the softmax is applied,
and only the step after the pattern is linear:

    effect = sum_{t, s} (A'[t, s] - A[t, s]) * dM/dA[t, s]

with ``A`` the base run's pattern and ``A'`` the pattern with the node patched.
Scores are ``scale * q . k + bias`` where the bias (causal mask, padding, ALiBi)
does not depend on ``q`` or ``k``; the scale is fitted from the two runs and the
form is checked, so soft-capped scores (Gemma 2) are refused rather than
approximated. Grouped key/value heads stay grouped: a key node is one key/value
head at one position and its effect sums over the query heads that read it.
"""

from __future__ import annotations

import torch

__all__ = ["fit_scale", "key_effects", "query_effects"]


def _dots(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``q . k`` per head: ``q (b, H, T, d)``, ``k (b, Hk, S, d)`` -> ``(b, H, T, S)`` (grouped heads shared)."""
    b, heads, t, d = q.shape
    groups = heads // k.shape[1]
    grouped = q.view(b, k.shape[1], groups, t, d)
    return torch.einsum("bgitd,bgsd->bgits", grouped, k).reshape(b, heads, t, k.shape[2])


def _valid(scores: torch.Tensor) -> torch.Tensor:
    """Entries the mask leaves open (masked ones hold -inf or the dtype's minimum)."""
    return torch.isfinite(scores) & (scores > torch.finfo(scores.dtype).min / 2)


def fit_scale(
    scores_a: torch.Tensor,
    scores_b: torch.Tensor,
    q_a: torch.Tensor,
    k_a: torch.Tensor,
    q_b: torch.Tensor,
    k_b: torch.Tensor,
) -> tuple[float, float]:
    """The ``scale`` in ``scores = scale * q . k + bias(positions)`` from two runs, and the relative misfit.

    Example::

        >>> scale, misfit = fit_scale(s_clean, s_corrupt, q_clean, k_clean, q_corrupt, k_corrupt)
        >>> misfit < 1e-4      # the form holds
    """
    valid = _valid(scores_a.float()) & _valid(scores_b.float())
    ds = (scores_a.double() - scores_b.double())[valid]
    dd = (_dots(q_a.double(), k_a.double()) - _dots(q_b.double(), k_b.double()))[valid]
    if float(dd.pow(2).sum()) == 0.0:
        return 1.0, 0.0 if float(ds.abs().max(initial=0.0)) == 0.0 else float("inf")
    scale = float((ds * dd).sum() / dd.pow(2).sum())
    misfit = float((ds - scale * dd).norm() / ds.norm().clamp_min(1e-30))
    return scale, misfit


def query_effects(
    probs: torch.Tensor,
    grad: torch.Tensor,
    scores: torch.Tensor,
    queries: torch.Tensor,
    source_queries: torch.Tensor,
    keys: torch.Tensor,
    scale: float,
    per_position: bool,
) -> torch.Tensor:
    """Effects of patching each query head (at each position): ``(b, H, T)`` or ``(b, H)`` (all positions at once).

    Args:
        probs: The base pattern ``(b, H, T, S)``.
        grad: ``dM/dA`` on the base run, same shape.
        scores: The base run's scores (softmax input), same shape.
        queries: Base queries ``(b, H, T, d)``; ``source_queries`` the patched-in ones.
        keys: Base keys ``(b, Hk, S, d)``.
        scale: From `fit_scale`.
        per_position: One node per (head, position); else one per head (every position patched).
    """
    delta = scale * _dots((source_queries - queries).float(), keys.float())
    new = scores.float() + torch.where(_valid(scores.float()), delta, torch.zeros_like(delta))
    changed = (torch.softmax(new, dim=-1) - probs.float()) * grad.float()
    per_row = torch.nan_to_num(changed).sum(-1)  # (b, H, T): a query changes its own row only
    return per_row if per_position else per_row.sum(-1)


def key_effects(
    probs: torch.Tensor,
    grad: torch.Tensor,
    scores: torch.Tensor,
    queries: torch.Tensor,
    keys: torch.Tensor,
    source_keys: torch.Tensor,
    scale: float,
    per_position: bool,
) -> torch.Tensor:
    """Effects of patching each key/value head's key (at each position): ``(b, Hk, S)`` or ``(b, Hk)``.

    One key changes one column of every row's scores; the row's softmax is then
    rescaled in closed form: with ``u = A[t, s] (exp(delta) - 1)`` the effect on row
    ``t`` is ``u / (1 + u) * (G[t, s] - sum_j A[t, j] G[t, j])``, computed from the
    log-probabilities so a key the row ignores can still take over.
    """
    s32, g32 = scores.float(), grad.float()
    valid = _valid(s32)
    b, heads = probs.shape[:2]
    kv = keys.shape[1]
    if per_position:
        delta = scale * _dots(queries.float(), (source_keys - keys).float())
        log_p = torch.log_softmax(torch.where(valid, s32, torch.full_like(s32, float("-inf"))), dim=-1)
        shifted = torch.where(valid, (log_p + delta).clamp(max=80.0), torch.full_like(s32, float("-inf")))
        u = shifted.exp() - log_p.exp()
        weight = torch.where(valid, u / (1 + u), torch.zeros_like(u))
        mean_grad = (probs.float() * g32).sum(-1, keepdim=True)
        effect = torch.nan_to_num(weight * (g32 - mean_grad)).sum(-2)  # (b, H, S)
        return effect.view(b, kv, heads // kv, -1).sum(2)
    delta = scale * (_dots(queries.float(), source_keys.float()) - _dots(queries.float(), keys.float()))
    new = s32 + torch.where(valid, delta, torch.zeros_like(delta))
    changed = torch.nan_to_num((torch.softmax(new, dim=-1) - probs.float()) * g32).sum((-1, -2))  # (b, H)
    return changed.view(b, kv, heads // kv).sum(-1)
