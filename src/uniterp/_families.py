"""The family table: one `ArchitectureSpec` per HF ``model_type``.

Data only. Adding an architecture means adding a row; review it like a table.
Each entry is checked at load (structure, shapes) and by ``model.check()``
(numerics) before its values are trusted.
"""

from __future__ import annotations

from typing import Literal

from ._spec import ArchitectureSpec, ConfigSwitch

__all__ = ["get_spec", "lookup_spec", "register_spec", "registered_model_types"]

#: Where a model's spec came from.
SpecSource = Literal["given", "table", "registered", "generated", "discovered"]

# --- shared layouts ----------------------------------------------------------
LLAMA_LIKE = ArchitectureSpec(
    embed_tokens="model.embed_tokens",
    layers="model.layers",
    final_norm="model.norm",
)
GPT2_LIKE = ArchitectureSpec(
    embed_tokens="transformer.wte",
    layers="transformer.h",
    final_norm="transformer.ln_f",
    attention="attn",
)
PARALLEL_GPTJ = GPT2_LIKE.with_(block="parallel")
SANDWICH = LLAMA_LIKE.with_(block="sandwich")
PARALLEL_RESIDUAL = ConfigSwitch("use_parallel_residual", "parallel", "sequential", default=True)


_SPECS: dict[str, ArchitectureSpec] = {
    # GPT-2 style: transformer.h, attn, mlp
    "gpt2": GPT2_LIKE,
    "gpt_bigcode": GPT2_LIKE,
    "gptj": PARALLEL_GPTJ,
    "codegen": PARALLEL_GPTJ,
    "gpt_neox": ArchitectureSpec(
        embed_tokens="gpt_neox.embed_in",
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        attention="attention",
        block=PARALLEL_RESIDUAL,
    ),
    "opt": ArchitectureSpec(
        embed_tokens="model.decoder.embed_tokens",
        layers="model.decoder.layers",
        final_norm="model.decoder.final_layer_norm",
        embed_projection="model.decoder.project_in",
        pre_unembed=("model.decoder.project_out",),
        mlp=None,
        mlp_input="fc1",
        mlp_output="fc2",
        block=ConfigSwitch("do_layer_norm_before", "sequential", "post_norm", default=True),
        notes="No single MLP module: mlps_input is fc1's input, mlps_output is fc2's output. "
        "With word_embed_proj_dim != hidden_size, token_embeddings is project_in's output.",
    ),
    "bloom": ArchitectureSpec(
        embed_tokens="transformer.word_embeddings",
        layers="transformer.h",
        final_norm="transformer.ln_f",
        attention="self_attention",
        attention_output="self_attention.dense",
        mlp_output="mlp.dense_4h_to_h",
        # with the residual taken after the layer norm, the block adds no residual of its input
        block=ConfigSwitch("apply_residual_connection_post_layernorm", "unknown", "sequential"),
        notes="Attention and MLP add the residual inside their modules; their "
        "contributions are read at self_attention.dense and mlp.dense_4h_to_h.",
    ),
    "falcon": ArchitectureSpec(
        embed_tokens="transformer.word_embeddings",
        layers="transformer.h",
        final_norm="transformer.ln_f",
        attention="self_attention",
        block=ConfigSwitch(
            "new_decoder_architecture",
            "parallel",
            ConfigSwitch("parallel_attn", "parallel", "sequential", default=True),
        ),
    ),
    # Llama style: model.layers, self_attn, mlp, model.norm
    "llama": LLAMA_LIKE,
    "mistral": LLAMA_LIKE,
    "mixtral": LLAMA_LIKE,
    "qwen2": LLAMA_LIKE,
    "qwen2_moe": LLAMA_LIKE,
    "qwen3": LLAMA_LIKE,
    "qwen3_moe": LLAMA_LIKE,
    "gemma": LLAMA_LIKE,
    "phi3": LLAMA_LIKE,
    "olmo": LLAMA_LIKE,
    "stablelm": LLAMA_LIKE.with_(
        block=ConfigSwitch("use_parallel_residual", "parallel", "sequential", default=False)
    ),
    "starcoder2": LLAMA_LIKE,
    "gemma2": SANDWICH.with_(logit_softcap="final_logit_softcapping"),
    "gemma3_text": SANDWICH.with_(logit_softcap="final_logit_softcapping"),
    "olmo2": SANDWICH,
    "phi": LLAMA_LIKE.with_(final_norm="model.final_layernorm", block="parallel"),
    "cohere": LLAMA_LIKE.with_(block="parallel", logit_scale="logit_scale"),
    "granite": LLAMA_LIKE.with_(residual_multiplier="residual_multiplier", logit_divisor="logits_scaling"),
    "xlnet": ArchitectureSpec(
        embed_tokens="transformer.word_embedding",
        layers="transformer.layer",
        final_norm=None,
        lm_head="lm_loss",
        attention="rel_attn",
        mlp="ff",
        block="post_norm",
        notes="Hidden states are (seq, batch, hidden) natively and shown as (batch, seq, hidden). "
        "rel_attn and ff add the residual and normalise inside, so attentions_output and mlps_output "
        "are post-norm residual states. The values are the content stream; in generation HF's XLNet "
        "predicts from the query stream (element 1 of each layer's output), which has no standard name.",
    ),
}


_REGISTERED: set[str] = set()


def get_spec(model_type: str) -> ArchitectureSpec | None:
    """The hand-written or registered spec of ``model_type``, or ``None`` when there is none.

    Example::

        >>> get_spec("llama").layers
        'model.layers'
    """
    return _SPECS.get(model_type)


def lookup_spec(model_type: str) -> tuple[ArchitectureSpec, SpecSource] | None:
    """The spec that serves ``model_type`` and which table it comes from, or ``None``.

    The hand-written table (and `register_spec`) wins; then the generated table of
    discovered rows (``uniterp._discovered``, written by ``make coverage``), whose
    rows are numerically checked at load like a live discovery.

    Example::

        >>> lookup_spec("llama")[1], lookup_spec("bamba")[1]
        ('table', 'generated')
    """
    if model_type in _SPECS:
        return _SPECS[model_type], "registered" if model_type in _REGISTERED else "table"
    from ._discovered import DISCOVERED

    if model_type in DISCOVERED:
        return DISCOVERED[model_type], "generated"
    return None


def register_spec(model_type: str, spec: ArchitectureSpec, *, overwrite: bool = False) -> None:
    """Register ``spec`` for every future model of ``model_type``.

    Example::

        >>> register_spec("my_llama", get_spec("llama"))

    Args:
        model_type: The HF ``config.model_type``.
        spec: Its layout.
        overwrite: Replace an existing entry instead of refusing.

    Raises:
        InputError: ``model_type`` is registered already and ``overwrite`` is false.
    """
    from ._errors import InputError

    if model_type in _SPECS and not overwrite:
        raise InputError(
            f"a spec for {model_type!r} is registered already; pass overwrite=True to replace it"
        )
    _SPECS[model_type] = spec
    _REGISTERED.add(model_type)


def registered_model_types() -> tuple[str, ...]:
    """Every ``model_type`` with a registered spec, sorted.

    Example::

        >>> "gpt2" in registered_model_types()
        True
    """
    return tuple(sorted(_SPECS))
