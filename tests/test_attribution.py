"""Attribution patching (AtP, QK fix, GradDrop) against estimates computed by hand on plain HF models."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

from uniterp import InputError, StandardizedTransformer, UnavailableError
from uniterp.attribution import attribution_patching
from uniterp.metrics import logit_diff
from uniterp.patching import patch_heads, patch_residual
from uniterp.testing import tiny_model_path

from conftest import load_tiny
from grad_reference import hf_model, native_place, native_values, reference_gradients
from reference import encode

ATP_FAMILIES = ["gpt2", "llama", "qwen2", "gemma2", "gpt_neox", "opt", "mixtral", "falcon", "bloom", "phi"]
CLEAN, CORRUPT = ["The capital of France is"], ["The capital of Japan is"]
TWO_CLEAN = ["The capital of France is", "The capital of Japan is"]
TWO_CORRUPT = ["The capital of Japan is", "The capital of France is"]


def raw_metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, 5] - logits[:, -1, 7] + 0.5 * logits[:, -2, 11]


def hand_estimate(
    family: str, model: Any, clean: list[str], corrupted: list[str], site: str, mode: str = "denoise"
):
    """Per layer ``(source - base) * dM/dvalue`` at the base run, elementwise: list of ``(n, ...)`` tensors."""
    hf = hf_model(family)
    source, base = (clean, corrupted) if mode == "denoise" else (corrupted, clean)
    layers = list(range(model.num_layers))
    places = [native_place(family, site, layer) for layer in layers]
    src = native_values(family, hf, encode(model, source), places, model.num_heads, site)
    bas = native_values(family, hf, encode(model, base), places, model.num_heads, site)
    grads = reference_gradients(family, model, base, raw_metric, [(site, layer) for layer in layers])
    return [(s - b) * g for s, b, g in zip(src, bas, grads)]


@pytest.mark.parametrize("family", ATP_FAMILIES)
def test_atp_equals_the_first_order_estimate_by_hand(family: str) -> None:
    model = load_tiny(family)
    res = attribution_patching(model, TWO_CLEAN, TWO_CORRUPT, raw_metric, ["layers_output", "head_outputs"])
    terms = hand_estimate(family, model, TWO_CLEAN, TWO_CORRUPT, "layers_output")
    want = torch.stack([t.sum((0, 2)) for t in terms])  # (layer, position)
    assert res["layers_output"].axes == ("layer", "position")
    torch.testing.assert_close(res["layers_output"].values, want, atol=1e-5, rtol=1e-4)
    heads = hand_estimate(family, model, TWO_CLEAN, TWO_CORRUPT, "head_outputs")
    want = torch.stack([t.sum((0, 3)) for t in heads])  # (layer, position, head)
    assert res["head_outputs"].axes == ("layer", "position", "head")
    torch.testing.assert_close(res["head_outputs"].values, want, atol=1e-5, rtol=1e-4)
    by_head = attribution_patching(
        model, CLEAN, CORRUPT, raw_metric, "mlps_output", over=("layer",), mode="noise"
    )
    terms = hand_estimate(family, model, CLEAN, CORRUPT, "mlps_output", mode="noise")
    torch.testing.assert_close(by_head.values, torch.stack([t.sum() for t in terms]), atol=1e-5, rtol=1e-4)


def test_atp_tracks_activation_patching_on_the_embedded_model() -> None:
    model = StandardizedTransformer("uniterp-tiny")
    metric = logit_diff(model, " Paris", " Tokyo")
    clean, corrupted = "The capital of France is", "The capital of Japan is"
    sweep = patch_residual(model, clean, corrupted, metric)
    atp = attribution_patching(model, clean, corrupted, metric, "layers_output")
    assert atp.values.shape == sweep.values.shape
    assert atp.clean_metric == pytest.approx(sweep.clean_metric, abs=1e-4)
    assert atp.corrupted_metric == pytest.approx(sweep.corrupted_metric, abs=1e-4)
    # same sign and within a factor of two where patching matters; ~0 where it does not
    big = sweep.effects.abs() > 1.0
    assert big.sum() >= 6
    ratio = atp.values[big] / sweep.effects[big]
    assert bool((ratio > 0.5).all() and (ratio < 2.0).all()), ratio
    assert float(atp.values[~big].abs().max()) < 1.5
    heads = patch_heads(model, clean, corrupted, metric)
    atp_heads = attribution_patching(model, clean, corrupted, metric, "head_outputs", over=("layer", "head"))
    top = torch.topk(heads.effects.flatten(), 3).indices
    assert set(top.tolist()) <= set(torch.topk(atp_heads.values.flatten(), 5).indices.tolist())


# -- AtP*: the QK fix ------------------------------------------------------------------------------


class _Attention:
    """A hand-written eager attention (Llama's math) that patches one query or key and records the pattern."""

    layer: int | None = None
    patch: tuple[str, int, int, torch.Tensor] | None = None  # (what, head, position, source tensor)
    probs: torch.Tensor | None = None
    probe: torch.Tensor | None = None
    record: dict[str, torch.Tensor] = {}


def _hand_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float,
    dropout: float = 0.0,
    **_: Any,
):
    state = _Attention
    here = module.layer_idx == state.layer
    if here and state.patch is not None:
        what, head, position, source = state.patch
        if what == "q":
            query = query.clone()
            query[:, head, position] = source[:, head, position]
        else:
            key = key.clone()
            key[:, head, position] = source[:, head, position]
    if here:
        state.record["q"], state.record["k"] = query.detach(), key.detach()
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1)
    v = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : k.shape[-2]]
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    if here:
        state.probs = probs.detach()
        if state.probe is not None:
            probs = probs + state.probe
    return torch.matmul(probs, v).transpose(1, 2).contiguous(), probs


AttentionInterface.register("uniterp_test_qk", _hand_attention)
AttentionMaskInterface.register("uniterp_test_qk", eager_mask)


def _qk_reference(family: str, model: Any, layer: int, what: str) -> torch.Tensor:
    """Exact pattern change of each node, times dM/dA at the corrupted run: ``(heads, positions)``."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(
        tiny_model_path(family), attn_implementation="uniterp_test_qk"
    ).eval()
    state = _Attention
    state.layer, state.patch, state.probe = layer, None, None
    with torch.no_grad():
        hf(**encode(model, CLEAN))
    source = state.record["q" if what == "q" else "k"].clone()
    base_enc = encode(model, CORRUPT)
    with torch.no_grad():
        hf(**base_enc)
    base_probs = state.probs.clone()
    state.probe = torch.zeros_like(base_probs, requires_grad=True)
    with torch.enable_grad():
        grad = torch.autograd.grad(raw_metric(hf(**base_enc).logits).sum(), state.probe)[0]
    state.probe = None
    heads, positions = source.shape[1], source.shape[2]
    out = torch.zeros(heads, positions)
    for h in range(heads):
        for t in range(positions):
            state.patch = (what, h, t, source)
            with torch.no_grad():
                hf(**base_enc)
            out[h, t] = ((state.probs - base_probs) * grad).sum()
    state.patch = state.layer = None
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_qk_fix_equals_the_exact_pattern_change_times_the_gradient(family: str) -> None:
    model = StandardizedTransformer(tiny_model_path(family), enable_attention_probs=True)
    res = attribution_patching(
        model,
        CLEAN,
        CORRUPT,
        raw_metric,
        ["queries", "keys"],
        over=("layer", "head", "position"),
        qk_fix=True,
    )
    assert res["keys"].values.shape == (model.num_layers, model.num_kv_heads, 7)
    for layer in (0, model.num_layers - 1):
        want_q = _qk_reference(family, model, layer, "q")
        torch.testing.assert_close(res["queries"].values[layer], want_q, atol=1e-5, rtol=1e-4)
        want_k = _qk_reference(family, model, layer, "k")
        torch.testing.assert_close(res["keys"].values[layer], want_k, atol=1e-5, rtol=1e-4)
    # a whole head at once, and heads summed at a position
    whole = attribution_patching(
        model, CLEAN, CORRUPT, raw_metric, "keys", over=("layer", "head"), qk_fix=True
    )
    assert whole.values.shape == (model.num_layers, model.num_kv_heads)
    by_position = attribution_patching(
        model, CLEAN, CORRUPT, raw_metric, "queries", over=("layer", "position"), qk_fix=True
    )
    torch.testing.assert_close(by_position.values, res["queries"].values.sum(1), atol=1e-6, rtol=1e-5)


def test_qk_fix_refusals() -> None:
    plain = load_tiny("llama")
    with pytest.raises(UnavailableError, match="enable_attention_probs"):
        attribution_patching(plain, CLEAN, CORRUPT, raw_metric, "queries", qk_fix=True)
    with pytest.raises(InputError, match="qk_fix applies"):
        attribution_patching(plain, CLEAN, CORRUPT, raw_metric, "layers_output", qk_fix=True)
    # a cap small enough to bend the tiny model's scores (the check is numerical)
    gemma = StandardizedTransformer(
        tiny_model_path("gemma2", attn_logit_softcapping=0.02), enable_attention_probs=True
    )
    with pytest.raises(UnavailableError, match="soft-capped"):
        attribution_patching(gemma, CLEAN, CORRUPT, raw_metric, "keys", qk_fix=True)


# -- AtP*: GradDrop ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_graddrop_equals_estimates_with_each_block_dropped_by_hand(family: str) -> None:
    model = load_tiny(family)
    n_layers = model.num_layers
    res = attribution_patching(
        model,
        TWO_CLEAN,
        TWO_CORRUPT,
        raw_metric,
        "mlps_output",
        over=("layer", "position"),
        grad_drop=True,
        batch_size=4,
    )
    hf = hf_model(family)
    stack = native_place(family, "layers_output", 0)[0].rsplit(".", 1)[0]
    layers = list(range(n_layers))
    places = [native_place(family, "mlps_output", layer) for layer in layers]
    src = native_values(family, hf, encode(model, TWO_CLEAN), places, model.num_heads, "mlps_output")
    bas = native_values(family, hf, encode(model, TWO_CORRUPT), places, model.num_heads, "mlps_output")
    total = torch.zeros(n_layers, 7)
    for dropped in layers:
        block = hf.get_submodule(f"{stack}.{dropped}")

        def skip_only(_m: Any, args: Any, kwargs: Any, out: Any) -> Any:
            inp = args[0] if args else kwargs["hidden_states"]
            h = out[0] if isinstance(out, tuple) else out
            new = inp + (h - inp).detach()
            return (new, *out[1:]) if isinstance(out, tuple) else new

        handle = block.register_forward_hook(skip_only, with_kwargs=True)
        try:
            grads = reference_gradients(
                family, model, TWO_CORRUPT, raw_metric, [("mlps_output", i) for i in layers]
            )
        finally:
            handle.remove()
        for i in layers:
            per_prompt = ((src[i] - bas[i]) * grads[i]).sum(-1)  # (n, seq)
            total[i] += per_prompt.abs().sum(0)
    torch.testing.assert_close(res.values, total / (n_layers - 1), atol=1e-5, rtol=1e-4)
    assert res.method == "graddrop" and bool((res.values >= 0).all())


def test_neurons_and_padded_batches() -> None:
    model = load_tiny("llama")
    res = attribution_patching(model, TWO_CLEAN, TWO_CORRUPT, raw_metric, "mlp_neurons")
    assert res.axes == ("layer", "position", "neuron")
    terms = hand_estimate("llama", model, TWO_CLEAN, TWO_CORRUPT, "mlp_neurons")
    torch.testing.assert_close(res.values, torch.stack([t.sum(0) for t in terms]), atol=1e-5, rtol=1e-4)
    # prompts of different lengths, left-padded: each prompt's estimate as if alone
    clean, corrupted = (
        ["The capital of France is", "hello world"],
        ["The capital of Japan is", "one two three"],
    )
    both = attribution_patching(model, clean, corrupted, raw_metric, "head_outputs", over=("layer", "head"))
    alone = [
        attribution_patching(model, [c], [x], raw_metric, "head_outputs", over=("layer", "head"))
        for c, x in zip(clean, corrupted)
    ]
    torch.testing.assert_close(both.values, alone[0].values + alone[1].values, atol=1e-5, rtol=1e-4)


def test_bfloat16_models_run() -> None:
    model = StandardizedTransformer(tiny_model_path("llama"), dtype=torch.bfloat16)
    metric = logit_diff(model, 5, 7)
    atp = attribution_patching(model, CLEAN, CORRUPT, metric, "layers_output")
    sweep = patch_residual(model, CLEAN, CORRUPT, metric)
    assert atp.values.dtype == torch.float32 and torch.isfinite(atp.values).all()
    assert torch.isfinite(sweep.values).all()
    full = load_tiny("llama")
    torch.testing.assert_close(
        sweep.values, patch_residual(full, CLEAN, CORRUPT, metric).values, atol=0.1, rtol=0.1
    )


def test_other_names_give_the_same_nodes() -> None:
    model = load_tiny("llama")
    res = attribution_patching(
        model,
        CLEAN,
        CORRUPT,
        raw_metric,
        ["blocks.1.attn.hook_z", "head_outputs", "attn.hook_q", "queries_pre_rotary"],
    )
    assert res["blocks.1.attn.hook_z"].axes == ("position", "head")
    torch.testing.assert_close(
        res["blocks.1.attn.hook_z"].values, res["head_outputs"].values[1], atol=0, rtol=0
    )
    assert res["attn.hook_q"].axes == res["queries_pre_rotary"].axes == ("layer", "position", "head")
    torch.testing.assert_close(res["attn.hook_q"].values, res["queries_pre_rotary"].values, atol=1e-7, rtol=0)
    emb = attribution_patching(model, CLEAN, CORRUPT, raw_metric, "token_embeddings")
    assert emb.axes == ("position",) and emb.values.shape == (7,)
