"""``model.check()``: the deep numerical check of a standardized model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ._errors import CheckFailedError
from ._layout import LAYER_SITES, to_standard

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["CheckItem", "CheckResult", "run_checks"]

DEFAULT_PROMPTS = ("The Eiffel Tower is in the city of", "Hello world")


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


def _tolerance(reference: torch.Tensor) -> float:
    eps = torch.finfo(reference.dtype).eps if reference.is_floating_point() else 0.0
    scale = float(reference.detach().abs().max()) if reference.numel() else 1.0
    return 8 * eps * max(1.0, scale)


def _lens_tolerance(logits: torch.Tensor) -> float:
    """Lens vs logits: the model may unembed a slice of positions, so matmul shapes (and bits) differ."""
    scale = max(1.0, float(logits.detach().abs().max()))
    relative = 2e-4 if logits.dtype == torch.float32 else 64 * torch.finfo(logits.dtype).eps
    return max(_tolerance(logits) * 16, relative * scale)


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
    """
    prompts = list(prompts or DEFAULT_PROMPTS)
    layout = model._ensure_layout()
    model.dispatch()  # hooks below go on the real modules
    result = CheckResult(model.model_type)
    add = result.items.append
    n = model.num_layers
    with torch.no_grad():
        # 1. one forward reading every value in forward order, with plain hooks
        # capturing the native modules' values in the same forward
        # (containers are built outside the block: names bound by comprehensions
        # inside a trace do not survive it)
        kwargs: dict[str, torch.Tensor] = {}
        values: dict[str, list[Any]] = {site: [] for site in LAYER_SITES}
        out: dict[str, Any] = {}
        paths = [loc.path for layer in layout.layers for loc in layer.values()]
        capture = _NativeCapture(model._module, paths)
        try:
            with model.trace(prompts):
                for key, value in model.inputs[1].items():
                    if isinstance(value, torch.Tensor):
                        kwargs[key] = value.save()
                for i in range(n):
                    for site in LAYER_SITES:
                        if site in layout.layers[i]:
                            values[site].append(getattr(model, site)[i].save())
                        else:
                            values[site].append(None)
                if model.lens_unavailable is None:
                    out["lens"] = model.project_on_vocab(values["layers_output"][-1]).save()
                out["logits"] = model.logits.save()
        finally:
            capture.close()
        lens, logits = out.get("lens"), out["logits"]

        # 2. every standardized value equals the native module's value
        for site in LAYER_SITES:
            layers = [i for i in range(n) if site in layout.layers[i]]
            if not layers:
                add(CheckItem(f"{site} == native", "skipped", "unavailable on every layer"))
                continue
            worst = 0.0
            for i in layers:
                loc, value = layout.layers[i][site], values[site][i]
                native = to_standard(loc, capture.get(loc))
                if loc.flat:
                    native = native.view(value.shape)
                if native.shape != value.shape:
                    worst = float("inf")
                    break
                worst = max(worst, _diff(native, value))
            add(
                CheckItem(
                    f"{site} == native",
                    "passed" if worst == 0.0 else "failed",
                    f"{len(layers)} layers, max |diff| {worst:.3g}",
                    worst,
                )
            )

        # 3. logits equal a plain HF forward with the same inputs
        hf_logits = model._module(**kwargs).logits
        d = _diff(hf_logits, logits)
        add(CheckItem("logits == HF forward", "passed" if d == 0.0 else "failed", f"max |diff| {d:.3g}", d))

        # 4. layers chain: input of layer i+1 is output of layer i
        worst = max(
            (
                _diff(values["layers_input"][i + 1], values["layers_output"][i])
                for i in range(n - 1)
                if values["layers_input"][i + 1] is not None and values["layers_output"][i] is not None
            ),
            default=0.0,
        )
        add(
            CheckItem(
                "layers_input[i+1] == layers_output[i]",
                "passed" if worst == 0.0 else "failed",
                f"max |diff| {worst:.3g}",
                worst,
            )
        )

        # 5. parts add up where the block layout implies it (or, for a layout
        # nobody declared, whether they do: reported, never failed)
        block = model.spec.block_layout(model.text_config)
        factor = 1.0
        if model.spec.residual_multiplier:
            factor = float(getattr(model.text_config, model.spec.residual_multiplier, 1.0) or 1.0)
        worst, ok, counted = 0.0, True, 0
        for i in range(n):
            parts = [
                values[s][i] for s in ("layers_input", "attentions_output", "mlps_output", "layers_output")
            ]
            if any(p is None for p in parts):
                continue
            x, a, m, out = parts
            if not x.shape == a.shape == m.shape == out.shape:  # several residual streams per token
                continue
            d = _diff(x + factor * a + factor * m, out)
            worst = max(worst, d)
            ok = ok and d <= _tolerance(out) * 4
            counted += 1
        name = f"layers_output == layers_input + attn + mlp ({block})"
        if not counted and model.spec.residual_streams:
            add(CheckItem(name, "skipped", "the layers mix several residual streams with learned weights"))
        elif not counted:
            add(CheckItem(name, "skipped", "no layer has both an attention and an MLP value"))
        elif block in ("sequential", "parallel"):
            add(
                CheckItem(
                    name, "passed" if ok else "failed", f"{counted} layers, max |diff| {worst:.3g}", worst
                )
            )
        elif block == "unknown" and ok:
            add(
                CheckItem(name, "passed", f"detected: {counted} layers add up, max |diff| {worst:.3g}", worst)
            )
        else:
            add(
                CheckItem(
                    name, "skipped", f"block layout {block!r} does not add them up (max |diff| {worst:.3g})"
                )
            )

        # 6. the lens of the last layer is the logits
        name = "project_on_vocab(layers_output[-1]) == logits"
        if lens is None:
            add(CheckItem(name, "skipped", f"project_on_vocab is unavailable: {model.lens_unavailable}"))
        else:
            d = _diff(lens, logits)
            add(
                CheckItem(
                    name,
                    # the model may unembed a slice of positions: matmul shapes differ, bits may too
                    "passed" if d <= _lens_tolerance(logits) else "failed",
                    f"max |diff| {d:.3g}",
                    d,
                )
            )

        # 7. writes reach the output; writing a value back unchanged does not
        mid = n // 2
        with model.trace(prompts):
            h = model.layers_output[mid]
            model.layers_output[mid] = h + torch.randn_like(h) * (h.std() + 1.0)
            perturbed = model.logits.save()
        d = _diff(perturbed, logits)
        add(
            CheckItem(
                f"write to layers_output[{mid}] changes logits",
                "passed" if d > 0 else "failed",
                f"max |diff| {d:.3g}",
                d,
            )
        )
        with model.trace(prompts):
            model.layers_output[mid] = model.layers_output[mid].clone()
            same = model.logits.save()
        d = _diff(same, logits)
        add(
            CheckItem(
                f"unchanged write to layers_output[{mid}] keeps logits",
                "passed" if d == 0.0 else "failed",
                f"max |diff| {d:.3g}",
                d,
            )
        )
    return result
