"""Gradients of a metric with respect to any standardized value, and integrated gradients.

Example::

    >>> from uniterp.grads import gradients, integrated_gradients
    >>> from uniterp.metrics import logit_diff
    >>> metric = logit_diff(model, " Paris", " Tokyo")
    >>> g = gradients(model, ["The capital of France is"], metric, ["token_embeddings", "layers_output.2"])
    >>> g["layers_output.2"].shape                                   # (batch, seq, hidden)
    >>> ig = integrated_gradients(model, ["The capital of France is"], metric, steps=32)
    >>> ig.attributions.sum(), ig.metric_input - ig.metric_baseline  # completeness

One forward with gradient recording and one ``torch.autograd.grad`` call: each
requested value ``v`` is written back as ``v + d`` with ``d`` a zero tensor that
requires grad, so the run is unchanged and ``d``'s gradient is the gradient with
respect to ``v``. Only those gradients are computed: no parameter's ``.grad`` is
touched and nothing is left on the model. ``freeze=`` holds attention patterns
and/or norm scales at their values on the prompts (see `uniterp._freeze`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ._errors import InputError, ShapeError
from ._freeze import Freezer
from ._probes import Edits, ToolSite, float_value, grad_mode, probe, resolve_sites, unit_dims
from ._tooling import as_prompt_list, encode_prompts
from .metrics import check_metric, logits_kwargs, metric_value

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["GradientResult", "IntegratedGradients", "gradients", "integrated_gradients"]


@dataclass
class GradientResult:
    """Gradients of one metric, by value name.

    Example::

        >>> result = gradients(model, prompts, metric, ["layers_output"])
        >>> result["layers_output.3"].shape            # (batch, seq, hidden), like the value
        >>> result.grad_times_value("layers_output.3").sum(-1)   # (batch, seq)

    Attributes:
        grads: Name -> gradient, shaped like the value (names as given; a bare
            per-layer name gives one entry per layer, ``"layers_output.3"``).
        values: Name -> the value itself on the run (detached).
        metric: The metric's value (0-d float32; per-prompt values summed).
        frozen: What was held fixed (``freeze=``).
    """

    grads: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    metric: torch.Tensor
    frozen: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.grads:
            raise KeyError(f"{name!r} was not requested; have {list(self.grads)}")
        return self.grads[name]

    def keys(self) -> list[str]:
        """The value names, in forward order."""
        return list(self.grads)

    def grad_times_value(self, name: str) -> torch.Tensor:
        """``gradient * value`` of ``name`` (the first-order attribution of each element)."""
        return self[name] * self.values[name]


def gradients(
    model: StandardizedTransformer,
    prompts: str | Sequence[str],
    metric: Any,
    sites: str | Sequence[str],
    *,
    freeze: str | Sequence[str] = (),
) -> GradientResult:
    """Gradients of ``metric(logits)`` with respect to each value in ``sites``, from one forward.

    Example::

        >>> g = gradients(model, ["The capital of France is"], logit_diff(model, " Paris", " Tokyo"),
        ...               ["token_embeddings", "layers_output", "blocks.2.attn.hook_z"])
        >>> g["token_embeddings"].shape          # (batch, seq, hidden)
        >>> g["blocks.2.attn.hook_z"].shape      # (batch, seq, n_heads, head_dim)
        >>> g = gradients(model, prompts, metric, ["layers_output.1"],
        ...               freeze=("attention_probabilities", "norm_scales"))

    Args:
        model: The model.
        prompts: One prompt or a list (left-padded into one batch).
        metric: ``metric(logits) -> scalar or (n_prompts,)`` on the ``(n_prompts,
            seq, vocab)`` logits (see `uniterp.metrics`); per-prompt values are summed.
        sites: Value names: standardized (``"layers_output.3"``, ``"head_outputs.1"``,
            ``"mlp_neurons.0"``, ``"token_embeddings"``, ``"logits"``), TransformerLens
            (``"blocks.3.hook_resid_post"``) or native module paths; a bare per-layer
            name (``"mlps_output"``) means every layer that has it.
        freeze: ``"attention_probabilities"`` (needs ``enable_attention_probs=True``)
            and/or ``"norm_scales"``: held at their values on this run, detached,
            so the gradient does not flow through them.

    Returns:
        `GradientResult`: gradients shaped like the values, the values, the metric.

    Raises:
        InputError: Empty prompts, a metric that is not callable, returns a
            non-scalar or does not depend on the logits, an unknown or read-only name.
        UnavailableError: A value (or what ``freeze`` needs) does not exist on this
            model, with the reason.
    """
    prompts = as_prompt_list(prompts)
    metric = check_metric(metric)
    targets = resolve_sites(model, sites)
    freezer = Freezer(model, freeze)
    model.dispatch()
    encoding, _ = encode_prompts(model, prompts)
    store: dict[str, torch.Tensor] = {}
    edits = Edits()
    for site in targets:
        edits.add(site, probe(store, site.key), keep=True)
    freezer.add_attention(edits, "self")
    out: dict[str, torch.Tensor] = {}
    with grad_mode("gradients"), freezer.norms("self"):
        with model.trace(encoding, **logits_kwargs(model, metric)):
            edits.run(model)
            out["logits"] = model.logits.save()
        value = metric_value(metric, out["logits"], len(prompts), need_grad=True)
        grads = _grad(value, [store[s.key] for s in targets])
    return GradientResult(
        grads={s.key: g for s, g in zip(targets, grads)},
        values={s.key: edits.seen[s.key].detach() for s in targets},
        metric=value.detach(),
        frozen=freezer.names,
    )


def _grad(value: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of ``value`` with respect to ``inputs`` (zeros where it does not depend on one), detached."""
    found = torch.autograd.grad(value, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g.detach() for x, g in zip(inputs, found)]


# -- integrated gradients -----------------------------------------------------------------------


@dataclass
class IntegratedGradients:
    """Integrated-gradients attributions of one value.

    Example::

        >>> ig = integrated_gradients(model, prompts, metric, "token_embeddings", steps=64)
        >>> ig.attributions.shape                 # like the value: (batch, seq, hidden)
        >>> ig.per_position().shape               # (batch, seq)
        >>> ig.completeness_error                 # |sum - (M(input) - M(baseline))| / |M(input) - M(baseline)|

    Attributes:
        site: The value's name.
        attributions: ``(input - baseline) * mean gradient`` along the straight path,
            shaped like the value.
        inputs: The value on the prompts.
        baseline: The value it is integrated from.
        metric_input: The metric on the prompts (with the same freezing).
        metric_baseline: The metric with the value replaced by the baseline.
        steps: Points of the midpoint rule.
        frozen: What was held at the prompts' values.
        position_dim: The value's position dimension.
    """

    site: str
    attributions: torch.Tensor
    inputs: torch.Tensor
    baseline: torch.Tensor
    metric_input: float
    metric_baseline: float
    steps: int
    frozen: tuple[str, ...] = field(default=())
    position_dim: int = 1

    @property
    def total(self) -> float:
        """Sum of all attributions."""
        return float(self.attributions.double().sum())

    @property
    def completeness_error(self) -> float:
        """``|sum of attributions - (metric_input - metric_baseline)|`` relative to the metric difference."""
        delta = self.metric_input - self.metric_baseline
        return abs(self.total - delta) / max(abs(delta), 1e-12)

    def per_position(self) -> torch.Tensor:
        """Attributions summed over every dimension but batch and position: ``(batch, seq)``."""
        moved = self.attributions.movedim(self.position_dim, 1)
        return moved.reshape(moved.shape[0], moved.shape[1], -1).sum(-1)


def integrated_gradients(
    model: StandardizedTransformer,
    prompts: str | Sequence[str],
    metric: Any,
    site: str = "token_embeddings",
    *,
    baseline: torch.Tensor | str | Sequence[str] | None = None,
    steps: int = 32,
    batch_size: int = 64,
    freeze: str | Sequence[str] = (),
) -> IntegratedGradients:
    """Integrated gradients of ``metric`` along the straight path from ``baseline`` to the value at ``site``.

    Example::

        >>> ig = integrated_gradients(model, ["The capital of France is"], metric, steps=32)
        >>> ig.per_position()                                        # (1, seq)
        >>> ig = integrated_gradients(model, clean, metric, "layers_output.2",
        ...                           baseline=["The capital of Japan is"])   # a corrupted run's value

    ``attributions = (x - x') * mean_k grad M(x' + a_k (x - x'))`` with ``a_k = (k +
    1/2) / steps`` (midpoint rule), so ``attributions.sum()`` approaches
    ``M(x) - M(x')`` as ``steps`` grows (completeness). The steps run as rows of
    batched forwards, ``batch_size`` rows at a time; the value at ``site`` is
    replaced by the interpolated point at every position.

    Args:
        model: The model.
        prompts: One prompt or a list.
        metric: As for `gradients`.
        site: One value (any name `gradients` takes, with its layer).
        baseline: ``None`` (zeros), a tensor broadcastable to the value's shape,
            or prompts (one per prompt, same token counts) whose value is used.
        steps: Points along the path.
        batch_size: Rows per forward (each row one prompt at one step).
        freeze: As for `gradients`; the frozen values are the prompts' own.

    Returns:
        `IntegratedGradients`.

    Raises:
        InputError: ``steps``/``batch_size`` below 1, several sites, baseline prompts
            of other lengths, and the errors of `gradients`.
        ShapeError: A baseline tensor that does not broadcast to the value.
    """
    prompts = as_prompt_list(prompts)
    metric = check_metric(metric)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive int; got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int; got {batch_size!r}")
    targets = resolve_sites(model, site, what="site")
    if len(targets) != 1:
        raise InputError(
            f"integrated_gradients takes one value with its layer; {site!r} names {len(targets)}"
        )
    target = targets[0]
    freezer = Freezer(model, freeze)
    model.dispatch()
    n = len(prompts)
    encoding, lengths = encode_prompts(model, prompts)
    kwargs = logits_kwargs(model, metric)
    x = _read_value(model, encoding, target, freezer, record=True)
    base = _baseline(model, baseline, x, lengths, target, n)
    ends = _endpoints(model, encoding, target, freezer, metric, x, base, kwargs)
    total_grad = torch.zeros_like(x, dtype=torch.float32)
    alphas = [(k + 0.5) / steps for k in range(steps)]
    per_chunk = max(1, batch_size // n)
    for start in range(0, steps, per_chunk):
        chunk = alphas[start : start + per_chunk]
        grads = _path_grads(model, encoding, target, freezer, metric, x, base, chunk, kwargs)
        total_grad += grads.float().view(len(chunk), *x.shape).sum(0)
    attributions = (x.float() - base.float()) * total_grad / steps
    return IntegratedGradients(
        site=target.key,
        attributions=attributions,
        inputs=x,
        baseline=base,
        metric_input=ends[1],
        metric_baseline=ends[0],
        steps=steps,
        frozen=freezer.names,
        position_dim=unit_dims(target.ref)[0] or 1,
    )


def _rows(encoding: dict[str, torch.Tensor], repeats: int) -> dict[str, torch.Tensor]:
    return {k: v.repeat(repeats, *([1] * (v.dim() - 1))) for k, v in encoding.items()}


def _read_value(
    model: StandardizedTransformer,
    encoding: dict[str, torch.Tensor],
    target: ToolSite,
    freezer: Freezer | None,
    record: bool = False,
) -> torch.Tensor:
    """The value at ``target`` on ``encoding`` (recording what ``freezer`` freezes when asked)."""
    edits = Edits()
    edits.add(target, None, keep=True)
    if record and freezer:
        freezer.add_attention(edits, "record")
    norms = freezer.norms("record") if record and freezer else _nothing()
    with torch.no_grad(), norms, model.trace(encoding) as tracer:
        edits.run(model)
        if not (record and freezer):
            tracer.stop()
    if record and freezer:
        freezer.collect()
    return float_value(edits.seen[target.key], target.key).detach()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _baseline(
    model: StandardizedTransformer,
    baseline: Any,
    x: torch.Tensor,
    lengths: list[int],
    target: ToolSite,
    n: int,
) -> torch.Tensor:
    if baseline is None:
        return torch.zeros_like(x)
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.to(x.device, x.dtype), x.shape).clone()
        except RuntimeError as error:
            raise ShapeError(
                f"baseline of shape {tuple(baseline.shape)} does not broadcast to {target.key}'s shape "
                f"{tuple(x.shape)}"
            ) from error
    others = as_prompt_list(baseline, "baseline")
    if len(others) != n:
        raise InputError(f"baseline has {len(others)} prompts for {n} prompts; give one per prompt")
    encoding, other_lengths = encode_prompts(model, others)
    if other_lengths != lengths:
        raise InputError(
            f"baseline prompts tokenize to {other_lengths} tokens and the prompts to {lengths}; "
            "each baseline must have as many tokens as its prompt"
        )
    return _read_value(model, encoding, target, None)


def _endpoints(
    model: StandardizedTransformer,
    encoding: dict[str, torch.Tensor],
    target: ToolSite,
    freezer: Freezer,
    metric: Any,
    x: torch.Tensor,
    base: torch.Tensor,
    kwargs: dict[str, Any],
) -> tuple[float, float]:
    """The metric with the value at the baseline and at the input (frozen values as in the path)."""
    n = x.shape[0]
    rows = torch.arange(n).repeat(2)
    point = torch.cat([base, x]).to(x.dtype)
    edits = Edits()
    edits.add(target, lambda v: point.to(v.device))
    freezer.add_attention(edits, "apply", rows)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad(), freezer.norms("apply", rows), model.trace(_rows(encoding, 2), **kwargs):
        edits.run(model)
        out["logits"] = model.logits.save()
    logits = out["logits"]
    low = metric_value(metric, logits[:n], n)
    high = metric_value(metric, logits[n:], n)
    return float(low), float(high)


def _path_grads(
    model: StandardizedTransformer,
    encoding: dict[str, torch.Tensor],
    target: ToolSite,
    freezer: Freezer,
    metric: Any,
    x: torch.Tensor,
    base: torch.Tensor,
    alphas: list[float],
    kwargs: dict[str, Any],
) -> torch.Tensor:
    """Gradients at ``base + a (x - base)`` for each ``a``: ``(len(alphas) * n, ...)``."""
    n = x.shape[0]
    a = torch.tensor(alphas, dtype=torch.float32, device=x.device).view(-1, *([1] * x.dim()))
    point = (base.float() + a * (x.float() - base.float())).to(x.dtype).reshape(-1, *x.shape[1:])
    point.requires_grad_(True)
    rows = torch.arange(n).repeat(len(alphas))
    edits = Edits()
    edits.add(target, lambda v: point.to(v.device))
    freezer.add_attention(edits, "apply", rows)
    out: dict[str, torch.Tensor] = {}
    with grad_mode("integrated_gradients"), freezer.norms("apply", rows):
        with model.trace(_rows(encoding, len(alphas)), **kwargs):
            edits.run(model)
            out["logits"] = model.logits.save()
        logits = out["logits"]
        total = sum(
            metric_value(metric, logits[i * n : (i + 1) * n], n, need_grad=True) for i in range(len(alphas))
        )
        (grad,) = _grad(total, [point])
    return grad
