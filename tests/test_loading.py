"""Loading: by path (lazily), from a loaded module, with loading keywords passed through."""

from __future__ import annotations

import pytest
import torch

from uniterp import InputError, StandardizedTransformer
from uniterp.testing import tiny_model_path

from conftest import PROMPTS
from reference import encode


def test_load_by_path_is_lazy_and_validated() -> None:
    model = StandardizedTransformer(tiny_model_path("llama"))
    assert not model.dispatched  # the probe ran on fake tensors: no weights loaded
    assert model._binding is not None and model.binding.layout.probed_with == "scan"
    with torch.no_grad(), model.trace(PROMPTS):
        model.layers_output[0].save()
    assert model.dispatched


def test_check_on_load_can_be_turned_off() -> None:
    model = StandardizedTransformer(tiny_model_path("gpt2"), check_on_load=False)
    assert model._binding is None
    with torch.no_grad(), model.trace(PROMPTS):
        out = model.layers_output[-1].save()
    assert model._binding is not None and out.shape[-1] == 64


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "falcon", "opt", "qwen3_moe", "bloom"])
def test_bfloat16_is_exact_and_steering_casts(family: str) -> None:
    model = StandardizedTransformer(tiny_model_path(family), dtype=torch.bfloat16)
    result = model.check()
    assert result.passed, str(result)
    assert model._module.dtype == torch.bfloat16
    vector = torch.ones(model.hidden_size, dtype=torch.float64)
    with torch.no_grad(), model.trace(PROMPTS):
        before = model.layers_output[0].clone().save()
        model.steer(0, vector, factor=2.0)
        after = model.layers_output[0].save()
    assert after.dtype == torch.bfloat16
    expected = (before.float() + 2.0).to(torch.bfloat16)
    assert torch.equal(after, expected)


def test_from_a_loaded_model() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_path("qwen3")
    hf = AutoModelForCausalLM.from_pretrained(path)
    model = StandardizedTransformer(hf, tokenizer=AutoTokenizer.from_pretrained(path))
    assert model.dispatched and model._module is hf
    assert model.check().passed
    # the tokenizer is found next to a model loaded from a local folder
    assert StandardizedTransformer(hf).tokenizer is not None
    with torch.no_grad():
        reference = hf(**encode(model, PROMPTS)).logits
        with model.trace(PROMPTS):
            logits = model.logits.save()
    assert torch.equal(logits, reference)


def test_loaded_model_without_a_tokenizer_source() -> None:
    from transformers import LlamaForCausalLM

    from uniterp.testing import tiny_config

    hf = LlamaForCausalLM(tiny_config("llama"))
    with pytest.raises(InputError, match="tokenizer"):
        StandardizedTransformer(hf)


def test_loading_keywords_pass_through() -> None:
    model = StandardizedTransformer(tiny_model_path("llama"), attn_implementation="eager", device_map="cpu")
    assert model.attn_implementation == "eager"
    assert model.check().passed
    assert model.kwargs.get("trust_remote_code") is False


def test_right_padding_is_reset_to_left(caplog: pytest.LogCaptureFixture) -> None:
    model = StandardizedTransformer(tiny_model_path("llama"))
    model.tokenizer.padding_side = "right"
    with caplog.at_level("WARNING", logger="uniterp"), torch.no_grad():
        with model.trace(["hi", "The Eiffel Tower is in the city of"]):
            probs = model.next_token_probs.save()
        with model.trace(["hi"]):
            alone = model.next_token_probs.save()
    assert "left-padded" in caplog.text
    torch.testing.assert_close(probs[0], alone[0], rtol=1e-4, atol=1e-5)
