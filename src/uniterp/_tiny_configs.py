"""Data: how to make a tiny configuration of each ``model_type`` (used by `uniterp.testing`).

``SMALL`` is applied to every config (and every nested sub-config: ``text_config``,
``vision_config``, ...) that declares the key; ``OVERRIDES`` holds what a family
needs on top (layer patterns of hybrid stacks, values that must agree, ...). A
dict value for a sub-config key in ``OVERRIDES`` is applied inside that sub-config.
Only declared config fields are set: values a config derives itself (e.g. a
``head_dim`` computed from other sizes) are left to it.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

# Config keys set on every config that has them: small sizes, few layers, no dropout.
SMALL: dict[str, Any] = {
    "vocab_size": 512,
    "hidden_size": 64,
    "n_embd": 64,
    "d_model": 64,
    "num_hidden_layers": 3,
    "n_layer": 3,
    "num_layers": 3,
    "decoder_layers": 3,
    "encoder_layers": 3,
    "num_attention_heads": 4,
    "n_head": 4,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "n_inner": 128,
    "ffn_dim": 128,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "n_positions": 256,
    "n_ctx": 256,
    "num_local_experts": 4,
    "num_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 64,
    "sliding_window": 64,
    "rotary_dim": 8,
    "partial_rotary_factor": 0.5,
    "attention_dropout": 0.0,
    "hidden_dropout": 0.0,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "dropout": 0.0,
    "summary_first_dropout": 0.0,
    "tie_word_embeddings": False,
    "is_decoder": True,  # encoder-style models (BERT family) used as causal decoders
    # encoder-decoder families (ProphetNet names)
    "num_decoder_layers": 3,
    "num_encoder_layers": 3,
    "num_decoder_attention_heads": 4,
    "num_encoder_attention_heads": 4,
    # other names of the feed-forward / head width
    "dff": 128,
    "dim_ff": 128,
    "dim_head": 16,
    "dense_intermediate_size": 128,
    "shared_intermediate_size": 64,
    "shared_experts_intermediate_size": 64,
    "moe_shared_expert_intermediate_size": 64,
    # DeepSeek-style MoE: one shared expert, one routing group, first layer dense
    "n_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    # multi-head latent attention (MLA) and its sparse indexer
    "kv_lora_rank": 16,
    "q_lora_rank": 32,
    "qk_rope_head_dim": 16,
    "qk_nope_head_dim": 16,
    "v_head_dim": 16,
    "index_n_heads": 2,
    "index_head_dim": 32,
    "index_topk": 4,  # the indexer keeps 4 keys per query: sparse even on short prompts
    # linear-attention (gated delta net, KDA, lightning) mixers
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_heads": 4,
    "linear_head_dim": 16,
    # state-space (Mamba / Mamba-2) mixers: inner width = 2 * hidden = heads * head width
    "state_size": 16,
    "ssm_state_size": 16,
    "mamba_d_state": 16,
    "mamba_n_heads": 8,
    "mamba_num_heads": 8,
    "mamba_head_dim": 16,
    "mamba_d_ssm": 128,
    "mamba_chunk_size": 32,
    # per-layer token embeddings (Gemma 3n / Gemma 4): a (vocab x layers*width) table
    "vocab_size_per_layer_input": 512,
    "hidden_size_per_layer_input": 16,
    # separate sliding-window attention heads (Inkling)
    "swa_num_attention_heads": 4,
    "swa_num_key_value_heads": 2,
    "swa_head_dim": 16,
}

# Special-token ids set in nested sub-configs that have them (the top level gets them
# from `tiny_config`): the tiny tokenizer's bos/eos/pad is id 0.
_TOKEN_IDS: dict[str, int] = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}

# Multi-head latent attention keeps one key/value head per query head.
_MLA: dict[str, Any] = {"num_key_value_heads": 4}

# Three-layer patterns that hold every kind of layer a family mixes.
_LINEAR_THEN_FULL = ["linear_attention", "linear_attention", "full_attention"]
_SLIDING_THEN_FULL = ["sliding_attention", "sliding_attention", "full_attention"]

# Per-family adjustments on top of ``SMALL`` (keys the family needs differently). A
# sub-config (e.g. a ``text_config`` of model_type ``qwen3_5_text``) also gets the entry
# of its own model_type. A per-layer list (``layer_types``, ...) fixes the layer count:
# override it together with ``num_hidden_layers``.
OVERRIDES: dict[str, dict[str, Any]] = {
    # --- dense decoders -------------------------------------------------------------------
    "gpt_neox": {"rotary_pct": 0.5},
    "gptj": {"rotary_dim": 8},
    "codegen": {"rotary_dim": 8},
    "falcon": {"new_decoder_architecture": False, "multi_query": True, "parallel_attn": True},
    "bloom": {"n_head": 4},
    "opt": {"word_embed_proj_dim": 64, "ffn_dim": 128, "do_layer_norm_before": True},
    "phi": {"partial_rotary_factor": 0.5},
    "gpt_bigcode": {"multi_query": True},
    "gemma2": {"final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0},
    "gemma3_text": {"final_logit_softcapping": 30.0, "sliding_window_pattern": 2},
    "cpmant": {"prompt_length": 4, "position_bias_num_buckets": 32},
    "xlnet": {"d_inner": 128},
    "dbrx": {
        "attn_config": {"kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 10000.0},  # (read by the attention)
        "ffn_config": {"hidden_size": 64, "ffn_hidden_size": 128, "moe_num_experts": 4, "moe_top_k": 2},
    },
    # byte-level latent transformer: local encoder -> global transformer -> local decoder,
    # with an entropy model (patcher) cutting the bytes into patches
    "blt": {
        "encoder_hash_byte_group_vocab": 512,  # hash-embedding table (default 500002 rows)
        "num_hidden_layers": 3,  # not a BltConfig field, but the default (cached) forward sizes its cache by it
    },
    "blt_local_encoder": {"hidden_size_global": 64, "num_hidden_layers": 1},
    "blt_local_decoder": {"hidden_size_global": 64},
    # --- encoder-style models used as decoders ------------------------------------------------
    "roc_bert": {
        "shape_vocab_size": 512,
        "shape_embed_dim": 32,
        "pronunciation_vocab_size": 512,
        "pronunciation_embed_dim": 32,
    },
    "rembert": {"input_embedding_size": 32, "output_embedding_size": 64},
    "xmod": {"default_language": "en_XX"},  # the forward needs a language adapter chosen
    "reformer": {
        "attn_layers": ["local", "lsh", "local"],
        "attention_head_size": 16,
        "feed_forward_size": 128,
        "axial_pos_embds_dim": [32, 32],  # sums to hidden_size
        "axial_pos_shape": [16, 16],  # multiplies to max_position_embeddings
        "max_position_embeddings": 256,
        "local_attn_chunk_length": 16,
        "lsh_attn_chunk_length": 16,
        "num_buckets": 4,
        "hash_seed": 0,  # LSH draws random rotations on every forward unless seeded
    },
    # --- sliding-window / chunked / NoPE / local-global patterns: every kind of layer ----------
    "afmoe": {"layer_types": _SLIDING_THEN_FULL},
    "cohere2": {"layer_types": _SLIDING_THEN_FULL},
    "cohere2_moe": {"layer_types": _SLIDING_THEN_FULL, "mlp_layer_types": ["dense", "sparse", "sparse"]},
    "cohere_compass_text": {
        "layer_types": _SLIDING_THEN_FULL,
        # rotary settings keyed by layer type (the family's own default has none and fails)
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
    },
    "dory": {"layer_types": _SLIDING_THEN_FULL, "n_input_layers": 1, "n_output_layers": 1},
    "exaone4": {"layer_types": _SLIDING_THEN_FULL},
    "exaone_moe": {"layer_types": _SLIDING_THEN_FULL},
    "flint": {"layer_types": ["full_attention", "sliding_attention", "full_attention"]},
    "gemma3n_text": {
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "num_kv_shared_layers": 1,  # the last layer reuses layer 0's keys/values
        "laurel_rank": 8,
        "altup_num_inputs": 2,
    },
    "gemma4_text": {"layer_types": _SLIDING_THEN_FULL},
    "gemma4_unified_text": {"layer_types": _SLIDING_THEN_FULL},
    # speculative-decoding drafters: every layer reads the target model's shared keys/values
    "gemma4_assistant": {
        "text_config": {"hidden_size_per_layer_input": 0, "vocab_size_per_layer_input": 0},
        "backbone_hidden_size": 64,
        "num_centroids": 16,
        "centroid_intermediate_top_k": 4,
    },
    "gemma4_unified_assistant": {
        "backbone_hidden_size": 64,
        "num_centroids": 16,
        "centroid_intermediate_top_k": 4,
    },
    "gpt_neo": {"attention_types": [[["global", "local"], 1], [["global"], 1]]},  # global, local, global
    "kolibri1": {"layer_types": _SLIDING_THEN_FULL},
    "laguna": {"layer_types": _SLIDING_THEN_FULL},
    "llama4_text": {
        "layer_types": ["chunked_attention", "chunked_attention", "full_attention"],
        "attention_chunk_size": 8,
        "interleave_moe_layer_step": 2,  # MoE on layers 1, dense MLP on 0 and 2
        "intermediate_size_mlp": 128,
    },
    "mellum": {"layer_types": _SLIDING_THEN_FULL},
    "ministral": {"layer_types": _SLIDING_THEN_FULL},
    "olmo3": {"layer_types": _SLIDING_THEN_FULL},
    "smollm3": {"no_rope_layer_interval": 3},  # layer 2 has no rotary embedding
    "inkling_text": {"layer_types": ["hybrid_sliding", "hybrid_sliding", "hybrid"]},
    # logits cover the 500 real tokens of a vocabulary padded to 512
    "inkling2_text": {
        "layer_types": ["hybrid_sliding", "hybrid_sliding", "hybrid"],
        "unpadded_vocab_size": 500,
    },
    "inkling2_loop_text": {
        "layer_types": ["hybrid_sliding", "hybrid_sliding", "hybrid"],
        "unpadded_vocab_size": 500,
    },
    # top-1 routing is all ZAYA supports
    "zaya": {
        "layer_types": ["hybrid_sliding", "hybrid_sliding", "hybrid"],
        "num_experts_per_tok": 1,
        "router_hidden_size": 32,
    },
    # --- mixture of experts ---------------------------------------------------------------------
    "qwen2_moe": {"decoder_sparse_step": 1, "mlp_only_layers": []},
    "qwen3_moe": {"decoder_sparse_step": 1, "mlp_only_layers": []},
    "beam": {"mlp_layer_types": ["dense", "sparse", "sparse"]},
    "longcat_flash": {**_MLA, "zero_expert_num": 2},
    "minimax_m3_vl_text": {
        "layer_types": ["full_attention", "minimax_m3_sparse", "minimax_m3_sparse"],
        "mlp_layer_types": ["dense", "sparse", "sparse"],
        # the sparse layers attend to their 2 best blocks of 2 tokens plus the local block
        "index_block_size": 2,
        "index_topk_blocks": 2,
        "index_local_blocks": 1,
    },
    "deepseek_v4": {
        "layer_types": ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"],
        # keys/values compressed 2x and 4x, so both compressors act on short prompts
        "compress_rates": {"compressed_sparse_attention": 2, "heavily_compressed_attention": 4},
        "mlp_layer_types": ["hash_moe", "moe", "moe"],
        "o_groups": 2,
        "o_lora_rank": 16,
        "hc_mult": 2,
    },
    # --- multi-head latent attention --------------------------------------------------------------
    "axk1": _MLA,
    "axk2": _MLA,
    "deepseek_v2": _MLA,
    "deepseek_v3": _MLA,
    "deepseek_v32": _MLA,
    "glm4_moe_lite": _MLA,
    "glm_moe_dsa": _MLA,
    "minicpm3": _MLA,
    "sarvam_mla": _MLA,
    "youtu": _MLA,
    "dots3_note_text": {
        **_MLA,
        # the sliding-window layers have their own latent-attention sizes (a per-layer config)
        "swa_num_attention_heads": 4,
        "swa_num_key_value_heads": 4,
        "swa_q_lora_rank": 32,
        "swa_kv_lora_rank": 16,
        "swa_head_dim": 32,
        "swa_qk_nope_head_dim": 16,
        "swa_v_head_dim": 16,
    },
    # --- state-space models -----------------------------------------------------------------------
    "mamba2": {"num_heads": 8, "n_groups": 2},  # 8 heads x 16 = expand (2) x hidden
    # the recurrent state is sized from widths rounded up to multiples of 64, the layers from
    # the exact widths: keep hidden_size * qk_dim_factor (0.5) a multiple of 64
    "xlstm": {"hidden_size": 128, "num_heads": 4},
    # --- hybrid stacks: attention and linear-attention / state-space / conv layers ----------------
    "bamba": {"attn_layer_indices": [2]},
    "granitemoehybrid": {"layer_types": _LINEAR_THEN_FULL},
    "jamba": {"attn_layer_period": 3, "attn_layer_offset": 2},  # mamba, mamba (+MoE), attention
    "zamba2": {"layers_block_type": ["linear_attention", "linear_attention", "hybrid"], "adapter_rank": 8},
    "qwen3_next": {"layer_types": _LINEAR_THEN_FULL},
    "qwen3_5_text": {"layer_types": _LINEAR_THEN_FULL},
    "qwen3_5_moe_text": {"layer_types": _LINEAR_THEN_FULL},
    "qwen4_exp_text": {
        "layer_types": ["linear_attention", "linear_attention", "indexed_attention"],
        # the indexed layer keeps a budget of 8 tokens in blocks of 2: sparse on short prompts too
        "indexer_n_heads": 2,
        "indexer_kv_heads": 1,
        "indexer_head_dim": 16,
        "indexer_budget": 8,
        "indexer_compress_ratio": 2,
        "hc_lowrank": 16,
    },
    "bailing_hybrid": {**_MLA, "layer_types": _LINEAR_THEN_FULL},
    "kimi_linear": {**_MLA, "layer_types": _LINEAR_THEN_FULL},
    "lara_mini": {"layer_types": ["linear_attention", "sliding_attention", "full_attention"]},
    "lfm2": {"layer_types": ["conv", "full_attention", "conv"]},
    "lfm2_moe": {"layer_types": ["conv", "full_attention", "conv"], "num_dense_layers": 1},
    "lfm3": {"layer_types": ["conv", "sliding_attention", "full_attention"]},
    # --- towers of multimodal families (built with the model, unused by text prompts) -------------
    "got_ocr2_vision": {"output_channels": 32, "mlp_dim": 128, "image_size": 256, "window_size": 8},
    "phi4_multimodal_audio": {
        "num_blocks": 2,
        "ext_pw_out_channel": 64,
        "depthwise_separable_out_channel": 64,
        "nemo_conv_channels": 32,
    },
    "dots3_note_vision_encoder": {
        "mlp_layer_types": ["dense", "sparse", "sparse"],
        "num_experts_per_tok": 2,
        "adapter_in_dim": 64,
        "adapter_out_dim": 64,
    },
    "dots3_note_audio_encoder": {
        "adapter_input_size": 64,
        "adapter_out_dim": 64,
        "downsample_hidden_size": 32,
    },
}


def _fields(config_class: Any) -> set[str]:
    return (
        {f.name for f in dataclasses.fields(config_class)}
        if dataclasses.is_dataclass(config_class)
        else set()
    )


def config_keys(config_class: Any) -> set[str]:
    """Every key a ``config_class`` knows: its declared fields and what its default serializes."""
    keys = _fields(config_class)
    try:
        keys |= set(config_class().to_dict())
    except Exception:  # some defaults do not validate (e.g. gemma4_assistant); the fields suffice
        pass
    return keys


def _sub_config_class(spec: Any, model_type: str | None) -> Any:
    from transformers import CONFIG_MAPPING, PretrainedConfig

    if isinstance(spec.config_class, type) and issubclass(spec.config_class, PretrainedConfig):
        return spec.config_class
    return CONFIG_MAPPING[model_type or spec.model_type]


def _kwargs(config_class: Any, overrides: dict[str, Any], nested: bool) -> dict[str, Any]:
    fields = _fields(config_class)
    aliases = dict(getattr(config_class, "attribute_map", {}))
    kwargs: dict[str, Any] = {}
    for key, value in SMALL.items():
        target = key if key in fields else aliases.get(key)  # a declared field wins over an alias
        if target in fields:
            kwargs[target] = value
    if nested:
        kwargs.update({k: v for k, v in _TOKEN_IDS.items() if k in fields})
    specs = getattr(config_class, "sub_configs_defaults", None) or {}
    for key, spec in specs.items():
        if key == "backbone_config" or (spec.optional and key not in overrides):
            continue  # optional towers (vision/audio) stay off unless a family asks for them
        sub = overrides.get(key, {})
        if sub is None:
            kwargs[key] = None
            continue
        sub_class = _sub_config_class(spec, sub.get("model_type"))
        sub = {**OVERRIDES.get(getattr(sub_class, "model_type", ""), {}), **sub}
        kwargs[key] = {**spec.init_kwargs, **_kwargs(sub_class, sub, nested=True)}
    for key, value in overrides.items():
        if key not in specs:
            kwargs[key if key in fields else aliases.get(key, key)] = value
    return kwargs


def tiny_kwargs(model_type: str) -> dict[str, Any]:
    """The keyword arguments of the tiny ``model_type`` config (before user overrides)."""
    from transformers import CONFIG_MAPPING

    kwargs = _kwargs(CONFIG_MAPPING[model_type], OVERRIDES.get(model_type, {}), nested=False)
    return copy.deepcopy(kwargs)  # configs may edit the lists they get (layer_types, ...) in place
