"""Weights on the model (``model.W_Q[i]``, ``model.W_U``) and check_internals, against the native modules."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from uniterp import InputError, LayerIndexError, StandardizedTransformer, UnavailableError
from uniterp._cache_checks import check_internals
from uniterp._weight_views import (
    ATTENTION_WEIGHTS,
    MLP_WEIGHTS,
    MODEL_WEIGHTS,
    LayerWeights,
    WeightViews,
    layer_weight,
    model_weight,
    weight_support,
)
from uniterp.testing import TINY_FAMILIES, tiny_model_path

from conftest import load_tiny

MOE = {"mixtral", "qwen2_moe", "qwen3_moe"}
SANDWICH = {"gemma2", "gemma3_text", "olmo2"}


Model = StandardizedTransformer
assert issubclass(Model, WeightViews)


_MODELS: dict[str, tuple[Model, torch.nn.Module]] = {}


def _pair(family: str) -> tuple[Model, torch.nn.Module]:
    if family not in _MODELS:
        path = tiny_model_path(family)
        _MODELS[family] = (Model(path), AutoModelForCausalLM.from_pretrained(path).eval())
    return _MODELS[family]


def test_llama_weights_by_hand() -> None:
    model, hf = _pair("llama")
    attn = hf.model.layers[1].self_attn
    heads, kv, d, hidden = 4, 2, 16, 64
    assert torch.equal(model.W_Q[1], attn.q_proj.weight.T.reshape(hidden, heads, d).transpose(0, 1))
    assert torch.equal(model.W_K[-2], attn.k_proj.weight.T.reshape(hidden, kv, d).transpose(0, 1))
    assert torch.equal(model.W_V[1], attn.v_proj.weight.T.reshape(hidden, kv, d).transpose(0, 1))
    assert torch.equal(model.W_O[1], attn.o_proj.weight.T.reshape(heads, d, hidden))
    assert torch.equal(model.b_O[1], torch.zeros(hidden))  # no bias: zeros
    mlp = hf.model.layers[2].mlp
    assert torch.equal(model.W_in[-1], mlp.up_proj.weight.T)
    assert torch.equal(model.W_gate[2], mlp.gate_proj.weight.T)
    assert torch.equal(model.W_out[2], mlp.down_proj.weight.T)
    assert torch.equal(model.W_U, hf.lm_head.weight.T)
    assert torch.equal(model.b_U, torch.zeros(hf.config.vocab_size))
    assert torch.equal(model.W_E, hf.model.embed_tokens.weight)
    assert model.W_O.stack().shape == (3, heads, d, hidden)
    assert torch.equal(model.W_O.stack()[1], model.W_O[1])


def test_gpt2_fused_weights_by_hand() -> None:
    model, hf = _pair("gpt2")
    attn = hf.transformer.h[0].attn
    w = attn.c_attn.weight  # Conv1D: (in, 3 * out) = [q | k | v]
    assert torch.equal(model.W_K[0], w[:, 64:128].reshape(64, 4, 16).transpose(0, 1))
    assert torch.equal(model.b_V[0], attn.c_attn.bias[128:].reshape(4, 16))
    assert torch.equal(model.W_O[0], attn.c_proj.weight.reshape(4, 16, 64))
    assert torch.equal(model.W_in[0], hf.transformer.h[0].mlp.c_fc.weight)
    assert torch.equal(model.W_pos, hf.transformer.wpe.weight)
    with pytest.raises(UnavailableError, match=r"'W_gate\[0\]'.*not gated"):
        model.W_gate[0]


def test_opt_mlp_on_the_decoder_layer() -> None:
    model, hf = _pair("opt")
    layer = hf.model.decoder.layers[2]
    assert torch.equal(model.W_in[2], layer.fc1.weight.T)
    assert torch.equal(model.b_out[2], layer.fc2.bias)
    assert torch.equal(
        model.W_pos, hf.model.decoder.embed_positions.weight[2:]
    )  # OPT's table starts 2 rows in


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_has_its_weights_or_says_why(family: str) -> None:
    model = load_tiny(family)
    entries = {e.name: e for e in weight_support(model)}
    assert set(entries) == {*ATTENTION_WEIGHTS, *MLP_WEIGHTS, *MODEL_WEIGHTS}
    assert entries["W_O"].layers == tuple(range(model.num_layers))
    assert entries["W_U"].available and entries["W_E"].available
    if family in MOE:
        assert entries["W_in"].layers == ()
        assert all("mixture of experts" in why for why in entries["W_in"].unavailable.values())
    else:
        assert entries["W_in"].layers == tuple(range(model.num_layers))
        assert layer_weight(model, "W_out", -1).shape[-1] == model.hidden_size
    assert entries["W_pos"].available == (family in {"gpt2", "gpt_bigcode", "opt"})
    n_kv = layer_weight(model, "W_K", 0).shape[0]
    assert layer_weight(model, "W_Q", 0).shape == (model.num_heads, model.hidden_size, model.head_dim)
    assert model.num_heads % n_kv == 0


def test_hybrid_layers_without_attention() -> None:
    model = Model(tiny_model_path("jamba"))
    attention_layers = set(model.support()["attentions_output"].layers)
    assert attention_layers and len(attention_layers) < model.num_layers
    for layer in range(model.num_layers):
        assert model.W_Q.available(layer) == (layer in attention_layers)
    mamba = next(i for i in range(model.num_layers) if i not in attention_layers)
    assert "no attention" in model.W_O.unavailable()[mamba]
    with pytest.raises(UnavailableError, match=rf"not every layer has W_O \(layers \[{mamba}"):
        model.W_O.stack()


def test_weights_are_read_once_and_refreshed_on_request() -> None:
    model, _ = _pair("falcon")  # grouped fused query_key_value: the split is a fresh tensor
    first = model.W_K[0]
    assert model.W_K[0] is first
    model.refresh_weights()
    assert model.W_K[0] is not first and torch.equal(model.W_K[0], first)
    assert isinstance(model.W_K, LayerWeights) and "3 layers of falcon" in repr(model.W_K)
    assert model.weight_support()[0].name == "W_Q"


def test_bad_indices_and_names_are_refused() -> None:
    model, _ = _pair("llama")
    with pytest.raises(LayerIndexError, match=r"W_Q\[3\].*valid: -3 to 2"):
        model.W_Q[3]
    with pytest.raises(LayerIndexError):
        model.W_O["1"]  # type: ignore[index]
    with pytest.raises(InputError, match="not a per-layer weight"):
        layer_weight(model, "W_X", 0)
    with pytest.raises(InputError, match="not a whole-model weight"):
        model_weight(model, "W_Q")
    with pytest.raises(UnavailableError, match="'W_pos' is unavailable: positions enter through rotary"):
        _ = model.W_pos
    with pytest.raises(UnavailableError, match=r"'W_in\[0\]'.*mixture of experts"):
        _pair("mixtral")[0].W_in[0]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_check_internals(family: str) -> None:
    items = {item.name: item for item in check_internals(load_tiny(family))}
    expected_skips = {"mixer_states == the state a plain forward leaves"}  # softmax attention only
    if family in MOE:
        expected_skips.add("mlp_neurons @ W_out + b_out == down projection")
    if family in SANDWICH:
        expected_skips.add("stack_head_results + b_O == attentions_output")
    assert {name for name, item in items.items() if item.status == "skipped"} == expected_skips
    assert all(item.status == "passed" for name, item in items.items() if name not in expected_skips), items
    for name in expected_skips:
        assert items[name].detail  # the reason


def test_check_internals_reports_a_block_that_does_not_add_up() -> None:
    # Bloom with the residual taken after the norm: the probe finds no additive layout, so the
    # decomposition is refused and the check says why (skipped, not passed)
    model = StandardizedTransformer(tiny_model_path("bloom", apply_residual_connection_post_layernorm=True))
    assert model.binding.block == "unknown"
    items = {item.name: item for item in check_internals(model)}
    refused = items["decompose_resid adds up to the residual stream"]
    assert refused.status == "skipped" and "do not add up" in refused.detail
    # the same blocks under a binding that claims the sum: the check fails instead
    model._binding = dataclasses.replace(model.binding, block="sequential")
    items = {item.name: item for item in check_internals(model)}
    failed = items["decompose_resid adds up to the residual stream"]
    assert failed.status == "failed" and "do not add up" in failed.detail
    post_norm = StandardizedTransformer(tiny_model_path("opt", do_layer_norm_before=False))
    items = {item.name: item for item in check_internals(post_norm)}
    assert items["decompose_resid adds up to the residual stream"].status == "skipped"
    assert "post-norm" in items["decompose_resid adds up to the residual stream"].detail
    assert items["head_outputs @ W_O + b_O == output projection"].status == "passed"


@pytest.mark.parametrize("family", ["jamba", "recurrent_gemma", "minimax", "zamba2"])
def test_check_internals_compares_the_mixer_states(family: str) -> None:
    items = {item.name: item for item in check_internals(load_tiny(family))}
    item = items["mixer_states == the state a plain forward leaves"]
    assert item.status == "passed" and item.detail.endswith("max |diff| 0"), item
