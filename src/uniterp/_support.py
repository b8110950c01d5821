"""``model.support()``: which standardized values a model offers, layer by layer, and why not."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._internals import INTERNAL_SITES
from ._layout import LAYER_SITES
from ._nnsight_compat import native_module
from ._norms import NORM_SITES
from ._paths import module_at

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
    notes: list[str] = field(default_factory=list)

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
            "notes": list(self.notes),
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
        lines += [f"  note: {note}" for note in self.notes]
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
    """Build the `SupportReport` of ``model`` from its binding.

    Example::

        >>> print(support_report(model))
    """
    binding = model.binding
    layout, n = binding.layout, model.num_layers
    values: list[ValueSupport] = [ValueSupport("token_embeddings", per_layer=False)]
    for site in LAYER_SITES + NORM_SITES + INTERNAL_SITES:
        layers = tuple(i for i in range(n) if site in layout.layers[i])
        missing = {i: binding.reason(site, i) for i in range(n) if i not in layers}
        values.append(ValueSupport(site, per_layer=True, layers=layers, unavailable=missing))
    if binding.attention is None:
        values.append(ValueSupport("attention_scores", per_layer=True, reason=PROBS_OFF))
        values.append(ValueSupport("attention_probabilities", per_layer=True, reason=PROBS_OFF))
    else:
        entries = binding.attention
        scores = {i: e if isinstance(e, str) else e.scores for i, e in enumerate(entries)}
        values.append(
            ValueSupport(
                "attention_scores",
                per_layer=True,
                layers=tuple(i for i, why in scores.items() if why is None),
                unavailable={i: why for i, why in scores.items() if why is not None},
            )
        )
        layers = tuple(i for i, e in enumerate(entries) if not isinstance(e, str))
        missing = {i: e for i, e in enumerate(entries) if isinstance(e, str)}
        values.append(
            ValueSupport("attention_probabilities", per_layer=True, layers=layers, unavailable=missing)
        )
    states, why = model.mixer_states.located()
    values.append(ValueSupport("mixer_states", per_layer=True, layers=tuple(sorted(states)), unavailable=why))
    for name in _GLOBAL_VALUES[1:]:
        values.append(ValueSupport(name, per_layer=False))
    values.append(ValueSupport("project_on_vocab", per_layer=False, reason=binding.lens_unavailable or ""))
    notes = [binding.describe()]
    hidden = binding.sizes.hidden_size
    if layout.embedding_width is not None and hidden is not None and layout.embedding_width != hidden:
        notes.append(
            f"token_embeddings is (batch, seq, {layout.embedding_width}): the embedding is narrower than "
            f"hidden_size={hidden} and the model projects it only after adding other embeddings"
        )
    if layout.token_embeddings.path != binding.spec.embed_tokens:
        notes.append(
            f"token_embeddings is the output of {layout.token_embeddings.path} (the projection of "
            f"{binding.spec.embed_tokens} to the hidden size)"
        )
    return SupportReport(model.model_type, n, str(binding.block), values, notes)


#: Why attention probabilities are not offered when they were not asked for.
PROBS_OFF = "off by default; load with enable_attention_probs=True (switches to eager attention)"


def describe_tree(self: StandardizedTransformer) -> str:
    """The standardized tree of ``self`` and where each piece lives natively (its repr)."""
    from ._errors import UniterpError

    try:
        spec = self.spec
        blocks = [native_module(b) for b in self.layers]
        sizes = [f"{self.num_layers} layers"]
        for label, getter in (("hidden", "hidden_size"), ("heads", "num_heads"), ("kv", "num_kv_heads")):
            try:
                sizes.append(f"{label} {getattr(self, getter)}")
            except UniterpError:
                pass
        sizes.append(f"vocab {self.vocab_size}")
        lines = [f"StandardizedTransformer({self.model_type}: {', '.join(sizes)})"]
        root = native_module(self)

        def row(name: str, path: str | None) -> str:
            module = module_at(root, path) if path else None
            kind = type(module).__name__ if module is not None else "absent"
            return f"  {name:<16} {path or '-':<34} {kind}"

        lines.append(row("embed_tokens", spec.embed_tokens))
        lines.append(row(f"layers[0..{self.num_layers - 1}]", spec.layers))
        for std in ("self_attn", "mlp"):
            groups: dict[tuple[str, str], list[int]] = {}
            for i, block in enumerate(blocks):
                rel = self.binding.layout.modules[i].get(std)
                kind = type(block.get_submodule(rel)).__name__ if rel else "absent"
                groups.setdefault((rel or "-", kind), []).append(i)
            for (rel, kind), idx in groups.items():
                where = "" if len(groups) == 1 else f"  (layers {_ranges(idx)})"
                lines.append(f"    {std:<14} {rel:<34} {kind}{where}")
        lines.append(row("ln_final", spec.final_norm))
        lines.append(row("lm_head", spec.lm_head))
        lines.append(
            "  values: token_embeddings, "
            + ", ".join(LAYER_SITES)
            + ", logits, next_token_probs, input_ids, attention_mask"
        )
        lines.append(f"  bound by {self.binding.describe()}")
        return "\n".join(lines)
    except Exception:  # noqa: BLE001 - a repr must never raise
        return f"StandardizedTransformer({getattr(self, '_model_type', '?')})"
