"""Data: how each architecture stores its attention, MLP and MoE weights.

Read by `uniterp._weights`, which turns these descriptions into weights of standard
shapes. Each row names child modules of the attention / MLP module the core hands
over and says how a fused projection is laid out along its output dimension. Rows
were written from the HF modeling files (transformers 5.x) and each is checked
numerically by ``tests/test_weights.py``; review them like a table.

Fused query/key/value splits (``split``), with ``n`` query heads, ``kv`` key/value
heads and ``d`` the head width, read along the fused projection's output features:

- ``"separate"``: three projections ``q``, ``k``, ``v``; each output is ``(heads, d)``.
- ``"concat"``: ``[q (n*d) | k (kv*d) | v (kv*d)]`` -- GPT-2 ``c_attn``, Phi-3
  ``qkv_proj``, multi-query GPT-BigCode ``c_attn``.
- ``"per_head"``: ``(n, 3, d)``, query/key/value interleaved per head -- GPT-NeoX and
  Bloom ``query_key_value``, classic Falcon, multi-head GPT-BigCode.
- ``"grouped"``: ``(kv, n/kv + 2, d)``, each key/value group holds its query heads, then
  its key, then its value -- Falcon's ``new_decoder_architecture`` and (with ``kv = 1``)
  Falcon's ``multi_query``.
- ``"mp_qvk"``: ``(mp, 3, n*d/mp)`` with the three parts in the order query, VALUE, key
  -- CodeGen's ``qkv_proj``, laid out for the ``mp = 4`` model-parallel shards it was
  trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ATTENTION_LAYOUTS",
    "AttentionLayout",
    "GENERIC_OUTPUT_NAMES",
    "MLPLayout",
    "MLP_LAYOUTS",
    "MOE_LAYOUTS",
    "MoELayout",
    "POSITIONAL_EMBEDDINGS",
    "REFUSED_ATTENTION_MARKERS",
    "attention_layout_for",
    "mlp_layout_for",
]

Split = Literal["separate", "concat", "per_head", "grouped", "mp_qvk"]


@dataclass(frozen=True)
class AttentionLayout:
    """Where the query/key/value and output projections of one attention module live.

    Attributes:
        split: How queries, keys and values come out of the projection(s) (module doc).
        o: Child name of the output projection.
        q, k, v: Child names of the separate projections (``split="separate"``).
        qkv: Child name of the fused projection (every other split).
        mp: Number of model-parallel shards of an ``"mp_qvk"`` layout.
        gated_query: ``q`` emits ``(n, 2, d)``: each head's query, then an output gate
            (``sigmoid(gate)`` scales the kernel output before ``o``; Qwen3-Next). Only the
            query half is ``W_Q``.
        note: One line for the docs and error messages.
    """

    split: Split
    o: str
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    qkv: str | None = None
    mp: int = 1
    gated_query: bool = False
    note: str = ""


@dataclass(frozen=True)
class MLPLayout:
    """Where the projections of one dense MLP live.

    ``out = act(x @ W_gate + b_gate) * (x @ W_in + b_in) @ W_out + b_out`` for gated
    MLPs, ``act(x @ W_in + b_in) @ W_out + b_out`` otherwise.

    Attributes:
        up: Child name of the input ("up") projection, or of the fused ``[gate | up]``
            projection when ``fused_gate_up``.
        out: Child name of the output ("down") projection.
        act: Child name of the activation module.
        gate: Child name of the gate projection (gated MLPs with separate projections).
        fused_gate_up: ``up`` holds ``[gate (d_mlp) | up (d_mlp)]`` along its outputs.
        on_block: The projections are children of the decoder layer itself (OPT); the
            core passes the layer as the MLP module.
        note: One line for the docs.
    """

    up: str
    out: str
    act: str
    gate: str | None = None
    fused_gate_up: bool = False
    on_block: bool = False
    note: str = ""


@dataclass(frozen=True)
class MoELayout:
    """Where the router, experts and shared experts of one sparse MoE block live.

    The experts module must carry transformers' expert-layout flags (``has_gate``,
    ``is_transposed``, ``is_concatenated``, ``has_bias``; set by
    ``@use_experts_implementation``), which say how ``gate_up_proj`` / ``up_proj`` and
    ``down_proj`` are stored.

    Attributes:
        router: Child name of the router; ``router_logits = x @ weight.T (+ bias)``.
        experts: Child name of the fused experts module.
        shared: Child name of an always-on shared expert MLP, if any.
        shared_gate: Child name of the shared expert's scalar gate (``Linear(hidden, 1)``).
    """

    router: str = "gate"
    experts: str = "experts"
    shared: str | None = None
    shared_gate: str | None = None


# --- attention ----------------------------------------------------------------------------
LLAMA_ATTENTION = AttentionLayout("separate", o="o_proj", note="separate q_proj/k_proj/v_proj, o_proj")
_GPTJ_ATTENTION = AttentionLayout("separate", o="out_proj", note="separate q_proj/k_proj/v_proj, out_proj")


def _falcon_attention(config: Any) -> AttentionLayout:
    if getattr(config, "new_decoder_architecture", False):
        return AttentionLayout(
            "grouped", o="dense", qkv="query_key_value", note="query_key_value grouped (kv, n/kv + 2, d)"
        )
    if getattr(config, "multi_query", False):
        return AttentionLayout(
            "grouped", o="dense", qkv="query_key_value", note="multi-query query_key_value (1, n + 2, d)"
        )
    return AttentionLayout(
        "per_head", o="dense", qkv="query_key_value", note="query_key_value per head (n, 3, d)"
    )


def _gpt_bigcode_attention(config: Any) -> AttentionLayout:
    if getattr(config, "multi_query", True):
        return AttentionLayout(
            "concat", o="c_proj", qkv="c_attn", note="multi-query c_attn [q | k | v], one key head"
        )
    return AttentionLayout("per_head", o="c_proj", qkv="c_attn", note="c_attn per head (n, 3, d)")


#: Families laid out like Llama: separate q/k/v/o projections and a gated MLP
#: (gate_proj, up_proj, down_proj).
_LLAMA_LIKE: tuple[str, ...] = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3_text",
    "olmo",
    "olmo2",
    "olmoe",
    "stablelm",
    "cohere",
    "granite",
    "jamba",
)


ATTENTION_LAYOUTS: dict[str, AttentionLayout | Callable[[Any], AttentionLayout]] = {
    "gpt2": AttentionLayout("concat", o="c_proj", qkv="c_attn", note="Conv1D c_attn [q | k | v]"),
    "gpt_neox": AttentionLayout(
        "per_head", o="dense", qkv="query_key_value", note="query_key_value per head (n, 3, d)"
    ),
    "bloom": AttentionLayout(
        "per_head", o="dense", qkv="query_key_value", note="query_key_value per head (n, 3, d)"
    ),
    "falcon": _falcon_attention,
    "gpt_bigcode": _gpt_bigcode_attention,
    "phi3": AttentionLayout("concat", o="o_proj", qkv="qkv_proj", note="qkv_proj [q | k | v]"),
    "codegen": AttentionLayout(
        "mp_qvk", o="out_proj", qkv="qkv_proj", mp=4, note="qkv_proj (4 shards, [q | v | k] each)"
    ),
    "gptj": _GPTJ_ATTENTION,
    "opt": AttentionLayout("separate", o="out_proj", note="separate q_proj/k_proj/v_proj, out_proj"),
    "phi": AttentionLayout("separate", o="dense", note="separate q_proj/k_proj/v_proj, dense"),
    "qwen3_next": AttentionLayout(
        "separate",
        o="o_proj",
        gated_query=True,
        note="q_proj per head [query | output gate], k_proj/v_proj, o_proj",
    ),
    **{model_type: LLAMA_ATTENTION for model_type in (*_LLAMA_LIKE, "starcoder2", "nemotron")},
}

# Output-projection names the generic rule accepts for attention modules outside the table
# (all of them are ``(n*d) -> hidden`` linear layers in the HF code that uses them).
GENERIC_OUTPUT_NAMES: tuple[str, ...] = ("o_proj", "out_proj", "dense", "c_proj")

# Child names that mark an attention-like module whose weights have no standard shape.
REFUSED_ATTENTION_MARKERS: dict[str, str] = {
    "kv_a_proj_with_mqa": "multi-head latent attention (MLA): keys and values are decoded from a "
    "low-rank latent (kv_a_proj_with_mqa -> norm -> kv_b_proj) with a separate rotary part, so "
    "there is no per-head (hidden, head_dim) key or value map",
    "q_a_proj": "low-rank query (q_a_proj -> norm -> q_b_proj): the query map goes through a norm, "
    "so there is no per-head (hidden, head_dim) query map",
    "in_proj_qkvz": "linear attention (gated delta rule) mixer: no softmax heads with W_Q/W_K/W_V",
    "in_proj_qkv": "linear attention mixer: no softmax heads with W_Q/W_K/W_V",
    "x_proj": "state-space (Mamba) mixer: no attention heads",
    "in_proj": "state-space or linear-attention mixer with one fused input projection: no "
    "attention heads with W_Q/W_K/W_V",
}

# --- MLPs -------------------------------------------------------------------------------------
_GATED = MLPLayout(
    up="up_proj", gate="gate_proj", out="down_proj", act="act_fn", note="gate_proj/up_proj/down_proj"
)

MLP_LAYOUTS: dict[str, MLPLayout | Callable[[Any], MLPLayout]] = {
    "gpt2": MLPLayout(up="c_fc", out="c_proj", act="act", note="Conv1D c_fc/c_proj"),
    "gpt_bigcode": MLPLayout(up="c_fc", out="c_proj", act="act", note="c_fc/c_proj"),
    "starcoder2": MLPLayout(up="c_fc", out="c_proj", act="act", note="c_fc/c_proj"),
    "gpt_neox": MLPLayout(
        up="dense_h_to_4h", out="dense_4h_to_h", act="act", note="dense_h_to_4h/dense_4h_to_h"
    ),
    "falcon": MLPLayout(
        up="dense_h_to_4h", out="dense_4h_to_h", act="act", note="dense_h_to_4h/dense_4h_to_h"
    ),
    "bloom": MLPLayout(
        up="dense_h_to_4h",
        out="dense_4h_to_h",
        act="gelu_impl",
        note="dense_h_to_4h/dense_4h_to_h; the module adds the residual itself, the weights do not",
    ),
    "gptj": MLPLayout(up="fc_in", out="fc_out", act="act", note="fc_in/fc_out"),
    "codegen": MLPLayout(up="fc_in", out="fc_out", act="act", note="fc_in/fc_out"),
    "phi": MLPLayout(up="fc1", out="fc2", act="activation_fn", note="fc1/fc2"),
    "opt": MLPLayout(
        up="fc1",
        out="fc2",
        act="activation_fn",
        on_block=True,
        note="fc1/fc2 on the decoder layer (no MLP module)",
    ),
    "phi3": MLPLayout(
        up="gate_up_proj",
        out="down_proj",
        act="activation_fn",
        fused_gate_up=True,
        note="gate_up_proj [gate | up]",
    ),
    "nemotron": MLPLayout(up="up_proj", out="down_proj", act="act_fn", note="up_proj/down_proj (no gate)"),
    **{model_type: _GATED for model_type in (*_LLAMA_LIKE, "deepseek_v3", "qwen3_next")},
}

MOE_LAYOUTS: dict[str, MoELayout] = {
    "mixtral": MoELayout(),
    "qwen2_moe": MoELayout(shared="shared_expert", shared_gate="shared_expert_gate"),
    "qwen3_moe": MoELayout(),
    "olmoe": MoELayout(),
    "jamba": MoELayout(router="router"),
    "deepseek_v3": MoELayout(shared="shared_experts"),
    "qwen3_next": MoELayout(shared="shared_expert", shared_gate="shared_expert_gate"),
}

# --- positions ----------------------------------------------------------------------------------
# Learned absolute position tables: native path from the root model, and the row offset the
# module adds to position ids (OPT's table starts two rows in).
POSITIONAL_EMBEDDINGS: dict[str, tuple[str, int]] = {
    "gpt2": ("transformer.wpe", 0),
    "gpt_bigcode": ("transformer.wpe", 0),
    "opt": ("model.decoder.embed_positions", 2),
}

# Why families without a learned table have none (others: "no learned position table known").
NO_POSITIONAL_TABLE: dict[str, str] = {
    "bloom": "Bloom adds ALiBi biases to the attention scores; it has no position table",
}


def attention_layout_for(model_type: str, config: Any) -> AttentionLayout | None:
    """The table row of ``model_type`` (resolved against ``config``), or ``None``.

    Example::

        >>> attention_layout_for("gpt2", None).qkv
        'c_attn'
    """
    row = ATTENTION_LAYOUTS.get(model_type)
    return row(config) if callable(row) else row


def mlp_layout_for(model_type: str, config: Any) -> MLPLayout | None:
    """The MLP table row of ``model_type`` (resolved against ``config``), or ``None``.

    Example::

        >>> mlp_layout_for("opt", None).on_block
        True
    """
    row = MLP_LAYOUTS.get(model_type)
    return row(config) if callable(row) else row
