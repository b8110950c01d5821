"""Other naming schemes (TransformerLens hook names, native module paths) as aliases of the values."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from uniterp import InputError, LayerIndexError, StandardizedTransformer, UnavailableError
from uniterp.testing import tiny_model_path

from conftest import PROMPTS, load_tiny, model_and_reference
from reference import encode, hooks

TWO = PROMPTS[:2]


@pytest.mark.parametrize(
    ("family", "name", "standard"),
    [
        ("llama", "blocks.1.hook_resid_pre", "layers_input.1"),
        ("llama", "blocks.1.hook_resid_mid", "residual_mid.1"),
        ("llama", "blocks.1.hook_resid_post", "layers_output.1"),
        ("llama", "blocks.1.attn.hook_q", "queries_pre_rotary.1"),
        ("llama", "blocks.1.attn.hook_rot_k", "keys.1"),
        ("llama", "blocks.1.attn.hook_v", "values.1"),
        ("llama", "blocks.1.attn.hook_z", "head_outputs.1"),
        ("llama", "blocks.1.hook_attn_out", "attentions_output.1"),
        ("llama", "blocks.1.hook_mlp_in", "mlps_input.1"),
        ("llama", "blocks.1.mlp.hook_post", "mlp_neurons.1"),
        ("llama", "blocks.1.hook_mlp_out", "mlps_output.1"),
        ("llama", "blocks.-1.hook_resid_post", "layers_output.2"),
        ("llama", "hook_embed", "token_embeddings"),
        ("gpt2", "blocks.0.attn.hook_q", "queries.0"),  # no rotary: hook_q is the kernel's query
        ("gemma2", "blocks.0.hook_attn_out", "attentions_output_normed.0"),  # after the post-norm
        ("gemma2", "blocks.0.hook_mlp_out", "mlps_output_normed.0"),
        ("olmo2", "blocks.1.hook_mlp_out", "mlps_output_normed.1"),
        ("llama", "model.layers.1", "layers_output.1"),
        ("llama", "layers.1.mlp", "mlps_output.1"),
        ("gpt2", "transformer.h.0.attn", "attentions_output.0"),
        ("llama", "layers_output[2]", "layers_output.2"),
    ],
)
def test_names_resolve_to_the_value_they_mean(family: str, name: str, standard: str) -> None:
    assert load_tiny(family).sites.resolve(name).standard_name == standard


def test_native_paths_read_inputs_too() -> None:
    model = load_tiny("llama")
    assert model.sites.resolve("model.layers.1", io="input").standard_name == "layers_input.1"
    assert model.sites.resolve("layers.0.mlp", io="input").standard_name == "mlps_input.0"


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "qwen3"])
def test_aliases_read_the_same_tensors_in_transformerlens_order(family: str) -> None:
    model = load_tiny(family)
    with torch.no_grad(), model.trace(TWO):
        v = model.sites["blocks.1.attn.hook_v"].save()
        values = model.values[1].save()
        z = model.sites["blocks.1.attn.hook_z"].save()
        resid = model.sites["blocks.1.hook_resid_post"].save()
        native = model.layers_output[1].save()
    assert torch.equal(resid, native)
    assert z.shape == (2, resid.shape[1], model.num_heads, model.head_dim)
    # TransformerLens keeps (batch, pos, head, d_head); uniterp's values are (batch, head, pos, d_head)
    assert v.shape == (2, resid.shape[1], model.num_kv_heads, model.head_dim)
    assert torch.equal(v, values.transpose(1, 2))


@pytest.mark.parametrize(
    ("family", "norm"), [("llama", "input_layernorm"), ("gpt2", "ln_1"), ("qwen3", "input_layernorm")]
)
def test_hook_normalized_is_the_norm_before_its_gain(family: str, norm: str) -> None:
    model, hf = model_and_reference(family)
    stack = model.binding.spec.layers
    module = hf.get_submodule(f"{stack}.1.{norm}")
    seen: dict[str, torch.Tensor] = {}

    def grab(_m: Any, args: Any, kwargs: Any, out: torch.Tensor) -> None:
        seen["out"] = out.detach().clone()

    with torch.no_grad(), hooks(hf, {f"{stack}.1.{norm}": grab}):
        hf(**encode(model, TWO))
    with torch.no_grad(), model.trace(TWO):
        normalized = model.sites["blocks.1.ln1.hook_normalized"].save()
        scale = model.sites["blocks.1.ln1.hook_scale"].save()
        x = model.layers_input[1].save()
    gained = normalized * module.weight + (module.bias if getattr(module, "bias", None) is not None else 0)
    torch.testing.assert_close(gained, seen["out"], rtol=1e-5, atol=1e-5)
    assert scale.shape == (*x.shape[:-1], 1)
    if "rms" in type(module).__name__.lower():
        torch.testing.assert_close(normalized * scale, x, rtol=1e-5, atol=1e-5)


def test_ln_final_normalized_gives_the_logits_through_the_gain_and_unembedding() -> None:
    model, hf = model_and_reference("llama")
    with torch.no_grad(), model.trace(TWO):
        normalized = model.sites["ln_final.hook_normalized"].save()
        logits = model.logits.save()
    lens = hf.lm_head(normalized * hf.model.norm.weight)
    torch.testing.assert_close(lens, logits, rtol=1e-4, atol=1e-4)


def test_writing_an_alias_writes_the_value() -> None:
    model = load_tiny("llama")
    with torch.no_grad(), model.trace(TWO):
        model.sites["blocks.0.attn.hook_z"] = model.sites["blocks.0.attn.hook_z"] * 0
        by_alias = model.logits.save()
    with torch.no_grad(), model.trace(TWO):
        model.head_outputs[0] = model.head_outputs[0] * 0
        direct = model.logits.save()
    assert torch.equal(by_alias, direct)
    with torch.no_grad(), model.trace(TWO):
        q = model.sites["blocks.0.attn.hook_q"]
        model.sites["blocks.0.attn.hook_q"] = (
            q * 2
        )  # (batch, pos, head, d) written back as (batch, head, pos, d)
        via_q = model.logits.save()
    assert not torch.equal(via_q, direct)
    with pytest.raises(InputError, match="read-only"), torch.no_grad():
        with model.trace(TWO):
            model.sites["blocks.0.ln1.hook_normalized"] = torch.zeros(1)


@pytest.mark.parametrize(
    ("family", "name", "error", "reason"),
    [
        ("gpt_neox", "blocks.0.hook_resid_mid", UnavailableError, "parallel block"),
        ("llama", "blocks.0.attn.hook_result", UnavailableError, "stack_head_results"),
        ("llama", "hook_pos_embed", UnavailableError, "position embeddings"),
        ("llama", "blocks.0.attn.hook_pattern", UnavailableError, "enable_attention_probs"),
        ("gpt2", "blocks.0.attn.hook_rot_q", UnavailableError, "no rotary"),
        ("llama", "blocks.0.hook_nonsense", InputError, "unknown TransformerLens hook"),
        ("llama", "model.layers.0.no_such", InputError, "not a standardized value"),
        ("llama", "nonsense_site.1", InputError, "not a per-layer value"),
        ("llama", "", InputError, "non-empty"),
    ],
)
def test_names_that_mean_nothing_here_are_refused(family: str, name: str, error: type, reason: str) -> None:
    with pytest.raises(error, match=reason):
        load_tiny(family).sites.resolve(name)


def test_layer_out_of_range_in_a_name() -> None:
    with pytest.raises(LayerIndexError, match="out of range"):
        load_tiny("llama").sites.resolve("blocks.7.hook_resid_post")


def test_attention_pattern_alias_with_eager_attention() -> None:
    model = StandardizedTransformer(tiny_model_path("gpt2"), enable_attention_probs=True)
    with torch.no_grad(), model.trace(TWO):
        scores = model.sites["blocks.0.attn.hook_attn_scores"].save()
        pattern = model.sites["blocks.0.attn.hook_pattern"].save()
    torch.testing.assert_close(scores.softmax(-1), pattern, rtol=0, atol=1e-6)


def test_a_native_path_that_looks_like_a_standard_name() -> None:
    # sparsify names a decoder layer "layers.1": a module path, not a value called "layers"
    model = load_tiny("llama")
    assert model.sites.resolve("layers.1").standard_name == "layers_output.1"
    assert model.sites.resolve("layers.1", io="input").standard_name == "layers_input.1"
