"""Attention probabilities: located inside the attention forward, equal to HF's, writable."""

from __future__ import annotations

import pytest
import torch

from uniterp import StandardizedTransformer, UnavailableError
from uniterp.testing import TINY_FAMILIES, tiny_model_path

from conftest import PROMPTS
from reference import encode

_EAGER: dict[str, StandardizedTransformer] = {}


def eager(family: str) -> StandardizedTransformer:
    if family not in _EAGER:
        _EAGER[family] = StandardizedTransformer(tiny_model_path(family), enable_attention_probs=True)
    return _EAGER[family]


def _probabilities_and_reference(
    model: StandardizedTransformer,
) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
    """Every layer's probabilities read through uniterp, and HF's ``output_attentions``."""
    saved: list[torch.Tensor] = []
    with torch.no_grad(), model.trace(PROMPTS):
        for i in range(model.num_layers):
            saved.append(model.attention_probabilities[i].save())
    with torch.no_grad():
        reference = model._module(**encode(model, PROMPTS), output_attentions=True).attentions
    return saved, reference


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_probabilities_equal_hf_output_attentions(family: str) -> None:
    model = eager(family)
    assert model.attn_implementation == "eager"
    saved, reference = _probabilities_and_reference(model)
    assert len(reference) == model.num_layers
    batch, seq = encode(model, PROMPTS)["input_ids"].shape
    for i, (ours, theirs) in enumerate(zip(saved, reference)):
        assert ours.shape == (batch, model.num_heads, seq, seq), f"layer {i}: {ours.shape}"
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6, msg=f"{family} layer {i}")
        sums = ours.sum(-1)
        torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bloom", "falcon", "gemma2", "qwen3_moe"])
def test_writing_probabilities_reaches_the_output(family: str) -> None:
    model = eager(family)
    with torch.no_grad():
        with model.trace(PROMPTS):
            base = model.logits.save()
        with model.trace(PROMPTS):
            probs = model.attention_probabilities[1]
            uniform = torch.tril(torch.ones_like(probs))
            model.attention_probabilities[1] = uniform / uniform.sum(-1, keepdim=True)
            changed = model.logits.save()
        with model.trace(PROMPTS):
            model.attention_probabilities[1] = model.attention_probabilities[1].clone()
            same = model.logits.save()
    assert not torch.allclose(base, changed)
    assert torch.equal(base, same)


def test_probabilities_need_opting_in() -> None:
    model = StandardizedTransformer(tiny_model_path("llama"))
    with pytest.raises(UnavailableError, match="enable_attention_probs=True"):
        with model.trace(PROMPTS):
            model.attention_probabilities[0].save()
    report = model.support()
    assert not report["attention_probabilities"].available
    assert "enable_attention_probs=True" in report["attention_probabilities"].reason


def test_explicit_attention_implementation_is_overridden(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="uniterp"):
        model = StandardizedTransformer(
            tiny_model_path("gpt2"), enable_attention_probs=True, attn_implementation="sdpa"
        )
    assert model.attn_implementation == "eager"
    assert "needs eager attention" in caplog.text


def test_probabilities_out_of_range() -> None:
    from uniterp import LayerIndexError

    model = eager("gpt2")
    with pytest.raises(LayerIndexError, match="valid: -3 to 2"):
        with model.trace(PROMPTS):
            model.attention_probabilities[5].save()


def test_attention_sinks_rows_sum_to_at_most_one() -> None:
    model = StandardizedTransformer(tiny_model_path("gpt_oss"), enable_attention_probs=True)
    saved, reference = _probabilities_and_reference(model)
    for ours, theirs in zip(saved, reference):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        assert float(ours.sum(-1).max()) <= 1 + 1e-5
