"""Activation patching sweeps against a brute-force loop on plain HF models (one forward per index)."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

from uniterp import InputError, UnavailableError
from uniterp.metrics import logit_diff
from uniterp.patching import (
    patch_attention_outputs,
    patch_heads,
    patch_heads_by_position,
    patch_mlp_outputs,
    patch_residual,
    patch_sweep,
)

from conftest import load_tiny
from grad_reference import brute_force_sweep

PATCH_FAMILIES = ["gpt2", "llama", "qwen2", "gemma2", "gpt_neox", "opt", "mixtral", "falcon", "bloom", "phi"]
CLEAN, CORRUPT = ["The capital of France is"], ["The capital of Japan is"]
TWO_CLEAN = ["The capital of France is", "The capital of Japan is"]
TWO_CORRUPT = ["The capital of Japan is", "The capital of France is"]


def raw_metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, 5] - logits[:, -1, 7] + 0.5 * logits[:, -2, 11]


def _check(result, family, model, clean, corrupted, metric, site, mode="denoise") -> None:
    axes = result.axes
    layers = result.labels.get("layer", [])
    index_sets = []
    for combo in itertools.product(*[result.labels[a] for a in axes]):
        index = dict(zip(axes, combo))
        layer = index.pop("layer")
        index_sets.append((layer, index))
    want = brute_force_sweep(family, model, clean, corrupted, metric, site, layers, index_sets, mode)
    torch.testing.assert_close(result.values.flatten(), torch.tensor(want), atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", PATCH_FAMILIES)
def test_residual_attention_and_mlp_sweeps_equal_the_brute_force_loop(
    family: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = load_tiny(family)
    caplog.set_level(logging.INFO, logger="uniterp")
    r = patch_residual(model, TWO_CLEAN, TWO_CORRUPT, raw_metric, batch_size=16)
    assert r.values.shape == (model.num_layers, 7) and r.axes == ("layer", "position")
    _check(r, family, model, TWO_CLEAN, TWO_CORRUPT, raw_metric, "layers_output")
    a = patch_attention_outputs(model, CLEAN, CORRUPT, raw_metric)
    _check(a, family, model, CLEAN, CORRUPT, raw_metric, "attentions_output")
    m = patch_mlp_outputs(model, CLEAN, CORRUPT, raw_metric, mode="noise")
    _check(m, family, model, CLEAN, CORRUPT, raw_metric, "mlps_output", mode="noise")
    assert "running every layer" not in caplog.text  # the sweeps skipped the early layers


def test_a_model_whose_layers_share_state_is_swept_without_skipping(caplog: pytest.LogCaptureFixture) -> None:
    model = load_tiny("llama")
    layers = model._module.model.layers
    state: dict[str, torch.Tensor] = {}
    # layer 0 hands layer 2 something besides its output: skipping layer 0 would lose it
    first = layers[0].register_forward_hook(
        lambda m, a, out: state.__setitem__("x", out[:, :1].detach().clone())
    )
    last = layers[2].register_forward_hook(lambda m, a, out: out + state["x"])
    caplog.set_level(logging.INFO, logger="uniterp")
    try:
        swept = patch_residual(model, CLEAN, CORRUPT, raw_metric, batch_size=7)
        loop = torch.empty_like(swept.values)
        clean: list[torch.Tensor] = []
        with torch.no_grad():
            with model.trace(CLEAN):
                for layer in range(3):
                    clean.append(model.layers_output[layer].save())
            for layer in range(3):
                for p in range(7):
                    with model.trace(CORRUPT):
                        h = model.layers_output[layer].clone()
                        h[:, p] = clean[layer][:, p]
                        model.layers_output[layer] = h
                        value = raw_metric(model.logits).save()
                    loop[layer, p] = value.sum()
    finally:
        first.remove()
        last.remove()
    assert "running every layer" in caplog.text
    torch.testing.assert_close(swept.values, loop, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", PATCH_FAMILIES)
def test_head_sweeps_equal_the_brute_force_loop(family: str) -> None:
    model = load_tiny(family)
    metric = logit_diff(model, 5, 7)
    h = patch_heads(model, TWO_CLEAN, TWO_CORRUPT, metric, batch_size=5)
    assert h.values.shape == (model.num_layers, model.num_heads)
    _check(h, family, model, TWO_CLEAN, TWO_CORRUPT, lambda lg: lg[:, -1, 5] - lg[:, -1, 7], "head_outputs")
    hp = patch_heads_by_position(model, CLEAN, CORRUPT, raw_metric, positions=[0, 3, -1], layers=[0, 2])
    assert hp.values.shape == (2, model.num_heads, 3) and hp.labels["position"] == [0, 3, 6]
    _check(hp, family, model, CLEAN, CORRUPT, raw_metric, "head_outputs")


def test_results_know_their_runs() -> None:
    model = load_tiny("llama")
    r = patch_residual(model, CLEAN, CORRUPT, raw_metric)
    base = brute_force_sweep("llama", model, CLEAN, CORRUPT, raw_metric, "layers_output", [0], [])
    assert base == []
    # patching every position of the last layer's output restores the clean run exactly
    full = patch_sweep(model, CLEAN, CORRUPT, raw_metric, "layers_output", over=("layer",))
    assert abs(float(full.values[-1]) - full.clean_metric) < 1e-5
    assert abs(r.clean_metric - full.clean_metric) < 1e-6
    torch.testing.assert_close(r.normalized()[:, 0], torch.zeros(model.num_layers), atol=1e-5, rtol=0)
    torch.testing.assert_close(r.effects, r.values - r.corrupted_metric)
    df = r.to_dataframe()
    assert list(df.columns) == ["layer", "position", "value"] and len(df) == r.values.numel()
    fig = r.plot(title="t")
    assert fig.data[0].z is not None


def test_a_prompt_alone_equals_the_prompt_in_a_padded_batch() -> None:
    model = load_tiny("qwen2")
    clean = ["The capital of France is", "hello world"]
    corrupted = ["The capital of Japan is", "one two three"]
    assert len(model.tokenizer(clean[1])["input_ids"]) == len(model.tokenizer(corrupted[1])["input_ids"])
    both = patch_heads(model, clean, corrupted, raw_metric)
    alone = [patch_heads(model, [c], [x], raw_metric) for c, x in zip(clean, corrupted)]
    torch.testing.assert_close(both.values, alone[0].values + alone[1].values, atol=2e-6, rtol=0)


def test_other_sites_and_axes() -> None:
    model = load_tiny("qwen2")  # grouped keys and values: 2 key/value heads for 4 query heads
    keys = patch_heads(model, CLEAN, CORRUPT, raw_metric, site="keys")
    assert keys.values.shape == (model.num_layers, model.num_kv_heads)
    tl = patch_sweep(model, CLEAN, CORRUPT, raw_metric, "attn.hook_z", over=("layer", "head"))
    direct = patch_heads(model, CLEAN, CORRUPT, raw_metric)
    torch.testing.assert_close(tl.values, direct.values, atol=0, rtol=0)
    one = patch_sweep(model, CLEAN, CORRUPT, raw_metric, "blocks.1.hook_resid_post", over=("position",))
    res = patch_residual(model, CLEAN, CORRUPT, raw_metric)
    torch.testing.assert_close(one.values, res.values[1], atol=1e-6, rtol=0)
    emb = patch_sweep(model, CLEAN, CORRUPT, raw_metric, "token_embeddings", over=("position",))
    assert emb.values.shape == (7,)
    neurons = patch_sweep(model, CLEAN, CORRUPT, raw_metric, "mlp_neurons.0", over=("neuron",), heads=[0, 5])
    assert neurons.values.shape == (2,)


def test_bad_inputs_are_refused() -> None:
    model = load_tiny("gpt2")
    with pytest.raises(InputError, match="7 tokens.*2"):
        patch_residual(model, CLEAN, ["one two"], raw_metric)
    with pytest.raises(InputError, match="same number of tokens"):
        patch_residual(model, TWO_CLEAN[:1] + ["hello world"], CORRUPT + ["one two three"], raw_metric)
    with pytest.raises(InputError, match="1 clean prompts and 2"):
        patch_residual(model, CLEAN, TWO_CORRUPT, raw_metric)
    with pytest.raises(InputError, match="empty"):
        patch_residual(model, [], [], raw_metric)
    with pytest.raises(InputError, match="returned shape"):
        patch_residual(model, CLEAN, CORRUPT, lambda lg: lg[:, -1])
    with pytest.raises(InputError, match="not a per-layer value"):
        patch_sweep(model, CLEAN, CORRUPT, raw_metric, "layer_output.1", over=("position",))
    with pytest.raises(UnavailableError, match="enable_attention_probs"):
        patch_heads(model, CLEAN, CORRUPT, raw_metric, site="attention_probabilities")
    with pytest.raises(UnavailableError, match="no rotary"):
        patch_heads(model, CLEAN, CORRUPT, raw_metric, site="queries_pre_rotary")
    with pytest.raises(InputError, match="has no head or neuron axis"):
        patch_sweep(model, CLEAN, CORRUPT, raw_metric, "layers_output", over=("layer", "head"))
    with pytest.raises(InputError, match="over must be"):
        patch_sweep(model, CLEAN, CORRUPT, raw_metric, "layers_output", over=("layers",))
    with pytest.raises(InputError, match="add 'layer'"):
        patch_sweep(model, CLEAN, CORRUPT, raw_metric, "layers_output", over=("position",))
    with pytest.raises(InputError, match="drop 'layer'"):
        patch_sweep(model, CLEAN, CORRUPT, raw_metric, "layers_output.1", over=("layer",))
    with pytest.raises(InputError, match="position 9"):
        patch_residual(model, CLEAN, CORRUPT, raw_metric, positions=[9])
    with pytest.raises(InputError, match="head 7"):
        patch_heads(model, CLEAN, CORRUPT, raw_metric, heads=[7])
    with pytest.raises(InputError, match="mode"):
        patch_residual(model, CLEAN, CORRUPT, raw_metric, mode="both")
    with pytest.raises(InputError, match="batch_size"):
        patch_residual(model, CLEAN, CORRUPT, raw_metric, batch_size=0)
    with pytest.raises(InputError, match="cannot be patched"):
        patch_sweep(model, CLEAN, CORRUPT, raw_metric, "blocks.1.ln2.hook_scale", over=("position",))
