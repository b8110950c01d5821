"""How one architecture is laid out: the declarative description uniterp binds from.

An `ArchitectureSpec` names, as native module paths, where each standardized
piece of a HuggingFace causal LM lives. Paths of whole-model pieces
(``embed_tokens``, ``layers``, ``final_norm``, ``lm_head``) are relative to the
loaded ``*ForCausalLM`` module; per-layer pieces (``attention``, ``mlp``, ...)
are relative to one decoder layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import torch

from ._errors import InputError
from ._paths import module_at
from ._rules import ATTENTION_CLASS, MLP_CLASS, NOT_ATTENTION, NOT_MLP

__all__ = ["ArchitectureSpec", "BlockLayout", "ConfigSwitch", "LayerPaths"]

#: How a decoder block combines its parts.
#:
#: - ``"sequential"``: ``out = in + attn(norm(in)) + mlp(norm(in + attn))``
#: - ``"parallel"``: ``out = in + attn(norm(in)) + mlp(norm'(in))`` (GPT-J, NeoX, Falcon, ...)
#: - ``"sandwich"``: the attention/MLP outputs are normalised again before the residual
#:   add (Gemma 2/3, OLMo 2), so they do not sum to the layer output.
#: - ``"post_norm"``: the residual stream is normalised after each add (OPT-350m).
#: - ``"unknown"``: discovered automatically; no additive identity is assumed.
BlockLayout = Literal["sequential", "parallel", "sandwich", "post_norm", "unknown"]


def is_attention_class(name: str, excluded: tuple[str, ...] = NOT_ATTENTION) -> bool:
    """Whether a module class named ``name`` may be softmax attention.

    Example::

        >>> is_attention_class("Qwen2MoeAttention"), is_attention_class("Qwen3NextGatedDeltaNet")
        (True, False)
    """
    lower = name.lower()
    if any(x in lower for x in excluded):
        return False
    return bool(ATTENTION_CLASS.search(name)) or not MLP_CLASS.search(name)


def is_mlp_class(name: str, excluded: tuple[str, ...] = NOT_MLP) -> bool:
    """Whether a module class named ``name`` may be an MLP (or MoE block).

    Example::

        >>> is_mlp_class("MixtralSparseMoeBlock"), is_mlp_class("NemotronHAttention")
        (True, False)
    """
    if ATTENTION_CLASS.search(name):
        return False
    if MLP_CLASS.search(name):
        return True
    return not any(x in name.lower() for x in excluded)


@dataclass(frozen=True)
class ConfigSwitch:
    """A block layout that depends on one boolean config key: data, not code.

    Example::

        >>> switch = ConfigSwitch("use_parallel_residual", "parallel", "sequential", default=True)
        >>> switch.resolve(config)              # "parallel" unless the config says False
        'parallel'

    Attributes:
        key: The config attribute read.
        if_true: The layout (or another switch) when it is true.
        if_false: The layout (or another switch) when it is false.
        default: The value assumed when the config has no such attribute.
    """

    key: str
    if_true: BlockLayout | ConfigSwitch
    if_false: BlockLayout | ConfigSwitch
    default: bool = False

    def resolve(self, config: Any) -> BlockLayout:
        """The layout this switch gives for ``config``."""
        chosen = self.if_true if bool(getattr(config, self.key, self.default)) else self.if_false
        return chosen.resolve(config) if isinstance(chosen, ConfigSwitch) else chosen


_LAYOUTS = ("sequential", "parallel", "sandwich", "post_norm", "unknown")


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where the standardized pieces of one architecture live.

    Example::

        >>> spec = ArchitectureSpec(
        ...     embed_tokens="transformer.wte", layers="transformer.h",
        ...     final_norm="transformer.ln_f", attention="attn", mlp="mlp")
        >>> model = StandardizedTransformer(path, spec=spec)

    Attributes:
        embed_tokens: Token-embedding module (relative to the ``*ForCausalLM``).
        embed_projection: A module that projects the token embeddings to the
            hidden size before the first layer (OPT's ``project_in`` when
            ``word_embed_proj_dim != hidden_size``); ``token_embeddings`` is then
            its output, so it is ``(batch, seq, hidden)`` like everywhere else.
            Skipped where the model holds ``None``.
        layers: The ``ModuleList`` of decoder blocks.
        final_norm: The norm applied after the last block, or ``None`` when the
            model has none (``project_on_vocab`` then skips it).
        lm_head: The unembedding.
        attention: The attention module, relative to a block, or several
            candidates tried in order (hybrid stacks hold attention on some
            layers only); ``None`` if the architecture has no attention.
        mlp: The MLP (or MoE) module, relative to a block, or candidates;
            ``None`` if the block has no single MLP module (then give
            ``mlp_input``/``mlp_output``) or no MLP at all.
        not_attention_types: Class-name fragments (case-insensitive) that
            disqualify an attention candidate: linear attention, state-space and
            recurrent mixers are not softmax attention.
        attention_types: Class-name fragments an attention candidate must match
            (a hybrid whose blocks all hold a ``mixer`` that is attention on some
            layers and a state-space mixer on others).
        mlp_types: The same for MLP candidates.
        not_mlp_types: Class-name fragments that disqualify an MLP candidate.
        unavailable: Reasons, by standardized module name (``"self_attn"``,
            ``"mlp"``), why the architecture has no such module at all.
        attention_output: Module whose output is the attention's contribution to
            the residual stream, when that is not ``attention``'s own output
            (Bloom adds the residual inside its attention module).
        mlp_input: Module whose first input is the MLP input, if not ``mlp``.
        mlp_output: Module whose output is the MLP contribution, if not ``mlp``.
        pre_unembed: Extra modules applied, in order, between ``final_norm`` and
            ``lm_head`` (OPT's ``project_out``); skipped where the model holds ``None``.
        block: The block layout (see `BlockLayout`), or a `ConfigSwitch` choosing
            one from the config.
        residual_multiplier: Config key of a factor applied to each sub-block
            output before the residual add (Granite).
        logit_scale: Config key of a factor multiplied into the logits (Cohere).
        logit_divisor: Config key of a divisor applied to the logits (Granite).
        logit_softcap: Config key of a final-logit soft-cap (Gemma 2/3).
        residual_streams: Config key of the number of parallel residual streams
            per token (hyper-connections: DeepSeek-V4 ``hc_mult``; AltUp: Gemma 3n
            ``altup_num_inputs``). Layer values are then ``(batch, seq, n_streams,
            hidden)`` whatever the native packing.
        stream_readout: Module that merges the streams of the last layer into
            one hidden state before ``final_norm`` (DeepSeek-V4 ``model.hc_head``);
            ``None`` with ``residual_streams`` means the model merges them in code
            outside any module, so ``project_on_vocab`` is unavailable.
        lens_unavailable: Why ``project_on_vocab`` is not the model's readout
            (e.g. the readout also attends over earlier layers' states).
        config_keys: Overrides of the config attribute read for a size
            (``{"num_kv_heads": "multi_query"}`` ...); see `StandardizedTransformer`.
        notes: Free text shown in reports.
    """

    embed_tokens: str
    layers: str
    final_norm: str | None
    lm_head: str = "lm_head"
    embed_projection: str | None = None
    attention: str | tuple[str, ...] | None = "self_attn"
    mlp: str | tuple[str, ...] | None = "mlp"
    attention_types: tuple[str, ...] = ()
    mlp_types: tuple[str, ...] = ()
    not_attention_types: tuple[str, ...] = NOT_ATTENTION
    not_mlp_types: tuple[str, ...] = NOT_MLP
    unavailable: dict[str, str] = field(default_factory=dict)
    attention_output: str | None = None
    mlp_input: str | None = None
    mlp_output: str | None = None
    pre_unembed: tuple[str, ...] = ()
    block: BlockLayout | ConfigSwitch = "sequential"
    residual_multiplier: str | None = None
    logit_scale: str | None = None
    logit_divisor: str | None = None
    logit_softcap: str | None = None
    residual_streams: str | None = None
    stream_readout: str | None = None
    lens_unavailable: str | None = None
    config_keys: dict[str, str] = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.block, ConfigSwitch) and self.block not in _LAYOUTS:
            raise InputError(
                f"ArchitectureSpec.block must be one of {_LAYOUTS} or a ConfigSwitch; got {self.block!r}"
            )

    def with_(self, **changes: Any) -> ArchitectureSpec:
        """A copy with some fields changed.

        Example::

            >>> LLAMA_LIKE.with_(final_norm="model.final_layernorm")
        """
        return replace(self, **changes)

    def block_layout(self, config: Any) -> BlockLayout:
        """The block layout for ``config`` (resolves a `ConfigSwitch`)."""
        return self.block.resolve(config) if isinstance(self.block, ConfigSwitch) else self.block

    def to_source(self) -> str:
        """This spec as a Python expression (fields that differ from the defaults), for generated tables.

        Example::

            >>> ArchitectureSpec("model.embed", "model.layers", "model.norm").to_source()
            "ArchitectureSpec(embed_tokens='model.embed', layers='model.layers', final_norm='model.norm')"
        """
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            if f.name in ("embed_tokens", "layers", "final_norm") or value != default:
                parts.append(f"{f.name}={value!r}")
        return f"ArchitectureSpec({', '.join(parts)})"

    def resolve_layer(self, block: torch.nn.Module) -> LayerPaths:
        """Where each per-layer value of ``block`` comes from.

        Example::

            >>> get_spec("llama").resolve_layer(model.model.layers[0]).sites["mlps_output"]
            'mlp'
        """
        paths = LayerPaths()
        paths.sites["layers_input"] = ""
        paths.sites["layers_output"] = ""
        attention = _pick(
            block,
            self.attention,
            self.attention_types,
            lambda k: is_attention_class(k, self.not_attention_types),
        )
        mlp = _pick(block, self.mlp, self.mlp_types, lambda k: is_mlp_class(k, self.not_mlp_types))
        held = ", ".join(f"{n}: {type(c).__name__}" for n, c in block.named_children()) or "nothing"
        if attention is not None:
            paths.modules["self_attn"] = attention
            paths.sites["attentions_input"] = attention
            paths.sites["attentions_output"] = attention
        if self.attention_output and _exists(block, self.attention_output):
            paths.sites["attentions_output"] = self.attention_output
        if mlp is not None:
            paths.modules["mlp"] = mlp
            paths.sites["mlps_input"] = mlp
            paths.sites["mlps_output"] = mlp
        if self.mlp_input and _exists(block, self.mlp_input):
            paths.sites["mlps_input"] = self.mlp_input
        if self.mlp_output and _exists(block, self.mlp_output):
            paths.sites["mlps_output"] = self.mlp_output
        for site, module_name, wanted in (
            ("attentions_input", "self_attn", self.attention),
            ("attentions_output", "self_attn", self.attention_output or self.attention),
            ("mlps_input", "mlp", self.mlp_input or self.mlp),
            ("mlps_output", "mlp", self.mlp_output or self.mlp),
        ):
            if site in paths.sites:
                continue
            if module_name in self.unavailable:
                paths.reasons[site] = self.unavailable[module_name]
            elif wanted is None:
                paths.reasons[site] = f"the architecture has no single {self_name(module_name)} module"
            else:
                paths.reasons[site] = (
                    f"this layer has no {self_name(module_name)} (tried {_candidates(wanted)}; "
                    f"it holds {held})"
                )
        return paths


def self_name(module_name: str) -> str:
    """Human wording of a standardized module name."""
    return {"self_attn": "attention", "mlp": "MLP"}.get(module_name, module_name)


@dataclass
class LayerPaths:
    """Per-layer resolution of an `ArchitectureSpec` against one block.

    Attributes:
        sites: Standardized value -> module path relative to the block (``""``
            is the block itself).
        modules: Standardized module name (``self_attn``, ``mlp``) -> path.
        reasons: Standardized value -> why it is unavailable on this layer.
    """

    sites: dict[str, str] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)


def _candidates(value: str | tuple[str, ...] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _exists(block: torch.nn.Module, path: str) -> bool:
    return module_at(block, path) is not None


def _pick(
    block: torch.nn.Module,
    wanted: str | tuple[str, ...] | None,
    types: tuple[str, ...],
    accept: Any,
) -> str | None:
    for candidate in _candidates(wanted):
        module = module_at(block, candidate)
        if module is None:
            continue
        kind = type(module).__name__
        if types and not any(t in kind for t in types):
            continue
        if not accept(kind):
            continue
        return candidate
    return None
