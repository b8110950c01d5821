"""Every vocabulary uniterp matches against, in one place: data, no logic.

Module and class names, config keys, block shapes and operation names that
architectures use for the same thing. Discovery, the spec resolver, the probe,
attention location and the size reader all read them from here, so supporting a
new naming convention is a change to one table.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "ATTENTION_CHILD_NAMES",
    "ATTENTION_CLASS",
    "BLOCK_PATTERNS",
    "CONTEXT_KEYS",
    "DICTIONARY_LEARNING_HOOKS",
    "DOWN_PROJECTION_NAMES",
    "EXPERTS_NAMES",
    "KERNEL_CALLS",
    "LAYER_COUNT_KEYS",
    "LOGIT_KEYS",
    "MLP_CHILD_NAMES",
    "MLP_CLASS",
    "NORM_CLASS",
    "NOT_ATTENTION",
    "NOT_MLP",
    "OUTPUT_PROJECTION_NAMES",
    "POSITION_EMBEDDING_NAMES",
    "PROBE_PROMPT",
    "PROBE_PROMPTS",
    "ROTARY_CALLS",
    "ROUTER_NAMES",
    "SAE_CHECK_PROMPTS",
    "SIZE_KEYS",
    "STREAM_KEYS",
    "STREAM_READOUT",
    "TL_MODEL_ALIASES",
    "MIXER_STATE_ATTRIBUTES",
    "STATE_MIXER_CLASS",
]

# -- probe inputs --------------------------------------------------------------------------

#: The two prompts (different lengths, so one is left-padded) every load-time probe and
#: ``check()`` run on.
PROBE_PROMPTS: tuple[str, ...] = ("The Eiffel Tower is in the city of", "hello world")
#: One short prompt for single-row probes (locating attention operations).
PROBE_PROMPT = "The Eiffel Tower is in"

# -- module classes ------------------------------------------------------------------------

#: Class-name fragments of token mixers that are not softmax attention (linear
#: attention, state-space and recurrent mixers, convolutions); matched case-insensitively.
NOT_ATTENTION: tuple[str, ...] = (
    "delta",
    "linear",
    "lightning",
    "mamba",
    "ssm",
    "conv",
    "recurren",
    "rwkv",
    "lstm",
)
#: A class name that looks like a token mixer with a recurrent state (state-space,
#: linear-attention, recurrent or convolution mixers; ``Mixer`` as in ``BambaMixer``).
STATE_MIXER_CLASS = re.compile(
    r"mamba|ssm|delta|linear|lightning|recurren|rwkv|lstm|conv|mixer", re.IGNORECASE
)
#: Attributes on which a mixer module keeps its recurrent state itself, outside the
#: cache (RecurrentGemma's RG-LRU).
MIXER_STATE_ATTRIBUTES: tuple[str, ...] = ("recurrent_states",)
#: Class-name fragments of modules that are not an MLP (token mixers).
NOT_MLP: tuple[str, ...] = ("mamba", "ssm", "conv", "recurren", "delta")

#: A class name that looks like attention / like an MLP / like a norm.
ATTENTION_CLASS = re.compile(r"attention|attn", re.IGNORECASE)
MLP_CLASS = re.compile(r"mlp|moe|feedforward|ffn|expert", re.IGNORECASE)
NORM_CLASS = re.compile(r"norm", re.IGNORECASE)

# -- module names ----------------------------------------------------------------------------

#: Names a block gives its token mixer / its MLP, most specific first.
ATTENTION_CHILD_NAMES: tuple[str, ...] = (
    "self_attn",
    "attn",
    "attention",
    "self_attention",
    "temporal_block",
    "mixer",
)
MLP_CHILD_NAMES: tuple[str, ...] = (
    "mlp",
    "feed_forward",
    "ffn",
    "block_sparse_moe",
    "mlp_block",
    "moe",
    "ff",
)

#: Names of the module that merges several residual streams after the last layer.
STREAM_READOUT = re.compile(r"^(hc_head|hyper_connection_mixer|stream_readout)$")

#: Names of learned absolute-position embedding tables (a hard context limit).
POSITION_EMBEDDING_NAMES = re.compile(r"(^|\.)(wpe|embed_positions|position_embeddings|pos_emb)$")

#: Block shapes that need more than two module names: required children -> spec fields.
BLOCK_PATTERNS: tuple[tuple[frozenset[str], dict[str, Any]], ...] = (
    # BERT-style post-norm encoder blocks used as decoders: the attention and the
    # MLP output modules add the residual and normalise inside; their
    # contributions are the dense projections.
    (
        frozenset({"attention", "intermediate", "output"}),
        dict(
            attention="attention",
            attention_output="attention.output.dense",
            mlp=None,
            mlp_input="intermediate",
            mlp_output="output.dense",
            block="post_norm",
        ),
    ),
    # fairseq-style decoder blocks (BART, Marian, Pegasus, XGLM, BioGPT, ...): no MLP module.
    (
        frozenset({"self_attn", "fc1", "fc2"}),
        dict(attention="self_attn", mlp=None, mlp_input="fc1", mlp_output="fc2"),
    ),
)

# -- config keys ----------------------------------------------------------------------------

#: Config keys of each size, first match wins (after a spec's own ``config_keys``).
SIZE_KEYS: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_heads": ("num_attention_heads", "n_head"),
    "num_kv_heads": ("num_key_value_heads", "num_kv_heads"),
    "head_dim": ("head_dim",),
}
#: Config keys of the number of decoder layers.
LAYER_COUNT_KEYS: tuple[str, ...] = ("num_hidden_layers", "decoder_layers", "n_layer", "num_layers")
#: Config keys of the longest input a model with learned positions accepts.
CONTEXT_KEYS: tuple[str, ...] = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len")
#: Config keys of logit post-processing, by the spec field that applies them.
LOGIT_KEYS: dict[str, tuple[str, ...]] = {
    "logit_softcap": ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap"),
    "logit_scale": ("logit_scale",),
    "logit_divisor": ("logits_scaling", "logits_mup_width_multiplier"),
}
#: Config keys giving the number of parallel residual streams per token (hyper-connections, AltUp).
STREAM_KEYS: tuple[str, ...] = ("hc_mult", "hc_count", "altup_num_inputs")

# -- operations inside an attention forward (matched on `.source` base names) -----------------

#: The softmax that makes attention probabilities.
SOFTMAX_OP = re.compile(r"(^|_)softmax$")
#: The dropout applied to them before they meet the values.
DROPOUT_OP = re.compile(r"dropout$")
#: A cast back to the model's dtype right after a float32 softmax.
CAST_OP = re.compile(r"^(to|type_as|float|half|bfloat16)$")
#: Where the probabilities meet the values (ends the search for the dropout).
APPLY_OP = re.compile(r"(^|_)(matmul|bmm|baddbmm|einsum)$")
#: Operations or submodules worth drilling into to find the softmax.
DRILL = re.compile(r"attention|attn|sdpa|eager", re.IGNORECASE)
#: How many operations after the softmax its dropout may sit (assignments count as operations).
DROPOUT_WINDOW = 10

#: Calls of an attention kernel in an attention forward -> the argument index of the
#: query (keys and values follow it). ``attention_interface(self, query, key, value, ...)``.
KERNEL_CALLS: dict[str, int] = {
    "attention_interface": 1,
    "eager_attention_forward": 1,
    "self__attn": 0,
    "torch_nn_functional_scaled_dot_product_attention": 0,
    "F_scaled_dot_product_attention": 0,
}
#: Calls that apply rotary position embeddings -> the argument index of the query (the key follows).
ROTARY_CALLS: dict[str, int] = {"apply_rotary_pos_emb": 0}

# -- projections inside attention and MLP modules (for models without a weight-layout row) ----

#: The attention's output projection (its input is the heads' outputs concatenated).
OUTPUT_PROJECTION_NAMES: tuple[str, ...] = ("o_proj", "out_proj", "dense", "c_proj", "wo", "o")
#: The MLP's down projection (its input is the MLP's neurons).
DOWN_PROJECTION_NAMES: tuple[str, ...] = (
    "down_proj",
    "c_proj",
    "fc2",
    "dense_4h_to_h",
    "fc_out",
    "w2",
    "wo",
    "out_proj",
)
#: A sparse mixture of experts: its experts module and its router.
EXPERTS_NAMES: tuple[str, ...] = ("experts",)
ROUTER_NAMES: tuple[str, ...] = ("gate", "router")

# -- sparse autoencoders ----------------------------------------------------------------------

#: Prompts of the check run when an SAE is attached (short, varied English; the first token
#: of each row and special tokens are left out of the statistics).
SAE_CHECK_PROMPTS: tuple[str, ...] = (
    "The Eiffel Tower is in the city of Paris, which is the capital of France.",
    "She opened the door slowly and looked out at the rain falling on the street.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "In 1969, astronauts landed on the Moon for the first time in human history.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "My favourite colours are red, green and blue, but I also like yellow.",
    "The capital of Japan is Tokyo and the capital of Italy is Rome.",
)

#: Submodule names dictionary_learning's training scripts write (``trainer.submodule_name``)
#: -> the standardized value the module's output (``buffer.io="out"``) and input (``"in"``)
#: are; the group ``n`` is the layer. Module paths need no entry: they resolve as native paths.
DICTIONARY_LEARNING_HOOKS: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"^resid_post_layer_(?P<n>\d+)$"), "layers_output", "layers_input"),
    (re.compile(r"^resid_(?P<n>\d+)$"), "layers_output", "layers_input"),
    (re.compile(r"^attn_(?P<n>\d+)$"), "attentions_output", "attentions_input"),
    (re.compile(r"^mlp_(?P<n>\d+)$"), "mlps_output", "mlps_input"),
    (re.compile(r"^embed$"), "token_embeddings", ""),
)
#: TransformerLens model names (as SAELens configs give them) -> the HF repository name.
TL_MODEL_ALIASES: dict[str, str] = {
    "gpt2-small": "gpt2",
    "mistral-7b": "mistral-7b-v0.1",
}
