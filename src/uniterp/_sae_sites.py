"""Where an SAE attaches on one model: its hook name -> a standardized value -> a native seam.

An SAE names its hook point its format's way (`uniterp.sae`: TransformerLens hook
names in SAELens, module paths with ``hook_io`` in sparsify and dictionary_learning,
dictionary_learning's free-form submodule names). `sae_sites` translates the name
with `uniterp._aliases.resolve_name` (and `DICTIONARY_LEARNING_HOOKS` first), keeps
only values an SAE can sit on, and says which native module hands the value over,
so that the attachment can put a plain torch hook there:

- a value at a module's output (``layers_output``, ``mlps_output``, ...): a forward
  hook on that module;
- a value at a module's input (``head_outputs`` = the output projection's input,
  ``mlp_neurons``, ``residual_mid`` = the MLP norm's input, ...): a forward pre-hook;
- a norm's normalisation before its gain (``ln2.hook_normalized``, computed and
  read-only as a site): a forward hook on the norm, which reads the norm's input,
  and writes an SAE's edit back through the norm's gain into its output (exact: the
  norm's output is ``gain * normalized + bias``, verified on the module at attach).

Everything else (values inside a forward found by operation, attention scores and
probabilities, routing, several residual streams) is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from ._aliases import SiteRef, normalize, resolve_name
from ._errors import InputError, ShapeError, UnavailableError
from ._layout import FORWARD_ORDER, Locator
from ._nnsight_compat import native_module
from ._rules import DICTIONARY_LEARNING_HOOKS

if TYPE_CHECKING:
    from ._model import StandardizedTransformer
    from .sae import SparseAutoencoder

__all__ = ["ATTACHABLE", "SAESite", "sae_sites", "site_width"]

#: Values an SAE can be attached to, in the order a block computes them (the rank
#: orders a transcoder's input before its output).
ATTACHABLE: dict[str, float] = {
    "token_embeddings": -1.0,
    **{
        site: float(rank)
        for rank, site in enumerate(FORWARD_ORDER)
        if site
        in (
            "layers_input",
            "attentions_input",
            "head_outputs",
            "attentions_output",
            "attentions_output_normed",
            "residual_mid",
            "mlps_input",
            "mlp_neurons",
            "mlps_output",
            "mlps_output_normed",
            "layers_output",
        )
    },
}
_RESIDUAL_WIDTH = (
    "token_embeddings",
    "layers_input",
    "attentions_input",
    "attentions_output",
    "attentions_output_normed",
    "residual_mid",
    "mlps_input",
    "mlps_output",
    "mlps_output_normed",
    "layers_output",
)


@dataclass(frozen=True)
class SAESite:
    """One place an SAE reads (and writes) on one model.

    Attributes:
        ref: What the hook name means (`SiteRef`: standardized value, layer, transform).
        loc: Where the value is handed over natively; for ``kind="normalized"`` the
            norm module's output.
        kind: ``"value"`` (the value itself) or ``"normalized"`` (the norm's
            normalisation of its input, before the gain).
        head: For an SAE on one head of ``head_outputs`` (SAELens ``hook_head_index``).
        head_dim: Width of one head, where ``head`` is set.
        width: The width the SAE must have (``d_in`` or ``d_out``), where known
            before running the model.
        gain: For ``kind="normalized"``: the norm's effective gain (``weight``,
            ``1 + weight`` or ones), as verified on the module.
    """

    ref: SiteRef
    loc: Locator
    kind: Literal["value", "normalized"] = "value"
    head: int | None = None
    head_dim: int | None = None
    width: int | None = None
    gain: torch.Tensor | None = None

    @property
    def label(self) -> str:
        """``"layers_output.3"``, or ``"residual_mid.3 normalized by model.layers.3.post_attention_layernorm"``."""
        text = self.ref.standard_name
        if self.kind == "normalized":
            text += f" normalized by {self.ref.norm}"
        if self.head is not None:
            text += f", head {self.head}"
        return text

    @property
    def key(self) -> tuple[Any, ...]:
        """Identifies the native seam: two attachments may not share one."""
        return (self.loc.path, self.loc.io, self.loc.key, self.kind, self.head)

    @property
    def rank(self) -> tuple[int, float]:
        """Position in the forward pass: (layer, order within the block)."""
        layer = -1 if self.ref.layer is None else self.ref.layer
        return layer, ATTACHABLE[self.ref.site] + (0.5 if self.kind == "normalized" else 0.0)


def sae_sites(
    model: StandardizedTransformer,
    sae: SparseAutoencoder,
    at: str | None = None,
    at_out: str | None = None,
) -> tuple[SAESite, SAESite | None]:
    """Where ``sae`` reads (and a transcoder writes) on ``model``, or uniterp's error saying why nowhere.

    Example::

        >>> site, _ = sae_sites(model, sae)            # sae.hook_name == "blocks.3.hook_mlp_out"
        >>> site.label                                 # on Gemma 2: after the post-MLP norm
        'mlps_output_normed.3'

    Args:
        model: The model.
        sae: An SAE or a transcoder.
        at: A name to use instead of ``sae.hook_name`` (any name `resolve_name` knows).
        at_out: A transcoder's output name instead of ``sae.hook_name_out``.

    Returns:
        The input site, and the output site for a transcoder (``None`` for an SAE).

    Raises:
        InputError: No hook name, a name in no known scheme, a value no SAE can sit on.
        UnavailableError: The value does not exist on this architecture (with the reason).
        ShapeError: The SAE's width differs from the value's.
    """
    hook_io = sae.metadata.hook_io
    name = at if at is not None else sae.hook_name
    if not name:
        raise InputError(
            f"the SAE names no hook point (metadata.hook_name is {sae.hook_name!r}); say where it goes: "
            "model.attach(sae, at='blocks.3.hook_resid_post') (or a standardized name, 'layers_output.3')"
        )
    io = "input" if at is None and hook_io in ("in", "in_and_out") else "output"
    site = _site(model, sae, name, io, sae.d_in, "d_in")
    if not sae.is_transcoder:
        return site, None
    out_name = (
        at_out if at_out is not None else (sae.hook_name_out or (name if hook_io == "in_and_out" else None))
    )
    if not out_name:
        raise InputError(
            "the transcoder names no output hook point (metadata.hook_name_out is None); pass at_out=..."
        )
    out = _site(model, sae, out_name, "output", sae.d_out, "d_out")
    if out.kind != "value" or out.head is not None:
        raise InputError(
            f"a transcoder writes its output site; {out_name!r} ({out.label}) is computed from another value "
            "and cannot be written"
        )
    if out.rank <= site.rank or out.key == site.key:
        raise InputError(
            f"a transcoder reads {name!r} ({site.label}) and predicts {out_name!r} ({out.label}); the output "
            "must come after the input in the forward pass"
        )
    return site, out


def _translate(name: str, io: str) -> tuple[str, str]:
    """dictionary_learning's submodule names -> a standardized name (others unchanged)."""
    for pattern, out_site, in_site in DICTIONARY_LEARNING_HOOKS:
        match = pattern.match(name)
        if match is None:
            continue
        site = out_site if io == "output" else in_site
        if not site:
            raise InputError(f"{name!r}: dictionary_learning's {name!r} has no input value; use io 'out'")
        layer = match.groupdict().get("n")
        return (site if layer is None else f"{site}.{layer}"), "output"
    return name, io


def _site(
    model: StandardizedTransformer, sae: SparseAutoencoder, name: str, io: str, width: int, what: str
) -> SAESite:
    binding = model.binding
    translated, io = _translate(name, io)
    ref = resolve_name(binding, translated, io)  # type: ignore[arg-type]
    ref = SiteRef(ref.site, ref.layer, ref.transform, ref.norm, name)
    if ref.site not in ATTACHABLE:
        raise InputError(
            f"{name!r} is {ref.standard_name}; an SAE attaches to a value every token has in the residual "
            f"stream, a sub-block's input or output, the heads' outputs or the MLP's neurons "
            f"({', '.join(ATTACHABLE)}), not to {ref.site!r}"
        )
    if ref.transform not in ("same", "normalized"):
        raise InputError(f"{name!r} is {ref.transform!r} of {ref.standard_name}; an SAE cannot sit on it")
    if ref.layer is None:
        loc = binding.layout.token_embeddings
    else:
        found = binding.locator(ref.site, ref.layer)
        if found is None:  # resolve_name checked it; keep the type checker and a changed binding honest
            raise UnavailableError(binding.model_type, name, binding.reason(ref.site, ref.layer))
        loc = found
    if loc.op:
        raise UnavailableError(
            binding.model_type,
            name,
            f"{ref.standard_name} is found inside {loc.path}'s forward (operation {'.'.join(loc.op)}); an SAE "
            "attaches where a module hands a value over",
        )
    if loc.n_streams > 1 or loc.streams:
        raise UnavailableError(
            binding.model_type, name, f"{ref.standard_name} holds {loc.n_streams} residual streams per token"
        )
    if ref.transform == "normalized":
        return _normalized_site(model, ref, width, what)
    head, head_dim = _head(model, sae, ref, loc, name, width, what)
    expected = site_width(model, ref.site, loc) if head is None else head_dim
    if expected is not None and expected != width:
        raise ShapeError(
            f"the SAE has {what}={width} but {name!r} is {ref.standard_name} of {binding.model_type}, "
            f"{expected} wide; attach it to a value of width {width}, or load the SAE made for this site"
        )
    return SAESite(ref=ref, loc=loc, head=head, head_dim=head_dim, width=expected)


def _head(
    model: StandardizedTransformer, sae: Any, ref: SiteRef, loc: Locator, name: str, width: int, what: str
) -> tuple[int | None, int | None]:
    """A single-head SAE on ``head_outputs`` (``hook_head_index`` and ``d_in == head_dim``)."""
    index = sae.metadata.hook_head_index
    if ref.site != "head_outputs" or index is None or loc.heads is None:
        return None, None
    total = site_width(model, ref.site, loc)
    if total is None or width == total:
        return None, None
    head_dim = total // loc.heads
    if width != head_dim:
        raise ShapeError(
            f"the SAE has {what}={width} and hook_head_index={index}, but the heads of {name!r} are {head_dim} "
            f"wide ({loc.heads} heads, {total} in all)"
        )
    if not 0 <= index < loc.heads:
        raise InputError(f"hook_head_index={index} is out of range: {name!r} has {loc.heads} heads")
    return index, head_dim


def site_width(model: StandardizedTransformer, site: str, loc: Locator) -> int | None:
    """The last dimension of ``site`` as the SAE sees it (heads flattened), where the binding or module says."""
    sizes = model.binding.sizes
    if site == "token_embeddings":
        return model.binding.layout.embedding_width or sizes.hidden_size
    if site in _RESIDUAL_WIDTH:
        return sizes.hidden_size
    module = native_module(model).get_submodule(loc.path)
    if loc.io == "input":
        features = getattr(module, "in_features", None)
        if isinstance(features, int):
            return features
        weight = getattr(module, "weight", None)
        if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor):
            return int(weight.shape[0])  # GPT-2's Conv1D stores (in, out)
    if site == "head_outputs" and sizes.num_heads and sizes.head_dim:
        return sizes.num_heads * sizes.head_dim
    return None


def _normalized_site(model: StandardizedTransformer, ref: SiteRef, width: int, what: str) -> SAESite:
    """A norm's normalisation (``ln2.hook_normalized``): read at the norm, edits written through its gain."""
    binding = model.binding
    path = ref.norm or ""
    hidden = binding.sizes.hidden_size
    if width != hidden:
        raise ShapeError(
            f"the SAE has {what}={width} but {ref.name!r} (the normalisation of {ref.standard_name} by {path}) "
            f"is {hidden} wide"
        )
    norm = native_module(model).get_submodule(path)
    gain = norm_gain(norm, hidden, binding.model_type, ref.name)
    source = binding.locator(ref.site, ref.layer) if ref.layer is not None else None
    flat, seq_first = (source.flat, source.seq_first) if source is not None else (False, False)
    loc = Locator(path=path, io="output", key=None, flat=flat, seq_first=seq_first)
    return SAESite(ref=ref, loc=loc, kind="normalized", width=hidden, gain=gain)


def norm_gain(norm: torch.nn.Module, width: int, model_type: str, name: str) -> torch.Tensor:
    """The gain ``g`` with ``norm(x) == g * normalized(x) + bias``, verified on a random input.

    Tries the module's ``weight``, ``1 + weight`` (Gemma's RMS norms) and no gain.

    Raises:
        UnavailableError: The norm's output is none of these (then an edit could not be
            written back exactly).
    """
    params = list(norm.parameters())
    like = params[0] if params else torch.empty(0)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, width, generator=generator).to(dtype=like.dtype, device=like.device)
    with torch.no_grad():
        y = norm.forward(x)  # not __call__: hooks of other attachments on this norm stay out of it
        if not isinstance(y, torch.Tensor):
            raise UnavailableError(model_type, name, f"{type(norm).__name__} does not return a tensor")
        n = normalize(norm, x, "normalized", model_type, name).float()
        weight = getattr(norm, "weight", None)
        bias = getattr(norm, "bias", None)
        shift = bias.float() if isinstance(bias, torch.Tensor) else 0.0
        candidates: list[torch.Tensor] = []
        if isinstance(weight, torch.Tensor) and weight.shape == (width,):
            candidates += [weight.detach(), 1 + weight.detach()]
        candidates.append(torch.ones(width, dtype=like.dtype, device=like.device))
        tolerance = 16 * torch.finfo(y.dtype).eps
        for gain in candidates:
            predicted = gain.float() * n + shift
            if torch.allclose(predicted, y.float(), rtol=tolerance, atol=tolerance * float(y.abs().max())):
                return gain
    raise UnavailableError(
        model_type,
        name,
        f"{type(norm).__name__}'s output is not gain * normalized + bias for its weight, 1 + weight or no gain, "
        "so an SAE's edit cannot be written back through it; attach the SAE to the norm's output instead",
    )
