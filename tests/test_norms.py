"""The residual between attention and MLP, and post-normed sub-block outputs, against plain hooks."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from uniterp import UnavailableError

from conftest import PROMPTS, model_and_reference
from reference import encode, hooks

TWO = PROMPTS[:2]

# Read off the HF modeling files: the norm whose input is the residual between attention and MLP.
MLP_NORM = {
    "llama": "post_attention_layernorm",
    "qwen3": "post_attention_layernorm",
    "mixtral": "post_attention_layernorm",
    "gpt2": "ln_2",
    "bloom": "post_attention_layernorm",
    "gemma2": "pre_feedforward_layernorm",
    "gemma3_text": "pre_feedforward_layernorm",
    "starcoder2": "post_attention_layernorm",
}
POST_NORMS = {
    "gemma2": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "gemma3_text": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "olmo2": ("post_attention_layernorm", "post_feedforward_layernorm"),
}
PARALLEL = ["gpt_neox", "gptj", "falcon", "phi", "cohere", "codegen"]


def _capture(hf: torch.nn.Module, model: Any, paths: dict[str, str]) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def grab(key: str, io: str) -> Any:
        def hook(_m: Any, args: Any, kwargs: Any, out: Any) -> None:
            value = (args[0] if args else kwargs["hidden_states"]) if io == "in" else out
            seen[key] = value.detach().clone()

        return hook

    with torch.no_grad(), hooks(hf, [(path, grab(key, key.split(":")[0])) for key, path in paths.items()]):
        hf(**encode(model, TWO))
    return seen


@pytest.mark.parametrize("family", sorted(MLP_NORM))
def test_residual_mid_is_the_input_of_the_mlp_norm(family: str) -> None:
    model, hf = model_and_reference(family)
    stack = model.binding.spec.layers
    seen = _capture(hf, model, {"in:1": f"{stack}.1.{MLP_NORM[family]}"})
    with torch.no_grad(), model.trace(TWO):
        mid = model.residual_mid[1].save()
    assert torch.equal(mid, seen["in:1"])
    assert model.check().passed


@pytest.mark.parametrize("family", sorted(POST_NORMS))
def test_normed_outputs_are_the_post_norms_outputs(family: str) -> None:
    model, hf = model_and_reference(family)
    stack = model.binding.spec.layers
    attn, mlp = POST_NORMS[family]
    seen = _capture(hf, model, {"out:a": f"{stack}.0.{attn}", "out:m": f"{stack}.0.{mlp}"})
    with torch.no_grad(), model.trace(TWO):
        x = model.layers_input[0].save()
        a = model.attentions_output_normed[0].save()
        m = model.mlps_output_normed[0].save()
        out = model.layers_output[0].save()
    assert torch.equal(a, seen["out:a"]) and torch.equal(m, seen["out:m"])
    torch.testing.assert_close(x + a + m, out, rtol=0, atol=1e-5)  # what they add to the residual


@pytest.mark.parametrize("family", PARALLEL)
def test_parallel_blocks_have_no_residual_between_attention_and_mlp(family: str) -> None:
    model, _ = model_and_reference(family)
    reason = model.support()["residual_mid"].unavailable[0]
    assert "parallel block" in reason
    with pytest.raises(UnavailableError, match="parallel block"):
        with model.trace(TWO):
            model.residual_mid[0].save()


def test_writing_residual_mid_equals_a_hook_on_the_mlp_norm_input() -> None:
    model, hf = model_and_reference("llama")

    def double(_m: Any, args: Any, kwargs: Any) -> Any:
        return (args[0] * 2, *args[1:]), kwargs

    handle = hf.model.layers[0].post_attention_layernorm.register_forward_pre_hook(double, with_kwargs=True)
    try:
        with torch.no_grad():
            reference = hf(**encode(model, TWO)).logits
    finally:
        handle.remove()
    with torch.no_grad(), model.trace(TWO):
        model.residual_mid[0] = model.residual_mid[0] * 2
        logits = model.logits.save()
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
