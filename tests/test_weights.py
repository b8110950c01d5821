"""Weights in standard shapes reproduce what the native modules compute.

References are built without uniterp: plain torch forward hooks on the native modules
of a plain HF model, the native split methods of fused projections (Bloom's
``_reshape``, Falcon's ``_split_heads``), and the query/key/value tensors the attention
kernel receives (captured by a registered attention function that calls the family's
own ``eager_attention_forward``). Rotary embeddings are the identity at position 0, so
kernel queries/keys are compared there; values everywhere.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AttentionInterface, AutoModelForCausalLM

from uniterp._errors import InputError, ShapeError, UnavailableError
from uniterp._mlp_weights import MLPWeights, mlp_weights, moe_weights
from uniterp._nnsight_compat import native_module
from uniterp._weights import (
    attention_weights,
    embedding_weights,
    expand_kv,
    positional_weights,
    unembedding_weights,
)
from uniterp.testing import TINY_FAMILIES, tiny_model_path

from conftest import PROMPTS, load_tiny

TOL = {"atol": 1e-5, "rtol": 1e-5}

# case id -> (model_type, config overrides). Variants cover every fused layout's branches.
CASES: dict[str, tuple[str, dict[str, Any]]] = {family: (family, {}) for family in TINY_FAMILIES}
CASES.update(
    {
        "falcon-new-arch": ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}),
        "falcon-classic": ("falcon", {"multi_query": False}),
        "gpt_bigcode-mha": ("gpt_bigcode", {"multi_query": False}),
        "codegen-8-heads": ("codegen", {"n_head": 8}),  # 2 heads per model-parallel shard
        "nemotron": ("nemotron", {}),
        "olmoe": ("olmoe", {}),
        "jamba": ("jamba", {}),  # attention layers exact, Mamba layers refused
        "deepseek_v3": ("deepseek_v3", {}),  # MLPs and experts exact, MLA refused
        "qwen3_next": ("qwen3_next", {}),  # gated-query attention exact, linear attention refused
    }
)

# What cannot be expressed, with the reason the refusal must give (asserted below).
REFUSED = {
    "deepseek_v3 attention": "multi-head latent attention",
    "jamba Mamba layers": "state-space",
    "qwen3_next linear attention": "linear attention",
    "mamba mixers": "state-space",
    "gpt_oss experts": "custom gating function",
}

# Families whose attention does not go through transformers' attention interface.
NO_KERNEL_CAPTURE = {"bloom", "falcon"}
# Native q/k norms between the projection and the kernel: per head or on the flat projection.
QK_NORM = {
    "qwen3_next": "per_head",
    "qwen3": "per_head",
    "qwen3_moe": "per_head",
    "gemma3_text": "per_head",
    "olmo2": "flat",
    "olmoe": "flat",
}
# q_proj emits (heads, 2, head_dim): the query, then an output gate.
GATED_QUERY = {"qwen3_next"}
# OPT multiplies its queries by head_dim ** -0.5 before the kernel.
QUERY_PRESCALED = {"opt"}
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
OUTPUT_PROJ = {
    "gpt2": "c_proj",
    "gpt_bigcode": "c_proj",
    "gpt_neox": "dense",
    "bloom": "dense",
    "falcon": "dense",
    "phi": "dense",
    "gptj": "out_proj",
    "codegen": "out_proj",
    "opt": "out_proj",
}
FUSED = {
    "gpt2": "c_attn",
    "gpt_bigcode": "c_attn",
    "gpt_neox": "query_key_value",
    "bloom": "query_key_value",
    "falcon": "query_key_value",
    "phi3": "qkv_proj",
    "codegen": "qkv_proj",
}


# --- running a plain HF model with hooks -------------------------------------------------------
_KERNEL_CALLS: list[tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []


def _capturing_attention(module, query, key, value, attention_mask, **kwargs):
    eager = sys.modules[type(module).__module__].eager_attention_forward
    out, weights = eager(module, query, key, value, attention_mask, **kwargs)
    _KERNEL_CALLS.append((module, query.detach(), key.detach(), value.detach(), out.detach()))
    return out, weights


AttentionInterface.register("uniterp_test_capture", _capturing_attention)


@dataclass
class Run:
    model: nn.Module
    model_type: str
    ids: torch.Tensor
    layers: str
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    kernel: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def layer_names(self) -> list[str]:
        return [f"{self.layers}.{i}" for i in range(len(self.module(self.layers)))]

    def attention_name(self, layer: str) -> str | None:
        block = self.module(layer)
        for name in ATTENTION_NAMES:
            if isinstance(getattr(block, name, None), nn.Module):
                return f"{layer}.{name}"
        return None

    def mlp_name(self, layer: str) -> str:
        block = self.module(layer)
        for name in ("mlp", "feed_forward"):
            if isinstance(getattr(block, name, None), nn.Module):
                return f"{layer}.{name}"
        return layer  # OPT: fc1/fc2 on the layer


def _first_input(args: tuple, kwargs: dict) -> Any:
    if args:
        return args[0]
    return kwargs.get("hidden_states", next(iter(kwargs.values()), None))


def _cloned(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple):
        return tuple(_cloned(v) for v in value)
    return value


@cache
def run(case: str) -> Run:
    model_type, overrides = CASES[case]
    path = tiny_model_path(model_type, **overrides)
    kwargs = {} if model_type in NO_KERNEL_CAPTURE else {"attn_implementation": "uniterp_test_capture"}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).eval()
    layers = next(
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == model.config.num_hidden_layers
    )
    ids = torch.randint(1, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    record = Run(model, model_type, ids, layers)
    names = {id(module): name for name, module in model.named_modules()}
    handles = []
    for name, module in model.named_modules():

        def hook(module, args, kwargs, output, name=name):
            # cloned: some families edit tensors in place later (Falcon adds attention to the MLP output)
            record.inputs[name] = _cloned(_first_input(args, kwargs))
            record.outputs[name] = _cloned(output)

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    _KERNEL_CALLS.clear()
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    for module, *tensors in _KERNEL_CALLS:
        record.kernel[names[id(module)]] = tuple(tensors)
    return record


def _heads(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(batch, seq, hidden) @ (heads, hidden, d) + (heads, d) -> (batch, seq, heads, d)."""
    return torch.einsum("bsm,hmd->bshd", x, w) + b


def _attention_layers(r: Run) -> list[tuple[str, nn.Module]]:
    found = []
    for layer in r.layer_names():
        name = r.attention_name(layer)
        if name is not None:
            found.append((name, r.module(name)))
    return found


ATTENTION_CASES = [c for c in CASES if c != "deepseek_v3"]


# --- attention -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_queries_keys_values_equal_the_native_projection(case: str) -> None:
    r = run(case)
    checked = 0
    for name, attention in _attention_layers(r):
        w = attention_weights(attention, r.model.config, r.model_type)
        x = r.inputs[name]
        q, k, v = _heads(x, w.W_Q, w.b_Q), _heads(x, w.W_K, w.b_K), _heads(x, w.W_V, w.b_V)
        assert q.shape == (*x.shape[:2], w.n_heads, w.head_dim)
        assert k.shape == v.shape == (*x.shape[:2], w.n_kv_heads, w.head_dim)
        if r.model_type not in FUSED:
            for proj, mine in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                assert torch.equal(r.inputs[f"{name}.{proj}"], x)  # the projections read the module input
                native = r.outputs[f"{name}.{proj}"]
                if proj == "q_proj" and r.model_type in GATED_QUERY:  # as the native code chunks it
                    native = native.view(*native.shape[:2], -1, 2 * w.head_dim)[..., : w.head_dim]
                torch.testing.assert_close(mine, native.reshape(*native.shape[:2], -1, w.head_dim), **TOL)
        else:
            assert torch.equal(r.inputs[f"{name}.{FUSED[r.model_type]}"], x)  # reads the module input
            fused = r.outputs[f"{name}.{FUSED[r.model_type]}"]
            if r.model_type == "bloom":
                nq, nk, nv = (t.transpose(1, 2) for t in attention._reshape(fused))
                for mine, native in ((q, nq), (k, nk), (v, nv)):
                    torch.testing.assert_close(mine, native, **TOL)
            elif r.model_type == "falcon":
                nq, nk, nv = attention._split_heads(fused)
                torch.testing.assert_close(q, nq, **TOL)
                if attention.new_decoder_architecture:  # native k/v are broadcast to every query head
                    k, v = (expand_kv(t.transpose(0, 2), w.n_heads).transpose(0, 2) for t in (k, v))
                torch.testing.assert_close(k, nk, **TOL)
                torch.testing.assert_close(v, nv, **TOL)
            else:
                assert name in r.kernel  # the other fused layouts: against the kernel inputs below
        checked += 1
    assert checked


def _normed(attention: nn.Module, kind: str | None, t: torch.Tensor, which: str) -> torch.Tensor:
    if kind is None:
        return t
    norm = getattr(attention, f"{which}_norm")
    if kind == "per_head":
        return norm(t)
    return norm(t.flatten(-2)).view(t.shape)


@pytest.mark.parametrize("case", [c for c in ATTENTION_CASES if CASES[c][0] not in NO_KERNEL_CAPTURE])
def test_weights_give_the_tensors_the_attention_kernel_receives(case: str) -> None:
    r = run(case)
    checked = 0
    for name, attention in _attention_layers(r):
        w = attention_weights(attention, r.model.config, r.model_type)
        x = r.inputs[name]
        kq, kk, kv, kout = r.kernel[name]  # (b, heads, s, d) x3, (b, s, heads, d)
        norm = QK_NORM.get(r.model_type)
        q = _normed(attention, norm, _heads(x, w.W_Q, w.b_Q), "q")
        k = _normed(attention, norm, _heads(x, w.W_K, w.b_K), "k")
        if r.model_type in QUERY_PRESCALED:
            q = q * w.head_dim**-0.5
        # position 0: rotary embeddings are the identity there
        torch.testing.assert_close(q[:, 0], kq[:, :, 0], **TOL)
        torch.testing.assert_close(k[:, 0], kk[:, :, 0], **TOL)
        torch.testing.assert_close(_heads(x, w.W_V, w.b_V), kv.transpose(1, 2), **TOL)
        # the output projection reads the kernel output, heads concatenated
        o_in = r.inputs[f"{name}.{OUTPUT_PROJ.get(r.model_type, 'o_proj')}"]
        if r.model_type in GATED_QUERY:  # the output gate scales each head first
            q_out = r.outputs[f"{name}.q_proj"]
            kout = kout * torch.sigmoid(q_out.view(*q_out.shape[:2], -1, 2 * w.head_dim)[..., w.head_dim :])
        torch.testing.assert_close(o_in.view(kout.shape), kout, **TOL)
        checked += 1
    assert checked


@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_head_outputs_through_w_o_sum_to_the_output_projection(case: str) -> None:
    r = run(case)
    for name, attention in _attention_layers(r):
        w = attention_weights(attention, r.model.config, r.model_type)
        o = f"{name}.{OUTPUT_PROJ.get(r.model_type, 'o_proj')}"
        z = r.inputs[o].view(*r.inputs[o].shape[:2], w.n_heads, w.head_dim)
        per_head = torch.einsum("bshd,hdm->bshm", z, w.W_O)
        assert w.W_O.shape == (w.n_heads, w.head_dim, r.outputs[o].shape[-1])
        torch.testing.assert_close(per_head.sum(2) + w.b_O, r.outputs[o], **TOL)


@pytest.mark.parametrize("case", ["llama", "falcon-new-arch", "gpt_bigcode"])
def test_expanded_kv_heads_follow_repeat_kv(case: str) -> None:
    r = run(case)
    name, attention = _attention_layers(r)[0]
    w = attention_weights(attention, r.model.config, r.model_type)
    e = w.expand_kv()
    assert e.W_K.shape == w.W_Q.shape and e.b_V.shape == w.b_Q.shape and e.n_kv_heads == w.n_heads
    group = w.n_heads // w.n_kv_heads
    assert group > 1
    for h in range(w.n_heads):
        assert torch.equal(e.W_K[h], w.W_K[h // group]) and torch.equal(e.W_V[h], w.W_V[h // group])


def test_weights_share_storage_and_dtype_with_the_parameters() -> None:
    r = run("llama")
    attention = r.module(r.attention_name(r.layer_names()[0]))
    w = attention_weights(attention, r.model.config, "llama")
    assert w.W_Q.data_ptr() == attention.q_proj.weight.data_ptr()
    assert w.W_Q.dtype == attention.q_proj.weight.dtype and not w.W_Q.requires_grad
    assert torch.equal(w.b_Q, torch.zeros_like(w.b_Q)) and w.has_bias == frozenset()
    half = attention_weights(copy.deepcopy(attention).to(torch.bfloat16), r.model.config, "llama")
    assert half.W_K.dtype == half.b_K.dtype == torch.bfloat16


def test_tied_unembedding_is_the_embedding_transposed() -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path("llama", tie_word_embeddings=True))
    u = unembedding_weights(model.lm_head, model.config, "llama")
    W_E = embedding_weights(model.get_input_embeddings(), model.config, "llama")
    assert u.W_U.data_ptr() == W_E.data_ptr() and torch.equal(u.W_U, W_E.T) and not u.has_bias


def test_generic_rule_reads_separate_projections_of_an_unknown_type() -> None:
    r = run("qwen2")
    attention = r.module(r.attention_name(r.layer_names()[0]))
    table = attention_weights(attention, r.model.config, "qwen2")
    generic = attention_weights(attention, r.model.config, "my_qwen_fork")
    assert "generic" in generic.layout
    for field_name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
        assert torch.equal(getattr(generic, field_name), getattr(table, field_name))


# --- MLPs and experts ------------------------------------------------------------------------------
def _activation(module: nn.Module) -> Any:
    """The native module's own activation: its one parameter-free, non-dropout child."""
    acts = [
        child
        for child in module.children()
        if not isinstance(child, nn.Dropout) and next(child.parameters(), None) is None
    ]
    assert len(acts) == 1, acts
    return acts[0]


def _mlp_io(r: Run, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if r.model_type == "opt":
        return r.inputs[f"{name}.fc1"], r.outputs[f"{name}.fc2"]
    if r.model_type == "bloom":  # the module adds the residual itself
        return r.inputs[f"{name}.dense_h_to_4h"], r.outputs[f"{name}.dense_4h_to_h"]
    return r.inputs[name], r.outputs[name]


def _reference_mlp(w: MLPWeights, act: Any, x: torch.Tensor) -> torch.Tensor:
    pre = x @ w.W_in + w.b_in
    hidden = act(pre) if w.W_gate is None else act(x @ w.W_gate + w.b_gate) * pre
    return hidden @ w.W_out + w.b_out


@pytest.mark.parametrize("case", list(CASES))
def test_mlp_weights_reproduce_the_mlp(case: str) -> None:
    r = run(case)
    checked = 0
    for layer in r.layer_names():
        name = r.mlp_name(layer)
        mlp = r.module(name)
        if hasattr(mlp, "experts"):
            continue
        w = mlp_weights(mlp, r.model.config, r.model_type)
        x, out = _mlp_io(r, name)
        assert w.W_in.shape == (x.shape[-1], w.d_mlp) and w.W_out.shape == (w.d_mlp, out.shape[-1])
        torch.testing.assert_close(_reference_mlp(w, _activation(mlp), x), out, **TOL)
        torch.testing.assert_close(w.output(x), out, **TOL)
        checked += 1
    if CASES[case][0] not in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "qwen3_next"):
        assert checked


MOE_CASES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "jamba", "deepseek_v3", "qwen3_next"]


@pytest.mark.parametrize("case", MOE_CASES)
def test_moe_router_experts_and_shared_expert(case: str) -> None:
    r = run(case)
    checked = 0
    for layer in r.layer_names():
        name = r.mlp_name(layer)
        block = r.module(name)
        if not hasattr(block, "experts"):
            continue
        moe = moe_weights(block, r.model.config, r.model_type)
        with pytest.raises(UnavailableError, match="moe_weights"):
            mlp_weights(block, r.model.config, r.model_type)
        x = r.inputs[name].reshape(-1, moe.W_in.shape[1])
        router = next(m for n, m in block.named_children() if n in ("gate", "router"))
        logits = r.outputs[f"{name}.{'router' if r.model_type == 'jamba' else 'gate'}"]
        logits = logits[0] if isinstance(logits, tuple) else logits
        assert router is not None
        torch.testing.assert_close(x.to(moe.W_router.dtype) @ moe.W_router + moe.b_router, logits, **TOL)
        for e in range(moe.n_experts):
            index = torch.full((x.shape[0], 1), e, dtype=torch.long)
            with torch.no_grad():
                native = block.experts(x, index, torch.ones(x.shape[0], 1))
            torch.testing.assert_close(_reference_mlp(moe.expert(e), block.experts.act_fn, x), native, **TOL)
        if moe.shared is not None:
            shared_name = "shared_experts" if r.model_type == "deepseek_v3" else "shared_expert"
            shared_out = r.outputs[f"{name}.{shared_name}"].reshape(x.shape[0], -1)
            torch.testing.assert_close(moe.shared.output(x), shared_out, **TOL)
        if moe.W_shared_gate is not None:
            torch.testing.assert_close(x @ moe.W_shared_gate, r.outputs[f"{name}.shared_expert_gate"], **TOL)
        checked += 1
    assert checked


def test_expert_index_is_checked() -> None:
    r = run("mixtral")
    moe = moe_weights(r.module(r.mlp_name(r.layer_names()[0])), r.model.config, "mixtral")
    assert torch.equal(moe.expert(-1).W_out, moe.W_out[-1])
    with pytest.raises(InputError, match=r"\[-4, 4\)"):
        moe.expert(4)


# --- embeddings ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(TINY_FAMILIES))
def test_unembedding_and_embedding(case: str) -> None:
    r = run(case)
    head = r.model.get_output_embeddings()
    u = unembedding_weights(head, r.model.config, r.model_type)
    name = next(n for n, m in r.model.named_modules() if m is head)
    torch.testing.assert_close(r.inputs[name] @ u.W_U + u.b_U, r.outputs[name], **TOL)
    assert u.W_U.shape == (r.inputs[name].shape[-1], r.model.config.vocab_size)
    embed = r.model.get_input_embeddings()
    W_E = embedding_weights(embed, r.model.config, r.model_type)
    name = next(n for n, m in r.model.named_modules() if m is embed)
    assert torch.equal(W_E[r.ids], r.outputs[name])


@pytest.mark.parametrize(
    "case,path",
    [
        ("gpt2", "transformer.wpe"),
        ("gpt_bigcode", "transformer.wpe"),
        ("opt", "model.decoder.embed_positions"),
    ],
)
def test_learned_positions(case: str, path: str) -> None:
    r = run(case)
    W_pos = positional_weights(r.model, r.model.config, r.model_type)
    assert W_pos.shape[0] >= r.model.config.max_position_embeddings
    seq = r.ids.shape[1]
    torch.testing.assert_close(
        W_pos[:seq].expand(r.ids.shape[0], -1, -1), r.outputs[path].expand(r.ids.shape[0], -1, -1), **TOL
    )


@pytest.mark.parametrize("case,reason", [("llama", "rotary"), ("bloom", "ALiBi"), ("gpt_neox", "rotary")])
def test_families_without_a_position_table_are_refused(case: str, reason: str) -> None:
    r = run(case)
    with pytest.raises(UnavailableError, match=reason) as info:
        positional_weights(r.model, r.model.config, r.model_type)
    assert info.value.name == "W_pos"


# --- refusals ------------------------------------------------------------------------------------
def test_multi_head_latent_attention_is_refused() -> None:
    r = run("deepseek_v3")
    attention = r.module(r.attention_name(r.layer_names()[0]))
    with pytest.raises(UnavailableError, match=REFUSED["deepseek_v3 attention"]) as info:
        attention_weights(attention, r.model.config, "deepseek_v3")
    assert info.value.name == "W_Q"


def test_state_space_and_linear_attention_mixers_are_refused() -> None:
    r = run("jamba")
    mixers = [r.module(f"{layer}.mamba") for layer in r.layer_names() if hasattr(r.module(layer), "mamba")]
    assert mixers
    for mixer in mixers:
        with pytest.raises(UnavailableError, match=REFUSED["jamba Mamba layers"]):
            attention_weights(mixer, r.model.config, "jamba")
    r = run("qwen3_next")
    mixers = [
        r.module(f"{layer}.linear_attn")
        for layer in r.layer_names()
        if hasattr(r.module(layer), "linear_attn")
    ]
    assert mixers
    for mixer in mixers:
        with pytest.raises(UnavailableError, match=REFUSED["qwen3_next linear attention"]):
            attention_weights(mixer, r.model.config, "qwen3_next")
    mamba = AutoModelForCausalLM.from_pretrained(tiny_model_path("mamba"))
    with pytest.raises(UnavailableError, match=REFUSED["mamba mixers"]):
        attention_weights(mamba.backbone.layers[0].mixer, mamba.config, "mamba")


def test_custom_expert_gating_is_refused() -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path("gpt_oss"))
    with pytest.raises(UnavailableError, match=REFUSED["gpt_oss experts"]):
        moe_weights(model.model.layers[0].mlp, model.config, "gpt_oss")


class _FusedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(64, 192)
        self.o_proj = nn.Linear(64, 64)


def test_unknown_fused_layout_is_refused() -> None:
    config = run("llama").model.config
    with pytest.raises(UnavailableError, match="never guessed"):
        attention_weights(_FusedAttention(), config, "my_fused_model")


class _ScaledLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_projection_that_is_not_a_plain_linear_layer_is_refused() -> None:
    r = run("llama")
    attention = r.module(r.attention_name(r.layer_names()[0]))
    original = attention.q_proj
    attention.q_proj = _ScaledLinear(64, 64, bias=False)
    try:
        with pytest.raises(UnavailableError, match="not a plain linear layer"):
            attention_weights(attention, r.model.config, "llama")
    finally:
        attention.q_proj = original


def test_head_count_that_disagrees_with_the_projection_is_refused() -> None:
    r = run("llama")
    attention = r.module(r.attention_name(r.layer_names()[0]))
    config = r.model.config
    old = config.num_attention_heads
    config.num_attention_heads = 8  # q_proj holds 4 heads of 16
    try:
        with pytest.raises(UnavailableError, match="expected n_heads"):
            attention_weights(attention, config, "llama")
    finally:
        config.num_attention_heads = old


class _UpGatedMLP(nn.Module):
    """act applied to up_proj, not gate_proj: the generic rule must not accept it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_proj(x) * self.act_fn(self.up_proj(x)))


def test_generic_mlp_rule_is_checked_numerically() -> None:
    config = run("llama").model.config
    with pytest.raises(UnavailableError, match="does not compute"):
        mlp_weights(_UpGatedMLP(), config, "my_model")
    llama_mlp = run("llama").module("model.layers.0.mlp")
    generic = mlp_weights(llama_mlp, config, "my_llama_fork")
    assert "generic" in generic.layout and torch.equal(generic.W_gate, llama_mlp.gate_proj.weight.T)
    with pytest.raises(UnavailableError, match="not a known MLP layout"):
        mlp_weights(nn.Sequential(nn.Linear(8, 8)), config, "my_model")


def test_unknown_router_is_refused() -> None:
    r = run("mixtral")
    with pytest.raises(UnavailableError, match="not a plain nn.Linear") as info:
        moe_weights(r.module("model.layers.0.mlp"), r.model.config, "my_moe")
    assert info.value.name == "W_router"


def test_embedding_of_another_kind_is_refused() -> None:
    config = run("llama").model.config
    with pytest.raises(UnavailableError, match="W_E"):
        embedding_weights(nn.EmbeddingBag(10, 4), config, "my_model")
    with pytest.raises(UnavailableError, match="W_U"):
        unembedding_weights(nn.Identity(), config, "my_model")


def test_expand_kv_errors() -> None:
    w = torch.zeros(2, 8, 4)
    assert expand_kv(w, 6).shape == (6, 8, 4)
    with pytest.raises(ShapeError, match="cannot share 2 key/value heads"):
        expand_kv(w, 5)
    with pytest.raises(InputError, match="positive int"):
        expand_kv(w, 0)
    with pytest.raises(InputError, match="tensor"):
        expand_kv([1, 2], 2)  # type: ignore[arg-type]
    for dim in (3, -4, 1.0, True):
        with pytest.raises(InputError, match="dim must be an int"):
            expand_kv(w, 6, dim=dim)  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="heads at dim 1"):
        expand_kv(w, 6, dim=1)  # 8 heads there


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma2"])
def test_expand_kv_of_keys_and_values_equals_hfs_repeat_kv(family: str) -> None:
    """The keys/values a trace reads, expanded at dim=1, equal HF's own repeat_kv of them."""
    from uniterp import expand_kv as exported

    model = load_tiny(family)
    with torch.no_grad(), model.trace(PROMPTS[:2]):
        k = model.keys[0].save()
        v = model.values[0].save()
    repeat_kv = sys.modules[type(native_module(model).model.layers[0].self_attn).__module__].repeat_kv
    groups = model.num_heads // k.shape[1]
    assert groups > 1, "the tiny model is meant to group its key/value heads"
    for t in (k, v):
        expanded = exported(t, model.num_heads, dim=1)
        assert expanded.shape[1] == model.num_heads
        assert torch.equal(expanded, repeat_kv(t, groups))
        assert torch.equal(exported(t, model.num_heads, dim=-3), expanded)


def test_wrong_module_arguments_are_input_errors() -> None:
    config = run("llama").model.config
    with pytest.raises(InputError, match="attention nn.Module"):
        attention_weights("self_attn", config, "llama")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="MLP nn.Module"):
        mlp_weights(None, config, "llama")  # type: ignore[arg-type]
