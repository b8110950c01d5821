"""model.support(): availability per value and layer, with reasons; hybrids and state-space models."""

from __future__ import annotations

import pytest
import torch

from uniterp import StandardizedTransformer, UnavailableError
from uniterp.testing import TINY_FAMILIES, tiny_model_path

from conftest import PROMPTS, load_tiny


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tested_families_offer_every_value(family: str) -> None:
    report = load_tiny(family).support()
    for name in (
        "layers_input",
        "layers_output",
        "attentions_input",
        "attentions_output",
        "mlps_input",
        "mlps_output",
    ):
        assert report[name].everywhere, f"{family}: {name}"
    assert report["logits"].available and report["token_embeddings"].available
    text = str(report)
    assert family in text and "available on every layer" in text
    assert report.to_dict()["values"]["layers_output"]["layers"] == [0, 1, 2]


def test_state_space_model_refuses_attention_with_a_reason() -> None:
    model = StandardizedTransformer(tiny_model_path("mamba"))
    report = model.support()
    assert report["layers_output"].everywhere
    assert not report["attentions_output"].available
    reason = report["attentions_output"].unavailable[0]
    assert "softmax attention" in reason and "MambaMixer" in reason
    with pytest.raises(UnavailableError, match="MambaMixer"):
        with model.trace(PROMPTS):
            model.attentions_output[0].save()
    assert model.check().passed


def test_hybrid_stack_has_attention_on_some_layers_only() -> None:
    model = StandardizedTransformer(tiny_model_path("nemotron_h"), enable_attention_probs=True)
    report = model.support()
    attention_layers = report["attentions_output"].layers
    mlp_layers = report["mlps_output"].layers
    assert attention_layers and len(attention_layers) < model.num_layers
    assert mlp_layers and not set(mlp_layers) & set(attention_layers)
    assert report["layers_output"].everywhere
    assert report["attention_probabilities"].layers == attention_layers
    no_attention = next(i for i in range(model.num_layers) if i not in attention_layers)
    assert "has no attention" in report["attentions_output"].unavailable[no_attention]
    with pytest.raises(UnavailableError, match=f"attentions_output\\[{no_attention}\\]"):
        with model.trace(PROMPTS):
            model.attentions_output[no_attention].save()
    layer = attention_layers[0]
    assert model.layers[layer].self_attn is not None
    with torch.no_grad(), model.trace(PROMPTS):
        probs = model.attention_probabilities[layer].save()
    assert probs.shape[-1] == probs.shape[-2]
    assert model.check().passed


def test_encoder_style_model_used_as_decoder() -> None:
    model = StandardizedTransformer(tiny_model_path("bert"))
    report = model.support()
    assert report.block == "post_norm"
    assert report["mlps_output"].everywhere and report["attentions_output"].everywhere
    result = model.check()
    assert result.passed, str(result)
