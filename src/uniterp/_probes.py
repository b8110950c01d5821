"""Sites for the gradient and patching tools: names to values, forward order, edits inside one trace.

Every tool here names values the way ``model.sites`` does (standardized,
TransformerLens or native module path) and, in addition, a bare per-layer name
(``"layers_output"``) for every layer that has the value. Inside a trace the tools
edit values through `Edits`: each edit reads a value and writes a function of it,
and `Edits.run` applies them in the order the model computes the values (the order
nnsight requires within one invoke).

A gradient is taken with a *probe*: the value ``v`` is replaced by ``v + d`` with
``d`` a zero tensor that requires grad, so the forward is unchanged (``v + 0 == v``)
and ``d.grad`` is the gradient of the metric with respect to ``v``, whatever
module, operation or view the value comes from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ._aliases import GLOBAL_VALUES, SiteRef, read_ref, resolve_name, write_ref
from ._errors import InputError, UnavailableError
from ._internals import INTERNAL_SITES
from ._layout import FORWARD_ORDER, LAYER_SITES
from ._norms import NORM_SITES

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = [
    "SITE_ORDER",
    "Edits",
    "ToolSite",
    "grad_mode",
    "read_sites",
    "resolve_sites",
    "unit_dims",
]

SITE_ORDER = FORWARD_ORDER  # every value of a layer, in the order a block computes them
PER_LAYER = frozenset(
    LAYER_SITES + INTERNAL_SITES + NORM_SITES + ("attention_scores", "attention_probabilities")
)
_NO_GRADIENT = {
    "expert_indices": "expert indices are integers (a routing decision) and have no gradient",
    "next_token_probs": "next_token_probs is computed from the logits (read-only); use the logits, or "
    "compute probabilities inside the metric",
    "input_ids": "token ids are integers and have no gradient; use token_embeddings",
    "attention_mask": "the attention mask is an integer input and has no gradient",
}

#: Per site: ``(position dim, unit dim, unit name)`` in the standardized shape (``None``: no such axis).
_DIMS: dict[str, tuple[int | None, int | None, str | None]] = {
    "queries": (2, 1, "head"),
    "keys": (2, 1, "head"),
    "values": (2, 1, "head"),
    "queries_pre_rotary": (2, 1, "head"),
    "keys_pre_rotary": (2, 1, "head"),
    "attention_scores": (2, 1, "head"),
    "attention_probabilities": (2, 1, "head"),
    "head_outputs": (1, 2, "head"),
    "mlp_neurons": (1, 2, "neuron"),
    "router_logits": (1, 2, "expert"),
    "expert_weights": (1, None, None),
}


def unit_dims(ref: SiteRef) -> tuple[int | None, int | None, str | None]:
    """Position dim, unit (head/neuron) dim and unit name of the value ``ref`` names (as the alias shows it)."""
    pos, unit, name = _DIMS.get(ref.site, (1, None, None))
    if ref.transform == "heads_to_seq" and pos == 2 and unit == 1:
        return 1, 2, name
    return pos, unit, name


@dataclass(frozen=True)
class ToolSite:
    """A value a tool reads or edits: what it is (`SiteRef`) and the key results use for it."""

    ref: SiteRef
    key: str

    @property
    def order(self) -> tuple[int, int]:
        """Sort key in forward order: (layer, place in the block); embeddings first, logits last."""
        site = self.ref.site
        if site == "token_embeddings":
            return (-1, 0)
        if site == "logits":
            return (1 << 30, 0)
        return (int(self.ref.layer or 0), SITE_ORDER.index(site) if site in SITE_ORDER else len(SITE_ORDER))


def resolve_sites(
    model: StandardizedTransformer, sites: str | Sequence[str], *, writable: bool = True, what: str = "sites"
) -> list[ToolSite]:
    """``sites`` as `ToolSite`s in forward order; a bare per-layer name means every layer that has it.

    Example::

        >>> [s.key for s in resolve_sites(model, ["layers_output", "blocks.0.attn.hook_z"])]
        ['blocks.0.attn.hook_z', 'layers_output.0', 'layers_output.1', ...]

    Raises:
        InputError: An empty list, an unknown name, a value that cannot be written
            (computed aliases, integers, ``next_token_probs``), or a name given twice.
        UnavailableError: The value does not exist on this model (with the reason).
    """
    names = [sites] if isinstance(sites, str) else list(sites) if isinstance(sites, (list, tuple)) else None
    if not names:
        raise InputError(f"{what}: give one value name or a non-empty list of them; got {sites!r}")
    binding = model.binding
    found: dict[str, ToolSite] = {}
    for name in names:
        if not isinstance(name, str) or not name:
            raise InputError(f"{what}: {name!r} is not a value name")
        if name in _NO_GRADIENT and writable:
            raise InputError(f"{what}: {name!r}: {_NO_GRADIENT[name]}")
        refs = _expand(model, name) if name in PER_LAYER else [resolve_name(binding, name)]
        for ref in refs:
            if writable:
                _check_editable(model, ref)
            key = ref.standard_name if name in PER_LAYER else name
            if ref.standard_name in {
                s.ref.standard_name for s in found.values() if s.ref.transform == ref.transform
            }:
                raise InputError(f"{what}: {name!r} names {ref.standard_name}, which is already requested")
            found[key] = ToolSite(ref, key)
    return sorted(found.values(), key=lambda s: s.order)


def _expand(model: StandardizedTransformer, site: str) -> list[SiteRef]:
    """Every layer's ``site`` where it exists; `UnavailableError` (layer 0's reason) when none has it."""
    refs: list[SiteRef] = []
    first: UnavailableError | None = None
    for layer in range(model.num_layers):
        try:
            refs.append(resolve_name(model.binding, f"{site}.{layer}"))
        except UnavailableError as error:
            first = first or error
    if not refs:
        assert first is not None
        raise first
    return refs


def _check_editable(model: StandardizedTransformer, ref: SiteRef) -> None:
    if ref.site in _NO_GRADIENT:
        raise InputError(f"{ref.name!r}: {_NO_GRADIENT[ref.site]}")
    if not ref.writable:
        raise InputError(
            f"{ref.name!r} is computed from {ref.standard_name} (a norm's normalisation) and cannot be edited; "
            f"use {ref.standard_name}"
        )
    if ref.layer is None and ref.site not in GLOBAL_VALUES:
        raise InputError(f"{ref.name!r} is not a value uniterp can edit")


# -- edits inside one trace ---------------------------------------------------------------------


Edit = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Edits:
    """Edits of values inside one trace, applied in forward order.

    Example::

        >>> edits = Edits()
        >>> edits.add(site, lambda v: v * 0)         # any function of the value
        >>> with model.trace(prompts):
        ...     edits.run(model)
        ...     logits = model.logits.save()

    Several edits of one value compose in the order they were added. ``seen``
    records each kept value as it was read (before the edits), ``written`` each
    edited value as written, by key.
    """

    items: list[tuple[ToolSite, list[Edit]]] = field(default_factory=list)
    seen: dict[str, torch.Tensor] = field(default_factory=dict)
    written: dict[str, torch.Tensor] = field(default_factory=dict)
    keep: set[str] = field(default_factory=set)

    def add(
        self, site: ToolSite, edit: Edit | None = None, *, keep: bool = False, first: bool = False
    ) -> str:
        """Apply ``edit`` to ``site``'s value (``None``: only read it; ``keep``: record the value read).

        ``first`` puts the edit before those already added for the value. Returns
        the key the value is recorded under (an earlier site naming the same value
        keeps its key).
        """
        for existing, edits in self.items:
            if existing.ref == site.ref:
                if edit is not None:
                    edits.insert(0 if first else len(edits), edit)
                if keep:
                    self.keep.add(existing.key)
                return existing.key
        self.items.append((site, [edit] if edit is not None else []))
        if keep:
            self.keep.add(site.key)
        return site.key

    def edited(self, site: ToolSite) -> bool:
        """Whether an edit of ``site``'s value was already added."""
        return any(existing.ref == site.ref and edits for existing, edits in self.items)

    def run(self, model: StandardizedTransformer) -> None:
        """Read (and edit) every value, in forward order. Call inside the trace, before the logits."""
        for site, edits in sorted(self.items, key=lambda item: item[0].order):
            value = read_ref(model, site.ref)
            if site.key in self.keep:
                self.seen[site.key] = value
            if not edits:
                continue
            new = value
            for edit in edits:
                new = edit(new)
            self.written[site.key] = new
            write_ref(model, site.ref, new)


def read_sites(
    model: StandardizedTransformer,
    encoding: dict[str, torch.Tensor],
    sites: Sequence[ToolSite],
    metric: Any,
    n: int,
    *,
    also: Callable[[Edits], None] | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """One forward of ``encoding`` reading ``sites``: ``({key: detached copy}, metric value)``.

    Example::

        >>> values, value = read_sites(model, clean_encoding, sites, metric, n=2)

    ``also`` adds further reads to the `Edits` before the forward (the QK fix's queries
    and keys); ``n`` is the number of prompt pairs the metric averages over.
    """
    from .metrics import logits_kwargs, metric_value

    edits = Edits()
    for site in sites:
        edits.add(site, None, keep=True)
    if also is not None:
        also(edits)
    with torch.no_grad(), model.trace(encoding, **logits_kwargs(model, metric)):
        edits.run(model)
        logits = model.logits.save()
    values = {k: v.detach().clone() for k, v in edits.seen.items()}
    return values, float(metric_value(metric, logits, n))


def probe(store: dict[str, torch.Tensor], key: str) -> Edit:
    """An edit ``v -> v + d`` with ``d`` a zero leaf requiring grad, kept in ``store[key]``."""

    def add_probe(value: torch.Tensor) -> torch.Tensor:
        delta = torch.zeros_like(value, requires_grad=True)
        store[key] = delta
        return value + delta

    return add_probe


class grad_mode:
    """Gradient recording on for the forward, whatever the caller's mode; refuses inference mode.

    Example::

        >>> with torch.no_grad(), grad_mode("gradients"):
        ...     ...                                  # autograd records here
    """

    def __init__(self, tool: str) -> None:
        self.tool = tool
        self._inner = torch.enable_grad()

    def __enter__(self) -> None:
        if torch.is_inference_mode_enabled():
            raise InputError(
                f"{self.tool} needs gradients, but torch.inference_mode() is on; call it outside inference mode"
            )
        self._inner.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._inner.__exit__(*exc)


def float_value(value: Any, name: str) -> torch.Tensor:
    """``value`` if it is a floating tensor, else `InputError` (gradients need floating values)."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        what = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        raise InputError(f"{name} holds {what} values; gradients need floating-point values")
    return value
