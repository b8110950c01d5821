"""The binding: how one loaded model maps onto the standard, computed once.

Loading runs a short pipeline and keeps its result, a frozen `Binding`:

1. **spec**: the user's, a row of the hand table, a row of the generated table,
   or a live discovery (``_model.py`` picks it; see `uniterp.lookup_spec`);
2. **structure**: sizes from the config, the layout probe (every layer, every
   value's locator and shape), the block layout and the lens status;
3. **trust**: a spec that came from discovery (live or generated) is checked
   numerically before its values are trusted (`run_checks`);
4. **attention probabilities**: located and validated, when asked for.

Views, tools, ``check()`` and ``support()`` read the binding; nothing else
records how the model is laid out. `bind_stages` yields the binding after each
stage; the model installs each one before asking for the next, because the later
stages read values through the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ._errors import ArchitectureError, UniterpError
from ._families import SpecSource
from ._internals import with_kernel_sites
from ._layout import Layout, Locator
from ._layout_probe import probe_layout
from ._nnsight_compat import native_module
from ._paths import module_at
from ._sizes import Sizes, read_sizes, text_config
from ._spec import ArchitectureSpec, BlockLayout

if TYPE_CHECKING:
    from ._attention import Located
    from ._check import CheckResult

__all__ = ["Binding", "bind_stages"]

#: Spec sources whose values are checked numerically at load before they are trusted.
CHECKED_SOURCES: tuple[str, ...] = ("generated", "discovered")
_LENS_CHECK = "project_on_vocab(layers_output[-1]) == logits"


@dataclass(frozen=True)
class Binding:
    """How one loaded model maps onto uniterp's standard (read-only).

    Example::

        >>> model.binding.source, model.binding.block, model.binding.sizes.hidden_size
        ('table', 'sequential', 64)
        >>> model.binding.locator("mlps_output", 0)
        Locator(path='model.layers.0.mlp', io='output', key=None, ...)

    Attributes:
        model_type: The HF ``config.model_type``.
        spec: The `ArchitectureSpec` bound.
        source: Where the spec came from: ``"given"`` (``spec=``), ``"table"``
            (the hand-written table), ``"registered"`` (`register_spec`),
            ``"generated"`` (the generated table of discovered rows) or
            ``"discovered"`` (a live discovery).
        sizes: The model's sizes.
        block: The resolved block layout.
        residual_factor: Factor applied to each sub-block's output before the
            residual add (Granite's ``residual_multiplier``; 1 elsewhere).
        logit_scale: Multiplied into the logits (Cohere), or ``None``.
        logit_divisor: Divides the logits (Granite), or ``None``.
        logit_softcap: Final-logit soft-cap (Gemma 2/3), or ``None``.
        layout: The probe's findings, layer by layer.
        lens_unavailable: Why ``project_on_vocab`` is not the model's readout,
            or ``None`` when it is exact.
        attention: Per layer, where the attention probabilities are (or why
            they are unavailable); ``None`` when they were not asked for.
        checked_numerically: Whether the values were checked against the native
            modules at load (always for discovered specs).
    """

    model_type: str
    spec: ArchitectureSpec
    source: SpecSource
    sizes: Sizes
    block: BlockLayout
    residual_factor: float
    logit_scale: float | None
    logit_divisor: float | None
    logit_softcap: float | None
    layout: Layout
    lens_unavailable: str | None
    attention: tuple[Located | str, ...] | None = None
    checked_numerically: bool = False

    def locator(self, site: str, layer: int) -> Locator | None:
        """Where ``site`` lives at ``layer`` (an index in ``[0, num_layers)``), or ``None``."""
        return self.layout.layers[layer].get(site)

    def reason(self, site: str, layer: int) -> str:
        """Why ``site`` is unavailable at ``layer``."""
        return self.layout.unavailable[layer].get(site, "not located on this layer")

    def describe(self) -> str:
        """One line: which spec serves the model and how it was verified.

        Example::

            >>> model.binding.describe()
            "llama: hand-written row 'llama' (uniterp._families); structure probed with scan"
        """
        where = {
            "given": "the spec passed as spec=",
            "table": f"hand-written row {self.model_type!r} (uniterp._families)",
            "registered": f"row {self.model_type!r} registered with register_spec",
            "generated": f"generated row {self.model_type!r} (uniterp._discovered)",
            "discovered": "a live automatic discovery",
        }[self.source]
        checks = f"structure probed with {self.layout.probed_with}"
        if self.checked_numerically:
            checks += ", values checked against the native modules"
        return f"{self.model_type}: {where}; {checks}"


def bind_stages(
    model: Any, spec: ArchitectureSpec, source: SpecSource, model_type: str, attention_probs: bool
) -> Iterator[Binding]:
    """The binding after each stage of the pipeline (see the module docstring).

    The caller must install each yielded binding on ``model`` before resuming:
    the trust and attention stages read values through the model.
    """
    binding = structure(model, spec, source, model_type)
    yield binding
    if source in CHECKED_SOURCES:
        from ._check import run_checks

        try:
            result = run_checks(model)
        except UniterpError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure means the guess is not trusted
            raise ArchitectureError(
                model_type,
                "layers_output",
                [spec.layers],
                f"the automatically discovered layout could not be checked: {type(error).__name__}: {error}",
            ) from error
        binding = trusted(binding, result)
        yield binding
    if attention_probs:
        from ._attention import locate_all

        yield replace(binding, attention=tuple(locate_all(model, binding)))


def structure(model: Any, spec: ArchitectureSpec, source: SpecSource, model_type: str) -> Binding:
    """The structural stage: sizes, the layout probe, the block layout and the lens status."""
    root = native_module(model)
    stack = module_at(root, spec.layers)
    if stack is None:
        raise ArchitectureError(model_type, "layers", [spec.layers], "no module at that path")
    config = text_config(model.config)
    sizes = read_sizes(config, spec, root, len(stack))
    layout = with_kernel_sites(model, probe_layout(model, spec, model_type, sizes), spec.layers, sizes)
    spec = _checked_final_norm(spec, source, layout, model_type)

    def number(key: str | None) -> float | None:
        value = getattr(config, key, None) if key else None
        return float(value) if value is not None else None

    factor = number(spec.residual_multiplier)
    return Binding(
        model_type=model_type,
        spec=spec,
        source=source,
        sizes=sizes,
        block=spec.block_layout(config),
        residual_factor=factor if factor else 1.0,
        logit_scale=number(spec.logit_scale),
        logit_divisor=number(spec.logit_divisor),
        logit_softcap=number(spec.logit_softcap),
        layout=layout,
        lens_unavailable=lens_status(spec),
    )


def _checked_final_norm(
    spec: ArchitectureSpec, source: SpecSource, layout: Layout, model_type: str
) -> ArchitectureSpec:
    """The spec, once its final norm is known to run after the last layer.

    A norm that runs before the stack (BART's ``layernorm_embedding``) or never is
    not the model's readout. A discovered spec drops it (the numerical check then
    decides); a written spec is refused. This is structural on purpose: a norm
    with unit weights is nearly idempotent on normalised states, so a lens through
    the wrong norm can pass a numerical check on random weights.
    """
    runs = layout.final_norm_runs
    if runs in (None, "after"):
        return spec
    where = "before the first layer" if runs == "before" else "in no forward pass"
    if source in CHECKED_SOURCES:
        return spec.with_(
            final_norm=None, notes=f"{spec.notes}; {spec.final_norm} runs {where}, not a final norm"
        )
    raise ArchitectureError(
        model_type,
        "ln_final",
        [spec.final_norm or ""],
        f"the module runs {where}, not after the last layer, so it is not the model's final norm",
    )


def lens_status(spec: ArchitectureSpec) -> str | None:
    """Why the spec says ``project_on_vocab`` is not the model's readout, or ``None``."""
    if spec.lens_unavailable is not None:
        return spec.lens_unavailable
    if spec.residual_streams and not spec.stream_readout:
        return (
            f"the model merges its residual streams ({spec.residual_streams}) into the final hidden "
            "state in code outside any module, so the readout cannot be applied to a layer's output"
        )
    return None


def trusted(binding: Binding, result: CheckResult) -> Binding:
    """The binding of a discovered spec after its numerical check, or `ArchitectureError`.

    When every value and the logits are exact and only the lens of the last layer
    differs, the model's readout uses more than that layer's output: the binding is
    kept with ``project_on_vocab`` unavailable and the reason.
    """
    failed = [item.name for item in result.failures]
    if failed == [_LENS_CHECK]:
        item = result.failures[0]
        reason = (
            f"project_on_vocab(layers_output[-1]) differs from the logits ({item.detail}): the model's "
            "readout uses more than the last layer's output"
        )
        return replace(binding, lens_unavailable=reason, checked_numerically=True)
    if not result.passed:
        raise ArchitectureError(
            binding.model_type,
            "layers_output",
            [binding.spec.layers],
            "the automatically discovered layout failed its numerical check: " + result.summary(),
        )
    return replace(binding, checked_numerically=True)
