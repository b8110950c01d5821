"""Data: how to make a tiny configuration of each ``model_type`` (used by `uniterp.testing`).

``SMALL`` is applied to every config that has the key; ``OVERRIDES`` holds what a
family needs on top (nested text configs, layer patterns of hybrid stacks, ...).
"""

from __future__ import annotations

from typing import Any

# Config keys set on every config that has them: small sizes, few layers.
SMALL: dict[str, Any] = {
    "vocab_size": 512,
    "hidden_size": 64,
    "n_embd": 64,
    "d_model": 64,
    "num_hidden_layers": 3,
    "n_layer": 3,
    "num_layers": 3,
    "num_attention_heads": 4,
    "n_head": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "n_inner": 128,
    "ffn_dim": 128,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "n_positions": 256,
    "n_ctx": 256,
    "num_local_experts": 4,
    "num_experts": 4,
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
}

# Per-family adjustments on top of ``SMALL`` (keys the family needs differently).
OVERRIDES: dict[str, dict[str, Any]] = {
    "gpt_neox": {"rotary_pct": 0.5},
    "gptj": {"rotary_dim": 8},
    "codegen": {"rotary_dim": 8},
    "falcon": {"new_decoder_architecture": False, "multi_query": True, "parallel_attn": True},
    "bloom": {"n_head": 4},
    "opt": {"word_embed_proj_dim": 64, "ffn_dim": 128, "do_layer_norm_before": True},
    "gemma2": {"final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0},
    "gemma3_text": {"final_logit_softcapping": 30.0, "sliding_window_pattern": 2},
    "qwen2_moe": {"decoder_sparse_step": 1, "mlp_only_layers": []},
    "qwen3_moe": {"decoder_sparse_step": 1, "mlp_only_layers": []},
    "phi": {"partial_rotary_factor": 0.5},
    "gpt_bigcode": {"multi_query": True},
}
