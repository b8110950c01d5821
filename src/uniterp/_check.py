"""``model.check()``: the deep numerical check of a standardized model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ._errors import CheckFailedError
from ._layout import FORWARD_ORDER, LAYER_SITES, to_standard
from ._nnsight_compat import native_module
from ._rules import PROBE_PROMPTS
from ._tolerances import lens_tolerance, sum_tolerance

if TYPE_CHECKING:
    from ._binding import Binding
    from ._model import StandardizedTransformer

__all__ = ["CheckItem", "CheckResult", "run_checks"]

#: Per-layer values the checked forward reads, in forward order (residual values and those from norms).
_CHECKED_SITES = tuple(
    s
    for s in FORWARD_ORDER
    if s in LAYER_SITES or s in ("attentions_output_normed", "residual_mid", "mlps_output_normed")
)


@dataclass(frozen=True)
class CheckItem:
    """One check and its outcome.

    Attributes:
        name: What was checked.
        status: ``"passed"``, ``"failed"`` or ``"skipped"`` (not applicable).
        detail: A short explanation (the largest difference, the reason for a skip).
        max_abs_diff: Largest absolute difference seen, where one was measured.
    """

    name: str
    status: str
    detail: str = ""
    max_abs_diff: float | None = None


@dataclass
class CheckResult:
    """Every check ``model.check()`` ran, in order.

    Example::

        >>> result = model.check()
        >>> result.passed, len(result.items)
        (True, 12)
        >>> result.raise_on_failure()
    """

    model_type: str
    items: list[CheckItem] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether no check failed (skipped checks do not count)."""
        return all(item.status != "failed" for item in self.items)

    @property
    def failures(self) -> list[CheckItem]:
        """The failed checks."""
        return [item for item in self.items if item.status == "failed"]

    def summary(self) -> str:
        """One line: counts, and the names of failed checks."""
        counts = {s: sum(i.status == s for i in self.items) for s in ("passed", "failed", "skipped")}
        text = f"{self.model_type}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
        if self.failures:
            text += " (failed: " + "; ".join(f"{i.name}: {i.detail}" for i in self.failures) + ")"
        return text

    def raise_on_failure(self) -> None:
        """Raise `CheckFailedError` if any check failed."""
        if not self.passed:
            raise CheckFailedError(self.summary())

    def __str__(self) -> str:
        width = max((len(i.name) for i in self.items), default=10)
        lines = [self.summary()]
        for item in self.items:
            lines.append(f"  {item.status:<7} {item.name:<{width}}  {item.detail}")
        return "\n".join(lines)


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def _copy(x: Any) -> Any:
    return x.detach().clone() if isinstance(x, torch.Tensor) else x


class _NativeCapture:
    """Plain forward hooks recording raw module inputs/outputs of one forward."""

    def __init__(self, root: torch.nn.Module, paths: list[str]) -> None:
        self.values: dict[str, tuple[tuple[Any, ...], dict[str, Any], Any]] = {}
        self.handles = []
        for path in set(paths):
            module = root.get_submodule(path)

            def hook(_m: Any, args: Any, kwargs: Any, out: Any, path: str = path) -> None:
                # copies: the model may modify these tensors in place later on
                self.values[path] = (
                    tuple(_copy(a) for a in args),
                    {k: _copy(v) for k, v in kwargs.items()},
                    tuple(_copy(o) for o in out) if isinstance(out, tuple) else _copy(out),
                )

            self.handles.append(module.register_forward_hook(hook, with_kwargs=True))

    def get(self, loc: Any) -> torch.Tensor:
        args, kwargs, out = self.values[loc.path]
        if loc.io == "output":
            value = out if loc.key is None else out[loc.key]
        else:
            value = args[loc.key] if isinstance(loc.key, int) else kwargs[loc.key]
        return value

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def run_checks(model: StandardizedTransformer, prompts: Sequence[str] | None = None) -> CheckResult:
    """Run every numerical check on ``model`` and return the `CheckResult`.

    Example::

        >>> print(run_checks(model))

    One forward reads every value (in forward order) while plain hooks capture the
    native modules' values; then, each a stage of its own: values == native
    modules, logits == a plain HF forward, the layers chain, the parts add up where
    the block layout says so, the lens of the last layer is the logits, and writes
    reach the output.
    """
    binding = model.binding
    model.dispatch()  # the hooks go on the real modules
    result = CheckResult(model.model_type)
    with torch.no_grad():
        run = _read_everything(model, binding, list(prompts or PROBE_PROMPTS))
        result.items += _values_equal_native(binding, run)
        result.items.append(_logits_equal_hf(model, run))
        result.items.append(_layers_chain(binding, run))
        result.items.append(_parts_add_up(binding, run))
        result.items.append(_residual_mid_adds_up(binding, run))
        result.items.append(_lens_is_logits(binding, run))
        result.items += _writes_reach_output(model, run)
    return result


@dataclass
class _Run:
    """Everything one checked forward read: uniterp's values, the native ones, and its inputs."""

    prompts: list[str]
    kwargs: dict[str, torch.Tensor]
    values: dict[str, list[Any]]
    capture: _NativeCapture
    logits: torch.Tensor
    lens: torch.Tensor | None


def _read_everything(model: StandardizedTransformer, binding: Binding, prompts: list[str]) -> _Run:
    # containers are built outside the block: names bound by comprehensions inside a
    # trace do not survive it
    layout, n = binding.layout, model.num_layers
    kwargs: dict[str, torch.Tensor] = {}
    values: dict[str, list[Any]] = {site: [] for site in _CHECKED_SITES}
    out: dict[str, Any] = {}
    paths = [loc.path for layer in layout.layers for loc in layer.values()]
    capture = _NativeCapture(native_module(model), paths)
    try:
        with model.trace(prompts):
            for key, value in model.inputs[1].items():
                if isinstance(value, torch.Tensor):
                    kwargs[key] = value.save()
            for i in range(n):
                for site in _CHECKED_SITES:
                    if site in layout.layers[i]:
                        values[site].append(getattr(model, site)[i].save())
                    else:
                        values[site].append(None)
            if binding.lens_unavailable is None:
                out["lens"] = model.project_on_vocab(values["layers_output"][-1]).save()
            out["logits"] = model.logits.save()
    finally:
        capture.close()
    return _Run(prompts, kwargs, values, capture, out["logits"], out.get("lens"))


def _item(name: str, ok: bool, detail: str, diff: float | None = None) -> CheckItem:
    return CheckItem(name, "passed" if ok else "failed", detail, diff)


def _values_equal_native(binding: Binding, run: _Run) -> list[CheckItem]:
    items = []
    for site in _CHECKED_SITES:
        layers = [i for i in range(binding.sizes.num_layers) if site in binding.layout.layers[i]]
        if not layers and site not in LAYER_SITES:
            continue  # values a block layout may not have are not listed where absent
        if not layers:
            items.append(CheckItem(f"{site} == native", "skipped", "unavailable on every layer"))
            continue
        worst = 0.0
        for i in layers:
            loc, value = binding.layout.layers[i][site], run.values[site][i]
            native = to_standard(loc, run.capture.get(loc))
            if loc.flat:
                native = native.view(value.shape)
            if native.shape != value.shape:
                worst = float("inf")
                break
            worst = max(worst, _diff(native, value))
        items.append(
            _item(f"{site} == native", worst == 0.0, f"{len(layers)} layers, max |diff| {worst:.3g}", worst)
        )
    return items


def _logits_equal_hf(model: StandardizedTransformer, run: _Run) -> CheckItem:
    hf_logits = native_module(model)(**run.kwargs).logits
    d = _diff(hf_logits, run.logits)
    return _item("logits == HF forward", d == 0.0, f"max |diff| {d:.3g}", d)


def _layers_chain(binding: Binding, run: _Run) -> CheckItem:
    ins, outs = run.values["layers_input"], run.values["layers_output"]
    worst = max(
        (
            _diff(ins[i + 1], outs[i])
            for i in range(binding.sizes.num_layers - 1)
            if ins[i + 1] is not None and outs[i] is not None
        ),
        default=0.0,
    )
    return _item("layers_input[i+1] == layers_output[i]", worst == 0.0, f"max |diff| {worst:.3g}", worst)


def _parts_add_up(binding: Binding, run: _Run) -> CheckItem:
    """Parts add up where the block layout implies it (for an undeclared layout: reported, never failed)."""
    block, factor = binding.block, binding.residual_factor
    worst, ok, counted = 0.0, True, 0
    for i in range(binding.sizes.num_layers):
        parts = [
            run.values[s][i] for s in ("layers_input", "attentions_output", "mlps_output", "layers_output")
        ]
        if any(p is None for p in parts):
            continue
        x, a, m, out = parts
        if not x.shape == a.shape == m.shape == out.shape:  # several residual streams per token
            continue
        d = _diff(x + factor * a + factor * m, out)
        worst = max(worst, d)
        ok = ok and d <= sum_tolerance(out)
        counted += 1
    name = f"layers_output == layers_input + attn + mlp ({block})"
    if not counted and binding.spec.residual_streams:
        return CheckItem(name, "skipped", "the layers mix several residual streams with learned weights")
    if not counted:
        return CheckItem(name, "skipped", "no layer has both an attention and an MLP value")
    if block in ("sequential", "parallel"):
        return _item(name, ok, f"{counted} layers, max |diff| {worst:.3g}", worst)
    if block == "unknown" and ok:
        return CheckItem(name, "passed", f"detected: {counted} layers add up, max |diff| {worst:.3g}", worst)
    return CheckItem(name, "skipped", f"block layout {block!r} does not add them up (max |diff| {worst:.3g})")


def _residual_mid_adds_up(binding: Binding, run: _Run) -> CheckItem:
    """``residual_mid`` is the layer input plus what the attention adds (to the residual stream)."""
    name = "residual_mid == layers_input + attn"
    worst, ok, counted = 0.0, True, 0
    for i in range(binding.sizes.num_layers):
        mid, x = run.values["residual_mid"][i], run.values["layers_input"][i]
        attn = run.values["attentions_output_normed"][i]
        attn = attn if attn is not None else run.values["attentions_output"][i]
        if any(v is None for v in (mid, x, attn)) or not mid.shape == x.shape == attn.shape:
            continue
        d = _diff(x + binding.residual_factor * attn, mid)
        worst = max(worst, d)
        ok = ok and d <= sum_tolerance(mid)
        counted += 1
    if not counted:
        return CheckItem(name, "skipped", "no layer has residual_mid")
    detail = f"{counted} layers, max |diff| {worst:.3g}"
    if binding.block in ("sequential", "sandwich"):
        return _item(name, ok, detail, worst)
    if ok:
        return CheckItem(name, "passed", "detected: " + detail, worst)
    return CheckItem(name, "skipped", f"block layout {binding.block!r} adds more between them ({detail})")


def _lens_is_logits(binding: Binding, run: _Run) -> CheckItem:
    name = "project_on_vocab(layers_output[-1]) == logits"
    if run.lens is None:
        return CheckItem(name, "skipped", f"project_on_vocab is unavailable: {binding.lens_unavailable}")
    d = _diff(run.lens, run.logits)
    # the model may unembed a slice of positions: matmul shapes differ, bits may too
    return _item(name, d <= lens_tolerance(run.logits), f"max |diff| {d:.3g}", d)


def _writes_reach_output(model: StandardizedTransformer, run: _Run) -> list[CheckItem]:
    """A write changes the logits; writing a value back unchanged keeps them identical."""
    mid = model.num_layers // 2
    with model.trace(run.prompts):
        h = model.layers_output[mid]
        model.layers_output[mid] = h + torch.randn_like(h) * (h.std() + 1.0)
        perturbed = model.logits.save()
    d = _diff(perturbed, run.logits)
    changed = _item(f"write to layers_output[{mid}] changes logits", d > 0, f"max |diff| {d:.3g}", d)
    with model.trace(run.prompts):
        model.layers_output[mid] = model.layers_output[mid].clone()
        same = model.logits.save()
    d = _diff(same, run.logits)
    kept = _item(f"unchanged write to layers_output[{mid}] keeps logits", d == 0.0, f"max |diff| {d:.3g}", d)
    return [changed, kept]
