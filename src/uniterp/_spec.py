"""How one architecture is laid out: the declarative description uniterp binds from.

An `ArchitectureSpec` names, as native module paths, where each standardized
piece of a HuggingFace causal LM lives. Paths of whole-model pieces
(``embed_tokens``, ``layers``, ``final_norm``, ``lm_head``) are relative to the
loaded ``*ForCausalLM`` module; per-layer pieces (``attention``, ``mlp``, ...)
are relative to one decoder layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = ["ArchitectureSpec", "BlockLayout"]

#: How a decoder block combines its parts.
#:
#: - ``"sequential"``: ``out = in + attn(norm(in)) + mlp(norm(in + attn))``
#: - ``"parallel"``: ``out = in + attn(norm(in)) + mlp(norm'(in))`` (GPT-J, NeoX, Falcon, ...)
#: - ``"sandwich"``: the attention/MLP outputs are normalised again before the residual
#:   add (Gemma 2/3, OLMo 2), so they do not sum to the layer output.
#: - ``"post_norm"``: the residual stream is normalised after each add (OPT-350m).
#: - ``"unknown"``: discovered automatically; no additive identity is assumed.
BlockLayout = Literal["sequential", "parallel", "sandwich", "post_norm", "unknown"]


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
        layers: The ``ModuleList`` of decoder blocks.
        final_norm: The norm applied after the last block, or ``None`` when the
            model has none (``project_on_vocab`` then skips it).
        lm_head: The unembedding.
        attention: The attention module, relative to a block; ``None`` if absent.
        mlp: The MLP (or MoE) module, relative to a block; ``None`` if the block
            has no single MLP module (then give ``mlp_input``/``mlp_output``).
        attention_output: Module whose output is the attention's contribution to
            the residual stream, when that is not ``attention``'s own output
            (Bloom adds the residual inside its attention module).
        mlp_input: Module whose first input is the MLP input, if not ``mlp``.
        mlp_output: Module whose output is the MLP contribution, if not ``mlp``.
        pre_unembed: Extra modules applied, in order, between ``final_norm`` and
            ``lm_head`` (OPT's ``project_out``); skipped where the model holds ``None``.
        block: The block layout (see `BlockLayout`), or a function of the config
            returning one.
        residual_multiplier: Config key of a factor applied to each sub-block
            output before the residual add (Granite).
        logit_scale: Config key of a factor multiplied into the logits (Cohere).
        logit_divisor: Config key of a divisor applied to the logits (Granite).
        logit_softcap: Config key of a final-logit soft-cap (Gemma 2/3).
        config_keys: Overrides of the config attribute read for a size
            (``{"num_kv_heads": "multi_query"}`` ...); see `StandardizedTransformer`.
        notes: Free text shown in reports.
    """

    embed_tokens: str
    layers: str
    final_norm: str | None
    lm_head: str = "lm_head"
    attention: str | None = "self_attn"
    mlp: str | None = "mlp"
    attention_output: str | None = None
    mlp_input: str | None = None
    mlp_output: str | None = None
    pre_unembed: tuple[str, ...] = ()
    block: BlockLayout | Any = "sequential"
    residual_multiplier: str | None = None
    logit_scale: str | None = None
    logit_divisor: str | None = None
    logit_softcap: str | None = None
    config_keys: dict[str, str] = field(default_factory=dict)
    notes: str = ""

    def with_(self, **changes: Any) -> ArchitectureSpec:
        """A copy with some fields changed.

        Example::

            >>> LLAMA_LIKE.with_(final_norm="model.final_layernorm")
        """
        return replace(self, **changes)

    def block_layout(self, config: Any) -> BlockLayout:
        """The block layout for ``config`` (resolves a callable ``block``)."""
        return self.block(config) if callable(self.block) else self.block

    # Paths, relative to a layer, of the modules that carry each per-layer value.
    def attention_output_path(self) -> str | None:
        """Module (relative to a block) whose output is ``attentions_output``."""
        return self.attention_output or self.attention

    def mlp_input_path(self) -> str | None:
        """Module (relative to a block) whose first input is ``mlps_input``."""
        return self.mlp_input or self.mlp

    def mlp_output_path(self) -> str | None:
        """Module (relative to a block) whose output is ``mlps_output``."""
        return self.mlp_output or self.mlp
