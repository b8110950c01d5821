"""The TransformerLens conventions the cache follows, as hand-written facts and hand computations.

TransformerLens is not a dependency; these tests write down what its hook names mean
(shapes, orders, formulas, labels) and check the cache against computations made
from the native HF modules. Conventions checked here, on GPT-2 and Llama:

- ``hook_q``/``hook_k``/``hook_v``/``hook_z``: ``(batch, pos, head, d_head)``; keys and
  values keep their grouped heads (``n_kv_heads``); ``hook_q``/``hook_k`` are before the
  rotary embedding, ``hook_rot_q``/``hook_rot_k`` after it;
- ``hook_attn_scores``/``hook_pattern``: ``(batch, head, query_pos, key_pos)``, scores are
  ``q . k / sqrt(d_head)``, the pattern their causal softmax, ``z`` the pattern times ``v``;
- ``ln*.hook_scale``: ``(batch, pos, 1)``, ``sqrt(var + eps)`` (centred for LayerNorm);
  ``hook_normalized``: the input centred and divided by it, before the gain (as
  TransformerLens's folded ``LNPre``/``RMSPre`` and its ``RMSNorm``);
- ``hook_resid_mid = hook_resid_pre + hook_attn_out``, ``hook_resid_post = hook_resid_mid +
  hook_mlp_out``;
- weights ``W_Q (n_heads, d_model, d_head)``, ``W_O (n_heads, d_head, d_model)``,
  ``W_in (d_model, d_mlp)``, ``W_U (d_model, d_vocab)``, ``W_E (d_vocab, d_model)``;
  TransformerLens's ``W_K`` repeats grouped heads (query head ``h`` reads kv head
  ``h // (n_heads // n_kv_heads)``), uniterp's keeps them grouped (`expand_kv` repeats);
- labels: ``"{l}_pre"``, ``"{l}_mid"``, ``"final_post"``; ``"embed"``, ``"pos_embed"``,
  ``"{l}_attn_out"``, ``"{l}_mlp_out"``; ``"L{l}H{h}"``.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from uniterp import StandardizedTransformer
from uniterp._weights import expand_kv
from uniterp.cache import ActivationCache, run_with_cache
from uniterp.testing import tiny_model_path

PROMPT = "The Eiffel Tower is in the city of"
ATOL = 1e-5
_PAIRS: dict[str, tuple[StandardizedTransformer, torch.nn.Module]] = {}


def _pair(family: str) -> tuple[StandardizedTransformer, torch.nn.Module]:
    if family not in _PAIRS:
        path = tiny_model_path(family)
        model = StandardizedTransformer(path, enable_attention_probs=True)
        _PAIRS[family] = (
            model,
            AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval(),
        )
    return _PAIRS[family]


def _everything(model: StandardizedTransformer) -> ActivationCache:
    return run_with_cache(model, PROMPT, names=lambda name: True)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_shapes_and_orders(family: str) -> None:
    model, _ = _pair(family)
    cache = _everything(model)
    pos = cache.input_ids.shape[1]
    heads, kv, d, hidden = model.num_heads, model.num_kv_heads, model.head_dim, model.hidden_size
    assert cache["blocks.1.attn.hook_q"].shape == (1, pos, heads, d)
    assert cache["blocks.1.attn.hook_k"].shape == (1, pos, kv, d)
    assert cache["blocks.1.attn.hook_v"].shape == (1, pos, kv, d)
    assert cache["blocks.1.attn.hook_z"].shape == (1, pos, heads, d)
    assert cache["blocks.1.attn.hook_pattern"].shape == (1, heads, pos, pos)
    assert cache["blocks.1.attn.hook_attn_scores"].shape == (1, heads, pos, pos)
    assert cache["blocks.1.hook_resid_pre"].shape == (1, pos, hidden)
    assert cache["blocks.1.mlp.hook_post"].shape == (1, pos, model.binding.sizes.hidden_size * 2)
    assert cache["blocks.1.ln1.hook_scale"].shape == (1, pos, 1)
    assert cache["ln_final.hook_scale"].shape == (1, pos, 1)
    assert model.binding.sizes.num_layers == 3


def test_gpt2_attention_by_hand() -> None:
    model, hf = _pair("gpt2")
    cache = _everything(model)
    block = hf.transformer.h[1]
    with torch.no_grad():
        x = block.ln_1(cache["blocks.1.hook_resid_pre"])
        qkv = block.attn.c_attn(x)  # [q | k | v], each 4 heads of 16
        q, k, v = (qkv[..., i * 64 : (i + 1) * 64].unflatten(-1, (4, 16)) for i in range(3))
    torch.testing.assert_close(cache["blocks.1.attn.hook_q"], q, rtol=0, atol=ATOL)
    torch.testing.assert_close(cache["blocks.1.attn.hook_k"], k, rtol=0, atol=ATOL)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(16)
    causal = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
    torch.testing.assert_close(cache["blocks.1.attn.hook_attn_scores"][..., causal], scores[..., causal])
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    torch.testing.assert_close(cache["blocks.1.attn.hook_pattern"], pattern, rtol=0, atol=ATOL)
    z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
    torch.testing.assert_close(cache["blocks.1.attn.hook_z"], z, rtol=0, atol=ATOL)
    with torch.no_grad():
        out = block.attn.c_proj(z.flatten(-2))
    torch.testing.assert_close(cache["blocks.1.hook_attn_out"], out, rtol=0, atol=ATOL)
    # TransformerLens's per-head result and W_O: sum_h z[..., h, :] @ W_O[h] + b_O == hook_attn_out
    w_o = block.attn.c_proj.weight.reshape(4, 16, 64)  # (n_heads, d_head, d_model)
    by_hand = torch.einsum("bqhd,hdm->bqm", z, w_o) + block.attn.c_proj.bias
    torch.testing.assert_close(by_hand, cache["blocks.1.hook_attn_out"], rtol=0, atol=ATOL)
    heads = cache.stack_head_results(layer=2)[4:8]  # layer 1's heads
    torch.testing.assert_close(heads.sum(0) + block.attn.c_proj.bias, out, rtol=0, atol=ATOL)


def test_gpt2_residual_and_norms_by_hand() -> None:
    model, hf = _pair("gpt2")
    cache = _everything(model)
    pre, mid, post = (cache[f"blocks.1.hook_resid_{k}"] for k in ("pre", "mid", "post"))
    torch.testing.assert_close(mid, pre + cache["blocks.1.hook_attn_out"], rtol=0, atol=ATOL)
    torch.testing.assert_close(post, mid + cache["blocks.1.hook_mlp_out"], rtol=0, atol=ATOL)
    centred = pre - pre.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(cache["blocks.1.ln1.hook_scale"], scale, rtol=0, atol=1e-6)
    torch.testing.assert_close(cache["blocks.1.ln1.hook_normalized"], centred / scale, rtol=0, atol=ATOL)
    ln = hf.transformer.h[1].ln_1
    with torch.no_grad():
        torch.testing.assert_close(centred / scale * ln.weight + ln.bias, ln(pre), rtol=0, atol=ATOL)
    _, labels = cache.accumulated_resid(incl_mid=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "2_pre", "2_mid", "final_post"]
    _, labels = cache.decompose_resid(layer=1, return_labels=True)
    assert labels == ["embed", "pos_embed", "0_attn_out", "0_mlp_out"]
    _, labels = cache.stack_head_results(layer=1, return_labels=True)
    assert labels == ["L0H0", "L0H1", "L0H2", "L0H3"]


def test_llama_rotary_queries_by_hand() -> None:
    model, hf = _pair("llama")
    cache = _everything(model)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = hf.model.layers[1].self_attn
    positions = torch.arange(cache.input_ids.shape[1]).unsqueeze(0)
    with torch.no_grad():
        x = hf.model.layers[1].input_layernorm(cache["blocks.1.hook_resid_pre"])
        q = attn.q_proj(x).unflatten(-1, (4, 16))  # (batch, pos, head, d_head)
        k = attn.k_proj(x).unflatten(-1, (2, 16))  # grouped: 2 kv heads
        cos, sin = hf.model.rotary_emb(x, positions)
        rot_q, rot_k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    torch.testing.assert_close(cache["blocks.1.attn.hook_q"], q, rtol=0, atol=ATOL)
    torch.testing.assert_close(cache["blocks.1.attn.hook_k"], k, rtol=0, atol=ATOL)
    torch.testing.assert_close(cache["blocks.1.attn.hook_rot_q"], rot_q.transpose(1, 2), rtol=0, atol=ATOL)
    torch.testing.assert_close(cache["blocks.1.attn.hook_rot_k"], rot_k.transpose(1, 2), rtol=0, atol=ATOL)
    # scores from the rotated queries and the grouped keys, query head h reading kv head h // 2
    expanded = rot_k.repeat_interleave(2, dim=1)
    scores = torch.einsum("bhqd,bhkd->bhqk", rot_q, expanded) / math.sqrt(16)
    causal = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
    torch.testing.assert_close(cache["blocks.1.attn.hook_attn_scores"][..., causal], scores[..., causal])
    # RMS norm: scale sqrt(mean(x^2) + eps), no centring
    pre = cache["blocks.1.hook_resid_pre"]
    scale = (pre.pow(2).mean(-1, keepdim=True) + hf.config.rms_norm_eps).sqrt()
    torch.testing.assert_close(cache["blocks.1.ln1.hook_scale"], scale, rtol=0, atol=1e-6)


def test_weight_shapes_and_grouped_heads() -> None:
    from uniterp._weight_views import layer_weight, model_weight

    model, hf = _pair("llama")
    assert layer_weight(model, "W_Q", 0).shape == (4, 64, 16)  # (n_heads, d_model, d_head)
    assert layer_weight(model, "W_K", 0).shape == (2, 64, 16)  # grouped, not repeated
    assert layer_weight(model, "W_O", 0).shape == (4, 16, 64)  # (n_heads, d_head, d_model)
    assert layer_weight(model, "W_in", 0).shape == (64, 128)  # (d_model, d_mlp)
    assert model_weight(model, "W_U").shape == (64, 512)  # (d_model, d_vocab)
    assert model_weight(model, "W_E").shape == (512, 64)  # (d_vocab, d_model)
    grouped = layer_weight(model, "W_K", 0)
    repeated = expand_kv(grouped, 4)  # TransformerLens's W_K
    for head in range(4):
        assert torch.equal(repeated[head], grouped[head // 2])
    gpt2, _ = _pair("gpt2")
    assert model_weight(gpt2, "W_pos").shape == (256, 64)  # (n_ctx, d_model)
