"""Other naming schemes as aliases of the standardized values: one table per scheme.

A name resolves to a `SiteRef`: a standardized value, a layer, and how the alias's
tensor relates to it (the same tensor, a transposed view, or a value computed from
it). Three schemes:

- **standard** names: ``"layers_output.3"``, ``"layers_output[3]"``, ``"logits"``;
- **TransformerLens** hook names: ``"blocks.3.hook_resid_post"``,
  ``"blocks.5.attn.hook_q"``, ``"blocks.2.ln2.hook_normalized"``,
  ``"ln_final.hook_normalized"`` ... (`TL_HOOKS`);
- **native module paths** (SAE formats that name a module, nnterp's paths):
  ``"model.layers.3"`` or ``"layers.3.mlp"`` with ``io="output"`` or ``"input"``,
  matched against where the binding found each value.

The model-dependent cases are decided from the binding: ``hook_attn_out`` /
``hook_mlp_out`` are after the post-sublayer norm where the block has one (Gemma
2/3, OLMo 2), ``hook_q``/``hook_k`` are before the rotary embedding where the model
has one (``hook_rot_q``/``hook_rot_k`` after it), and a name whose value the
architecture does not have is refused with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from ._errors import InputError, UnavailableError

if TYPE_CHECKING:
    from ._binding import Binding

__all__ = ["NamedValues", "SiteRef", "TL_HOOKS", "read_ref", "resolve_name", "write_ref"]

Transform = Literal["same", "heads_to_seq", "normalized", "scale"]


@dataclass(frozen=True)
class SiteRef:
    """What a name means on one model: a standardized value at a layer, and how to get the alias from it.

    Example::

        >>> resolve_name(model.binding, "blocks.1.attn.hook_z")
        SiteRef(site='head_outputs', layer=1, transform='same', norm=None, name='blocks.1.attn.hook_z')

    Attributes:
        site: The standardized value (``"layers_output"``, ``"queries"``, ``"logits"`` ...).
        layer: Its layer, or ``None`` for a value of the whole model.
        transform: ``"same"`` (the very tensor), ``"heads_to_seq"`` (``(batch, heads,
            seq, d)`` shown as ``(batch, seq, heads, d)``, TransformerLens' order; a
            view, writable), ``"normalized"`` / ``"scale"`` (the norm's normalisation
            of the value before its gain, and the divisor it used; computed, read-only).
        norm: Native path of the norm whose normalisation ``"normalized"``/``"scale"`` use.
        name: The name as given.
    """

    site: str
    layer: int | None
    transform: Transform = "same"
    norm: str | None = None
    name: str = ""

    @property
    def standard_name(self) -> str:
        """``"layers_output.3"``: the standardized name this alias reads."""
        return self.site if self.layer is None else f"{self.site}.{self.layer}"

    @property
    def writable(self) -> bool:
        """Whether writing the alias writes the model's value."""
        return self.transform in ("same", "heads_to_seq")


#: TransformerLens hook names per block -> (standardized value, transform). Model-dependent
#: entries are decided in `resolve_name`.
TL_HOOKS: dict[str, tuple[str, Transform]] = {
    "hook_resid_pre": ("layers_input", "same"),
    "hook_resid_mid": ("residual_mid", "same"),
    "hook_resid_post": ("layers_output", "same"),
    "ln1.hook_normalized": ("layers_input", "normalized"),
    "ln1.hook_scale": ("layers_input", "scale"),
    "ln2.hook_normalized": ("residual_mid", "normalized"),
    "ln2.hook_scale": ("residual_mid", "scale"),
    "attn.hook_q": ("queries_pre_rotary", "heads_to_seq"),
    "attn.hook_k": ("keys_pre_rotary", "heads_to_seq"),
    "attn.hook_v": ("values", "heads_to_seq"),
    "attn.hook_rot_q": ("queries", "heads_to_seq"),
    "attn.hook_rot_k": ("keys", "heads_to_seq"),
    "attn.hook_attn_scores": ("attention_scores", "same"),
    "attn.hook_pattern": ("attention_probabilities", "same"),
    "attn.hook_z": ("head_outputs", "same"),
    "hook_attn_out": ("attentions_output", "same"),
    "hook_mlp_in": ("mlps_input", "same"),
    "mlp.hook_post": ("mlp_neurons", "same"),
    "hook_mlp_out": ("mlps_output", "same"),
}
#: TransformerLens names of whole-model values (the final norm's reads the last layer's output).
TL_GLOBAL: dict[str, tuple[str, Transform]] = {
    "hook_embed": ("token_embeddings", "same"),
    "ln_final.hook_normalized": ("layers_output", "normalized"),
    "ln_final.hook_scale": ("layers_output", "scale"),
}
#: TransformerLens names uniterp knows and cannot serve, with the reason.
TL_REFUSED: dict[str, str] = {
    "hook_pos_embed": "position embeddings are added inside the embedding module (or rotated into queries "
    "and keys); read token_embeddings or layers_input[0] (ActivationCache.decompose_resid gives the learned "
    "position rows as 'pos_embed' where the model has a table)",
    "attn.hook_result": "per-head contributions are not computed by HF models; use "
    "ActivationCache.stack_head_results from uniterp.cache (head_outputs through W_O)",
    "hook_attn_in": "HF models compute no per-head copy of the attention input",
    "hook_q_input": "HF models compute no per-head copy of the attention input",
    "hook_k_input": "HF models compute no per-head copy of the attention input",
    "hook_v_input": "HF models compute no per-head copy of the attention input",
    "mlp.hook_pre": "the MLP's pre-activation is computed inside the MLP module, not at a module seam",
    "mlp.hook_pre_linear": "the MLP's pre-activation is computed inside the MLP module, not at a module seam",
}
#: Standardized values of the whole model (no layer index).
GLOBAL_VALUES = ("token_embeddings", "logits", "next_token_probs")

_TL_BLOCK = re.compile(r"^blocks\.(?P<layer>-?\d+)\.(?P<hook>.+)$")
_STANDARD = re.compile(r"^(?P<site>[a-z_]+)(?:\.(?P<dot>-?\d+)|\[(?P<bracket>-?\d+)\])$")


def resolve_name(binding: Binding, name: str, io: Literal["output", "input"] = "output") -> SiteRef:
    """What ``name`` means on the model bound by ``binding``, or uniterp's error saying why it means nothing.

    Example::

        >>> resolve_name(model.binding, "blocks.3.hook_resid_post").standard_name
        'layers_output.3'
        >>> resolve_name(model.binding, "model.layers.3.mlp").standard_name
        'mlps_output.3'

    Args:
        binding: The model's binding (``model.binding``).
        name: A standardized, TransformerLens or native-module name.
        io: For a native module path: its ``"output"`` (default) or ``"input"``.

    Raises:
        InputError: The name is in no scheme uniterp knows.
        UnavailableError: The name is known, but the value does not exist on this model.
    """
    if not isinstance(name, str) or not name:
        raise InputError(f"a value name must be a non-empty string; got {name!r}")
    n = binding.sizes.num_layers
    if name in GLOBAL_VALUES:
        return _checked(binding, SiteRef(name, None, "same", None, name))
    if name in TL_GLOBAL:
        site, transform = TL_GLOBAL[name]
        if transform == "same":
            return _checked(binding, SiteRef(site, None, transform, None, name))
        return _checked(binding, _with_norm(binding, SiteRef(site, n - 1, transform, None, name)))
    if name in TL_REFUSED:
        raise UnavailableError(binding.model_type, name, TL_REFUSED[name])
    standard = _STANDARD.match(name)
    if standard and standard.group("site") in _per_layer_values():
        layer = int(standard.group("dot") or standard.group("bracket"))
        return _checked(binding, SiteRef(standard.group("site"), _layer(layer, n, name), "same", None, name))
    block = _TL_BLOCK.match(name)
    if block:
        layer, hook = _layer(int(block.group("layer")), n, name), block.group("hook")
        if hook in TL_REFUSED:
            raise UnavailableError(binding.model_type, name, TL_REFUSED[hook])
        if hook not in TL_HOOKS:
            raise InputError(
                f"{name!r}: unknown TransformerLens hook {hook!r}; known per block: {', '.join(TL_HOOKS)}"
            )
        site, transform = TL_HOOKS[hook]
        return _checked(binding, _tl_block(binding, SiteRef(site, layer, transform, None, name), layer))
    ref = _native(binding, name, io)
    if ref is not None:
        return ref
    if standard:
        raise InputError(
            f"{name!r}: {standard.group('site')!r} is not a per-layer value uniterp knows, nor a native module "
            f"path of {binding.model_type} that holds one"
        )
    raise InputError(
        f"{name!r} is not a standardized value (e.g. 'layers_output.3'), a TransformerLens hook name "
        f"(e.g. 'blocks.3.hook_resid_post') or a native module path of {binding.model_type} that holds one"
    )


def _per_layer_values() -> tuple[str, ...]:
    from ._internals import INTERNAL_SITES
    from ._layout import LAYER_SITES
    from ._norms import NORM_SITES

    return (
        LAYER_SITES
        + NORM_SITES
        + INTERNAL_SITES
        + ("attention_scores", "attention_probabilities", "mixer_states")
    )


def _layer(layer: int, n: int, name: str) -> int:
    from ._errors import LayerIndexError

    if not -n <= layer < n:
        raise LayerIndexError(f"{name!r}: layer {layer} is out of range (the model has {n} layers)")
    return layer % n


def _tl_block(binding: Binding, ref: SiteRef, layer: int) -> SiteRef:
    """The model-dependent choices of a per-block TransformerLens hook."""
    site, transform = ref.site, ref.transform
    present = binding.layout.layers[layer]
    if site in ("attentions_output", "mlps_output") and f"{site}_normed" in present:
        site = f"{site}_normed"  # what the block adds to the residual stream after its post-norm
    if site in ("queries_pre_rotary", "keys_pre_rotary") and "no rotary" in binding.reason(site, layer):
        site = site.replace("_pre_rotary", "")  # without rotary, hook_q is the kernel's query
    if site in ("queries", "keys") and ref.name.split(".")[-1] in ("hook_rot_q", "hook_rot_k"):
        if "no rotary" in binding.reason(f"{site}_pre_rotary", layer):
            raise UnavailableError(binding.model_type, ref.name, "the model applies no rotary embedding")
    resolved = SiteRef(site, layer, transform, None, ref.name)
    return _with_norm(binding, resolved) if transform in ("normalized", "scale") else resolved


def _with_norm(binding: Binding, ref: SiteRef) -> SiteRef:
    """Attach the norm whose normalisation a ``normalized``/``scale`` alias computes."""
    if ref.name.startswith("ln_final."):
        norm = binding.spec.final_norm
        if norm is None:
            raise UnavailableError(binding.model_type, ref.name, "the model has no final norm")
        if binding.lens_unavailable is not None or binding.spec.stream_readout:
            reason = binding.lens_unavailable or "the final norm reads the merged residual streams"
            raise UnavailableError(binding.model_type, ref.name, reason)
        return SiteRef(ref.site, ref.layer, ref.transform, norm, ref.name)
    role = "attention_norm" if ref.site == "layers_input" else "mlp_norm"
    rel = binding.layout.modules[ref.layer].get(role)
    if rel is None:
        which = "attention" if role == "attention_norm" else "MLP"
        raise UnavailableError(
            binding.model_type, ref.name, f"no norm module before the {which} of layer {ref.layer} was found"
        )
    path = f"{binding.spec.layers}.{ref.layer}.{rel}"
    return SiteRef(ref.site, ref.layer, ref.transform, path, ref.name)


def _checked(binding: Binding, ref: SiteRef) -> SiteRef:
    """``ref`` if its value exists on the model, else `UnavailableError` with the binding's reason."""
    if ref.layer is None:
        if ref.site not in GLOBAL_VALUES:
            raise InputError(f"{ref.name!r}: {ref.site!r} is not a value of the whole model; give a layer")
        return ref
    if ref.site == "mixer_states":
        return ref  # located on the model, not in the binding: `model.mixer_states` refuses with the reason
    if ref.site in ("attention_scores", "attention_probabilities"):
        if binding.attention is None:
            raise UnavailableError(
                binding.model_type,
                ref.name,
                "attention scores and probabilities are off; load with enable_attention_probs=True",
            )
        entry = binding.attention[ref.layer]
        reason = (
            entry if isinstance(entry, str) else (entry.scores if ref.site == "attention_scores" else None)
        )
        if reason:
            raise UnavailableError(binding.model_type, ref.name, reason)
        return ref
    if binding.locator(ref.site, ref.layer) is None:
        reason = binding.reason(ref.site, ref.layer)
        if reason == "not located on this layer" and not any(
            ref.site in layer for layer in binding.layout.layers
        ):
            raise InputError(f"{ref.name!r}: {ref.site!r} is not a per-layer value uniterp knows")
        raise UnavailableError(binding.model_type, ref.name, reason)
    return ref


def _native(binding: Binding, name: str, io: str) -> SiteRef | None:
    """A native module path (full, or relative to the backbone) -> the value read at its ``io``."""
    wanted = "output" if io in ("output", "out") else "input"
    matches: list[tuple[str, int]] = []
    for layer, sites in enumerate(binding.layout.layers):
        for site, loc in sites.items():
            if loc.op or loc.io != wanted:
                continue
            if loc.path == name or loc.path.endswith("." + name):
                matches.append((site, layer))
    embed = binding.layout.token_embeddings
    if wanted == "output" and (embed.path == name or embed.path.endswith("." + name)):
        matches.append(("token_embeddings", -1))
    if not matches:
        return None
    # one module can hold several values (an attention module's output is attentions_output);
    # prefer the residual-stream ones in a fixed order
    order = (
        "layers_output",
        "layers_input",
        "attentions_output",
        "attentions_input",
        "mlps_output",
        "mlps_input",
    )
    matches.sort(key=lambda m: order.index(m[0]) if m[0] in order else len(order))
    site, layer = matches[0]
    return SiteRef(site, None if layer < 0 else layer, "same", None, name)


def _measured_epsilon(norm: torch.nn.Module, centers: bool) -> float | None:
    """The epsilon of a parameter-free norm that keeps it in code (OLMo's ``F.layer_norm(..., eps=1e-5)``).

    Measured on an input whose variance is of the order of a usual epsilon (so the
    epsilon is resolved to float32 precision), then confirmed on a random input; ``None``
    when the norm has parameters, no known width, or the measured value does not hold.
    """
    shape = getattr(norm, "normalized_shape", None)
    width = shape[-1] if isinstance(shape, (tuple, list)) and shape else None
    eps: float | None = None
    if isinstance(width, int) and width >= 2 and next(norm.parameters(), None) is None:
        with torch.no_grad():
            signs = torch.tensor([1.0, -1.0]).repeat(width // 2 + 1)[:width]
            x = 3e-3 * signs  # variance ~ 9e-6
            x = x - x.mean() if centers else x
            out = norm(x.unsqueeze(0))[0].float()
            var = x.pow(2).mean()
            measured = float((x[0] / out[0]) ** 2 - var)
            probe = torch.randn(3, width, generator=torch.Generator().manual_seed(0))
            h = probe - probe.mean(-1, keepdim=True) if centers else probe
            expected = h / (h.pow(2).mean(-1, keepdim=True) + measured).sqrt()
            if measured > 0 and torch.allclose(norm(probe).float(), expected, atol=1e-5, rtol=1e-5):
                eps = measured
    return eps


def normalize(
    norm: torch.nn.Module, x: torch.Tensor, what: Transform, model_type: str, name: str
) -> torch.Tensor:
    """The normalisation ``norm`` applies to ``x`` before its gain (``"normalized"``) or its divisor (``"scale"``).

    LayerNorms centre and divide by ``sqrt(var + eps)``; RMS norms divide by
    ``sqrt(mean(x^2) + eps)``; both computed in float32 and returned in ``x``'s dtype
    (``scale`` is ``(..., 1)``).
    """
    kind = type(norm).__name__.lower()
    eps = next(
        (
            float(v)
            for a in ("eps", "variance_epsilon", "epsilon")
            if isinstance(v := getattr(norm, a, None), float)
        ),
        None,
    )
    if eps is None:
        eps = _measured_epsilon(norm, "rms" not in kind)
    if eps is None:
        raise UnavailableError(model_type, name, f"{type(norm).__name__} names no epsilon")
    h = x.float()
    if "rms" in kind:
        scale = (h.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    elif "layernorm" in kind or isinstance(norm, torch.nn.LayerNorm):
        h = h - h.mean(-1, keepdim=True)
        scale = (h.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    else:
        raise UnavailableError(
            model_type, name, f"{type(norm).__name__} is neither a LayerNorm nor an RMS norm uniterp can undo"
        )
    return (scale if what == "scale" else h / scale).to(x.dtype)


class NamedValues:
    """``model.sites``: every value by any name it has, readable and writable inside a trace.

    Example::

        >>> with model.trace("The Eiffel Tower is in"):
        ...     h = model.sites["blocks.3.hook_resid_post"].save()     # == layers_output[3]
        ...     q = model.sites["blocks.3.attn.hook_q"].save()         # (batch, seq, heads, head_dim)
        ...     model.sites["layers_output.4"] = model.sites["layers_output.4"] * 2
        >>> model.sites.resolve("blocks.3.hook_mlp_out")               # where it comes from
        SiteRef(site='mlps_output', layer=3, ...)

    Values computed from another (a norm's normalisation before its gain,
    ``ln1.hook_normalized``) are read-only.
    """

    def __init__(self, model: Any) -> None:
        self._model = model

    def resolve(self, name: str, io: Literal["output", "input"] = "output") -> SiteRef:
        """What ``name`` means on this model (see `resolve_name`)."""
        return resolve_name(self._model.binding, name, io)

    def __getitem__(self, name: str) -> torch.Tensor:
        return read_ref(self._model, self.resolve(name))

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        write_ref(self._model, self.resolve(name), value)

    def __repr__(self) -> str:
        return f"<sites of {self._model.model_type}: standardized, TransformerLens and native names>"


def read_ref(model: Any, ref: SiteRef) -> torch.Tensor:
    """The value ``ref`` names, in the running trace."""
    value = getattr(model, ref.site) if ref.layer is None else getattr(model, ref.site)[ref.layer]
    if ref.transform == "heads_to_seq":
        return value.transpose(1, 2)
    if ref.transform in ("normalized", "scale"):
        norm = model._native(ref.norm)
        from ._nnsight_compat import native_module

        return normalize(native_module(norm), value, ref.transform, model.model_type, ref.name)
    return value


def write_ref(model: Any, ref: SiteRef, value: Any) -> None:
    """Write ``value`` to what ``ref`` names, in the running trace."""
    if not ref.writable:
        raise InputError(
            f"{ref.name!r} is computed from {ref.standard_name} (a norm's normalisation); it is read-only: "
            f"write {ref.standard_name} instead"
        )
    if ref.transform == "heads_to_seq" and isinstance(value, torch.Tensor):
        value = value.transpose(1, 2)
    if ref.layer is None:
        setattr(model, ref.site, value)
    else:
        getattr(model, ref.site)[ref.layer] = value
