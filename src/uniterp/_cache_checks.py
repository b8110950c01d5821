"""Numerical checks of the weights and decompositions on a real forward: ``check_internals``.

Each check compares uniterp's computation with what the native modules computed in
the same forward (plain PyTorch hooks, no uniterp code path), or with the cached
residual the parts should add up to:

- ``head_outputs @ W_O + b_O`` == the attention's output projection's output;
- ``mlp_neurons @ W_out + b_out`` == the MLP's down projection's output;
- ``decompose_resid`` adds up to the residual stream at every layer;
- ``stack_head_results`` plus ``b_O`` == ``attentions_output`` on every layer;
- the logit attributions of the decomposed final residual add up to the logits minus
  the biases (``b_U`` and the final norm's bias through ``W_U``);
- each ``mixer_states`` value read in the trace == the state a plain forward of the same
  batch leaves in its returned cache (or on the module that keeps it).

A check that does not apply (no weights, a block layout where the sum is untrue) is
skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._check import CheckItem
from ._decompose import SumMismatchError
from ._errors import UnavailableError
from ._nnsight_compat import native_module
from ._rules import PROBE_PROMPTS
from ._weight_views import layer_weight, model_weight

if TYPE_CHECKING:
    from ._model import StandardizedTransformer
    from .cache import ActivationCache

__all__ = ["check_internals", "decomposition_tolerance"]


def decomposition_tolerance(reference: torch.Tensor) -> float:
    """Products and sums computed in another order than the model: 1e-5 relative in float32."""
    scale = max(1.0, float(reference.detach().abs().max())) if reference.numel() else 1.0
    if reference.dtype == torch.float32 or reference.dtype == torch.float64:
        return 1e-5 * scale
    return 64 * torch.finfo(reference.dtype).eps * scale


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max()) if a.numel() else 0.0


class _Outputs:
    """Plain forward hooks keeping a copy of the outputs of some native modules."""

    def __init__(self, root: torch.nn.Module, paths: set[str]) -> None:
        self.values: dict[str, torch.Tensor] = {}
        self.handles = []
        for path in paths:

            def hook(_m: Any, _args: Any, out: Any, path: str = path) -> None:
                value = out[0] if isinstance(out, tuple) else out
                self.values[path] = value.detach().clone()

            self.handles.append(root.get_submodule(path).register_forward_hook(hook))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def check_internals(model: StandardizedTransformer, prompts: Sequence[str] | None = None) -> list[CheckItem]:
    """Check weights and decompositions against the native modules on one real forward.

    Example::

        >>> for item in check_internals(model):
        ...     print(item.status, item.name, item.detail)
        passed head_outputs @ W_O + b_O == output projection  3 layers, max |diff| 2.4e-07
        ...

    Args:
        model: The model.
        prompts: Prompts to run (default: the built-in probe prompts, left-padded).

    Returns:
        `uniterp.CheckItem` entries (``passed``/``failed``/``skipped`` with details), to
        append to a ``CheckResult``.
    """
    from .cache import default_names, run_with_cache

    binding = model.binding
    model.dispatch()
    n = binding.sizes.num_layers
    names = [
        f"{site}.{layer}"
        for layer in range(n)
        for site in ("head_outputs", "mlp_neurons")
        if binding.locator(site, layer) is not None
    ]
    paths = {
        binding.locator(site, layer).path: (site, layer)  # type: ignore[union-attr]
        for layer in range(n)
        for site in ("head_outputs", "mlp_neurons")
        if binding.locator(site, layer) is not None
    }
    states = sorted(model.mixer_states.located()[0])
    names += [f"mixer_states.{layer}" for layer in states]
    outputs = _Outputs(native_module(model), set(paths))
    try:
        everything = [*default_names(model), *names, "logits"]
        cache = run_with_cache(model, list(prompts or PROBE_PROMPTS), names=everything)
    finally:
        outputs.close()
    by_site = {value: path for path, value in paths.items()}
    return [
        _projection(model, cache, outputs.values, by_site, "head_outputs"),
        _projection(model, cache, outputs.values, by_site, "mlp_neurons"),
        _decomposition(cache),
        _heads(cache),
        _logit_attribution(model, cache),
        _mixer_states(model, cache),
    ]


def _projection(
    model: StandardizedTransformer,
    cache: ActivationCache,
    native: dict[str, torch.Tensor],
    paths: dict[tuple[str, int], str],
    site: str,
) -> CheckItem:
    if site == "head_outputs":
        name, weight, bias = "head_outputs @ W_O + b_O == output projection", "W_O", "b_O"
    else:
        name, weight, bias = "mlp_neurons @ W_out + b_out == down projection", "W_out", "b_out"
    worst, counted, reasons = 0.0, 0, set()
    ok = True
    for layer in range(model.num_layers):
        key = f"{site}.{layer}"
        if key not in cache._values:
            reasons.add(model.binding.reason(site, layer))
            continue
        try:
            w, b = layer_weight(model, weight, layer), layer_weight(model, bias, layer)
        except UnavailableError as error:
            reasons.add(error.reason)
            continue
        x = cache._values[key]
        mine = (torch.einsum("bshd,hdm->bsm", x, w.to(x)) if site == "head_outputs" else x @ w.to(x)) + b.to(
            x
        )
        reference = native[paths[(site, layer)]].reshape(mine.shape)
        d = _diff(mine, reference)
        worst, counted = max(worst, d), counted + 1
        ok = ok and d <= decomposition_tolerance(reference)
    if not counted:
        return CheckItem(name, "skipped", "; ".join(sorted(reasons)) or "no layer has the value")
    detail = f"{counted} layers, max |diff| {worst:.3g}"
    if reasons:
        detail += f" (others skipped: {'; '.join(sorted(reasons))})"
    return CheckItem(name, "passed" if ok else "failed", detail, worst)


def _decomposition(cache: ActivationCache) -> CheckItem:
    name = "decompose_resid adds up to the residual stream"
    n, worst = cache.binding.sizes.num_layers, 0.0
    try:
        for layer in range(n + 1):
            stack = cache.decompose_resid(layer=layer)
            target = cache[f"layers_input.{layer}" if layer < n else f"layers_output.{n - 1}"]
            mask = cache.attention_mask.bool().to(target.device)
            worst = max(worst, _diff(stack.sum(0)[mask], target[mask]))
    except SumMismatchError as error:
        # refused where the block layout was not declared additive (the decomposition is refused
        # there too); a failure only where the layout claims the sum
        declared = cache.binding.block in ("sequential", "parallel", "sandwich")
        return CheckItem(name, "failed" if declared else "skipped", error.reason)
    except UnavailableError as error:
        return CheckItem(name, "skipped", error.reason)
    return CheckItem(name, "passed", f"{n + 1} layers, max |diff| {worst:.3g}", worst)


def _heads(cache: ActivationCache) -> CheckItem:
    name = "stack_head_results + b_O == attentions_output"
    try:
        stack = cache.stack_head_results()  # each layer is checked against attentions_output inside
    except SumMismatchError as error:
        return CheckItem(name, "failed", error.reason)
    except UnavailableError as error:
        return CheckItem(name, "skipped", error.reason)
    return CheckItem(name, "passed", f"{stack.shape[0]} heads")


def _logit_attribution(model: StandardizedTransformer, cache: ActivationCache) -> CheckItem:
    name = "logit_attrs of decompose_resid == logits - biases"
    binding = model.binding
    try:
        stack = cache.decompose_resid()
        logits = cache["logits"]
        tokens = logits.argmax(-1)
        attrs = cache.logit_attrs(stack, tokens=tokens, pre_softcap=True).sum(0)
        w_u, b_u = model_weight(model, "W_U"), model_weight(model, "b_U")
    except UnavailableError as error:
        return CheckItem(name, "skipped", error.reason)
    final = cache[f"layers_output.{binding.sizes.num_layers - 1}"]
    root = native_module(model)
    with torch.no_grad():
        normed = root.get_submodule(binding.spec.final_norm)(final) if binding.spec.final_norm else final
        expected = root.get_submodule(binding.spec.lm_head)(normed)
        bias = (
            getattr(root.get_submodule(binding.spec.final_norm), "bias", None)
            if binding.spec.final_norm
            else None
        )
        expected = expected - b_u.to(expected)
        if isinstance(bias, torch.Tensor):
            expected = expected - bias.detach().to(expected) @ w_u.to(expected)
        factor = (binding.logit_scale or 1.0) / (binding.logit_divisor or 1.0)
        expected = (expected * factor).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    mask = cache.attention_mask.bool().to(expected.device)
    d = _diff(attrs[mask], expected[mask])
    ok = d <= decomposition_tolerance(expected[mask])
    where = " (before the soft-cap)" if binding.logit_softcap is not None else ""
    return CheckItem(name, "passed" if ok else "failed", f"max |diff| {d:.3g}{where}", d)


def _mixer_states(model: StandardizedTransformer, cache: ActivationCache) -> CheckItem:
    """Each ``mixer_states`` value read in the trace == the state a plain forward of the same batch
    leaves in its returned cache (or on the module that keeps it)."""
    from ._fastpath import forward_inputs
    from ._mixer_states import cache_state

    name = "mixer_states == the state a plain forward leaves"
    sites, reasons = model.mixer_states.located()
    if not sites:
        return CheckItem(name, "skipped", "; ".join(sorted(set(reasons.values()))) or "no layer has one")
    root = native_module(model)
    encoding = {"input_ids": cache.input_ids, "attention_mask": cache.attention_mask}
    with torch.no_grad():
        out = root(**forward_inputs(model, encoding), use_cache=True)
    returned = getattr(out, "cache", None)  # transformers 5 names it `cache`; `past_key_values` before
    if returned is None and "past_key_values" in out:
        returned = out["past_key_values"]
    worst, ok = 0.0, True
    for layer, site in sorted(sites.items()):
        if site.kind == "module":
            reference = getattr(root.get_submodule(site.holder), site.attribute, None)
        else:
            reference = cache_state(returned, site.index)
        mine = cache[f"mixer_states.{layer}"]
        if not isinstance(reference, torch.Tensor) or reference.shape != mine.shape:
            return CheckItem(
                name, "failed", f"layer {layer}: the plain forward left no state of shape {tuple(mine.shape)}"
            )
        d = _diff(mine, reference)
        worst, ok = max(worst, d), ok and d <= decomposition_tolerance(reference)
    return CheckItem(
        name, "passed" if ok else "failed", f"{len(sites)} layers, max |diff| {worst:.3g}", worst
    )
