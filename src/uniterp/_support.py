"""``model.support()``: which standardized values a model offers, layer by layer, and why not."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._layout import LAYER_SITES

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["SupportReport", "ValueSupport", "support_report"]

_GLOBAL_VALUES = ("token_embeddings", "logits", "next_token_probs", "input_ids", "attention_mask")


@dataclass(frozen=True)
class ValueSupport:
    """Availability of one standardized value.

    Attributes:
        name: The standardized name.
        per_layer: Whether the value is indexed by layer.
        layers: Layers where it is available (per-layer values).
        unavailable: Layer -> reason, for layers where it is not.
        reason: Why a whole value is unavailable (empty when available).
    """

    name: str
    per_layer: bool
    layers: tuple[int, ...] = ()
    unavailable: dict[int, str] = field(default_factory=dict)
    reason: str = ""

    @property
    def available(self) -> bool:
        """Available on at least one layer (or, for a global value, at all)."""
        return bool(self.layers) if self.per_layer else not self.reason

    @property
    def everywhere(self) -> bool:
        """Available on every layer (or, for a global value, at all)."""
        return self.available and not self.unavailable and not self.reason


@dataclass
class SupportReport:
    """Per-value availability for one model, with reasons.

    Example::

        >>> report = model.support()
        >>> report["attentions_output"].layers        # (0, 1, 2)
        >>> print(report)
    """

    model_type: str
    num_layers: int
    block: str
    values: list[ValueSupport]

    def __getitem__(self, name: str) -> ValueSupport:
        for value in self.values:
            if value.name == name:
                return value
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "model_type": self.model_type,
            "num_layers": self.num_layers,
            "block": self.block,
            "values": {
                v.name: {
                    "available": v.available,
                    "layers": list(v.layers),
                    "unavailable": {str(k): r for k, r in v.unavailable.items()},
                    "reason": v.reason,
                }
                for v in self.values
            },
        }

    def __str__(self) -> str:
        lines = [f"{self.model_type}: {self.num_layers} layers, block layout {self.block!r}"]
        width = max(len(v.name) for v in self.values)
        for v in self.values:
            if v.everywhere:
                status = "available" + (" on every layer" if v.per_layer else "")
            elif v.available:
                status = f"available on layers {_ranges(v.layers)}"
            else:
                status = "unavailable"
            lines.append(f"  {v.name:<{width}}  {status}")
            reasons: dict[str, list[int]] = {}
            for layer, reason in v.unavailable.items():
                reasons.setdefault(reason, []).append(layer)
            for reason, layers in reasons.items():
                lines.append(f"  {'':<{width}}    layers {_ranges(layers)}: {reason}")
            if v.reason:
                lines.append(f"  {'':<{width}}    {v.reason}")
        return "\n".join(lines)


def _ranges(indices: Any) -> str:
    indices = sorted(indices)
    parts: list[str] = []
    start = prev = indices[0]
    for i in [*indices[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)


def support_report(model: StandardizedTransformer) -> SupportReport:
    """Build the `SupportReport` of ``model`` from its load-time layout.

    Example::

        >>> print(support_report(model))
    """
    layout = model._ensure_layout()
    n = model.num_layers
    values: list[ValueSupport] = []
    for name in _GLOBAL_VALUES[:1]:
        values.append(ValueSupport(name, per_layer=False))
    for site in LAYER_SITES:
        layers = tuple(i for i in range(n) if site in layout.layers[i])
        missing = {i: layout.unavailable[i].get(site, "not located") for i in range(n) if i not in layers}
        values.append(ValueSupport(site, per_layer=True, layers=layers, unavailable=missing))
    if not model._enable_attention_probs:
        values.append(
            ValueSupport(
                "attention_probabilities",
                per_layer=True,
                reason="off by default; load with enable_attention_probs=True (switches to eager attention)",
            )
        )
    else:
        model._ensure_attention_probs()
        entries = model._attention_probs or []
        layers = tuple(i for i, e in enumerate(entries) if not isinstance(e, str))
        missing = {i: e for i, e in enumerate(entries) if isinstance(e, str)}
        values.append(
            ValueSupport("attention_probabilities", per_layer=True, layers=layers, unavailable=missing)
        )
    for name in _GLOBAL_VALUES[1:]:
        values.append(ValueSupport(name, per_layer=False))
    return SupportReport(model.model_type, n, str(model.spec.block_layout(model.text_config)), values)
