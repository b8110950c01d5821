"""Decompositions and direct logit attribution add up, against plain HF forwards and hand computations.

Every claim is checked on the 26 core families where it holds, and refused where it
does not: per-head results on sandwich blocks (a post-attention norm sits between the
heads and the residual stream), any decomposition on post-norm blocks, logit
attribution on soft-capped logits unless asked for the pre-cap logits.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from uniterp import InputError, LayerIndexError, ShapeError, StandardizedTransformer, UnavailableError
from uniterp.cache import run_with_cache
from uniterp.testing import TINY_FAMILIES, tiny_model_path

from conftest import PROMPTS, load_tiny, model_and_reference
from reference import NATIVE, O_PROJ, encode, first_tensor, hidden_arg, hooks

TWO = PROMPTS[:2]
SANDWICH = {"gemma2", "gemma3_text", "olmo2"}
SOFTCAP = {"gemma2", "gemma3_text"}
LEARNED_POSITIONS = {"gpt2", "gpt_bigcode", "opt"}
PARALLEL = {"gpt_neox", "gptj", "falcon", "phi", "cohere", "codegen"}
ATOL = 1e-5  # float32


def _native(
    family: str, model: StandardizedTransformer, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    """Plain HF forward: each layer's input and output, o_proj inputs, the final norm's output, the logits."""
    _, hf = model_and_reference(family)
    stack = NATIVE[family][0]
    seen: dict[str, Any] = {"in": [], "out": [], "z": []}

    def keep(kind: str, output: bool) -> Any:
        def hook(_m: Any, args: Any, kwargs: Any, out: Any) -> None:
            value = first_tensor(out) if output else hidden_arg(args, kwargs)
            target = seen[kind] if isinstance(seen.get(kind), list) else None
            if target is None:
                seen[kind] = value.detach().clone()
            else:
                target.append(value.detach().clone())

        return hook

    spec = []
    for i in range(model.num_layers):
        spec += [(f"{stack}.{i}", keep("in", False)), (f"{stack}.{i}", keep("out", True))]
        spec.append((f"{stack}.{i}.{O_PROJ[family]}", keep("z", False)))
    spec.append((model.binding.spec.lm_head, keep("lm_head", True)))
    for name, path in (extra or {}).items():
        seen[name] = []
        spec.append((path, keep(name, True)))
    with torch.no_grad(), hooks(hf, spec):
        seen["logits"] = hf(**encode(model, TWO)).logits
    seen["mask"] = encode(model, TWO)["attention_mask"].bool()
    return seen


def _close(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor) -> None:
    torch.testing.assert_close(got[mask], want.reshape(got.shape)[mask], rtol=0, atol=ATOL)


# -- decompose_resid / accumulated_resid -------------------------------------------------------------


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_decomposition_adds_up_to_the_native_residual_stream(family: str) -> None:
    model = load_tiny(family)
    cache = run_with_cache(model, TWO)
    native = _native(family, model)
    n = model.num_layers
    for layer in range(n + 1):
        stack, labels = cache.decompose_resid(layer=layer, return_labels=True)
        target = native["in"][layer] if layer < n else native["out"][-1]
        _close(stack.sum(0), target, native["mask"])
        embeds = ["embed", "pos_embed"] if family in LEARNED_POSITIONS else ["embed"]
        per_layer = [f"{i}_{kind}_out" for i in range(layer) for kind in ("attn", "mlp")]
        assert labels == embeds + per_layer
        assert stack.shape == (len(labels), 2, native["mask"].shape[1], model.hidden_size)
    for mode, kind in (("attn", "attn"), ("mlp", "mlp")):
        _, labels = cache.decompose_resid(mode=mode, incl_embeds=False, return_labels=True)
        assert labels == [f"{i}_{kind}_out" for i in range(n)]


# Parallel blocks have no residual_mid; OLMo 2 has no norm before its MLP to find it by.
@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if f not in PARALLEL and f != "olmo2"])
def test_mlp_input_decomposition_adds_up_to_residual_mid(family: str) -> None:
    cache = run_with_cache(load_tiny(family), TWO)
    stack, labels = cache.decompose_resid(layer=1, mlp_input=True, return_labels=True)
    assert labels[-1] == "1_attn_out"
    mask = cache.attention_mask.bool()
    _close(stack.sum(0), cache["residual_mid.1"], mask)


def test_components_are_what_each_sub_block_adds() -> None:
    # sandwich: after the post-norms
    model = load_tiny("gemma2")
    native = _native("gemma2", model, {"post": "model.layers.0.post_attention_layernorm"})
    stack, labels = run_with_cache(model, TWO).decompose_resid(return_labels=True)
    _close(stack[labels.index("0_attn_out")], native["post"][0], native["mask"])
    # Granite: the sub-block outputs times residual_multiplier
    granite = StandardizedTransformer(
        tiny_model_path("granite", residual_multiplier=0.5, embedding_multiplier=3.0)
    )
    cache = run_with_cache(granite, TWO)
    stack, labels = cache.decompose_resid(return_labels=True)
    assert torch.equal(stack[labels.index("1_mlp_out")], 0.5 * cache["mlps_output.1"])
    mask = cache.attention_mask.bool()
    _close(stack.sum(0), cache["layers_output.2"], mask)
    # learned positions: pos_embed is the position table's rows at each token's position
    model, hf = model_and_reference("gpt2")
    cache = run_with_cache(model, TWO)
    stack, labels = cache.decompose_resid(return_labels=True)
    enc = encode(model, TWO)
    rows = hf.transformer.wpe.weight[enc["position_ids"]]
    _close(stack[labels.index("pos_embed")], rows, enc["attention_mask"].bool())
    assert torch.equal(stack[0], cache["token_embeddings"])


def test_accumulated_resid_labels_and_values() -> None:
    cache = run_with_cache(load_tiny("gpt2"), TWO)
    stack, labels = cache.accumulated_resid(return_labels=True)
    assert labels == ["0_pre", "1_pre", "2_pre", "final_post"]
    assert torch.equal(stack[1], cache["layers_input.1"]) and torch.equal(stack[-1], cache["layers_output.2"])
    _, labels = cache.accumulated_resid(layer=2, incl_mid=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "2_pre"]
    _, labels = cache.accumulated_resid(layer=1, mlp_input=True, return_labels=True)
    assert labels == ["0_pre", "1_pre", "1_mid"]
    last = cache.accumulated_resid(layer=-1, pos_slice=-1)
    assert last.shape == (4, 2, 64) and torch.equal(last[2], cache["layers_input.2"][:, -1])
    some = cache.accumulated_resid(pos_slice=[0, -1])
    assert some.shape[2] == 2 and torch.equal(some[:, :, 1], cache.accumulated_resid()[:, :, -1])
    with pytest.raises(UnavailableError, match="residual_mid"):
        run_with_cache(load_tiny("gpt_neox"), TWO).accumulated_resid(incl_mid=True)


# -- apply_ln_to_stack --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_the_final_norm_with_the_cached_scale_is_the_norm_minus_its_bias(family: str) -> None:
    model, hf = model_and_reference(family)
    cache = run_with_cache(model, TWO)
    norm = hf.get_submodule(model.binding.spec.final_norm)
    bias = norm.bias.detach() if isinstance(getattr(norm, "bias", None), torch.Tensor) else 0.0
    final = cache[f"layers_output.{model.num_layers - 1}"]
    with torch.no_grad():
        expected = norm(final) - bias
    mask = cache.attention_mask.bool()
    _close(cache.accumulated_resid(apply_ln=True)[-1], expected, mask)
    decomposed = cache.decompose_resid(apply_ln=True)  # linear: the parts sum to the normed whole
    _close(decomposed.sum(0), expected, mask)
    last = cache.apply_ln_to_stack(cache.decompose_resid(pos_slice=-1), pos_slice=-1)
    _close(last.sum(0), expected[:, -1], torch.ones(2, dtype=torch.bool))


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma", "cohere", "bloom", "qwen3"])
def test_a_block_norm_with_the_cached_scale(family: str) -> None:
    model, hf = model_and_reference(family)
    cache = run_with_cache(model, TWO)
    norm = hf.get_submodule(
        f"{model.binding.spec.layers}.1.{model.binding.layout.modules[1]['attention_norm']}"
    )
    bias = norm.bias.detach() if isinstance(getattr(norm, "bias", None), torch.Tensor) else 0.0
    with torch.no_grad():
        expected = norm(cache["layers_input.1"]) - bias
    stack = cache.decompose_resid(layer=1)
    mask = cache.attention_mask.bool()
    _close(cache.apply_ln_to_stack(stack, layer=1).sum(0), expected, mask)
    _close(cache.accumulated_resid(layer=1, apply_ln=True)[-1], expected, mask)


# -- stack_head_results -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if f not in SANDWICH])
def test_head_results_add_up_to_the_attention_output(family: str) -> None:
    model, hf = model_and_reference(family)
    names = [f"head_outputs.{i}" for i in range(model.num_layers)] + ["layers_input.1", "layers_output.2"]
    cache = run_with_cache(model, TWO, names=names)
    native = _native(family, model)
    stack, labels = cache.stack_head_results(return_labels=True)
    heads = model.num_heads
    assert labels[: heads + 1] == [f"L0H{h}" for h in range(heads)] + ["L1H0"]
    assert stack.shape[0] == model.num_layers * heads
    stack_path = NATIVE[family][0]
    for layer in range(model.num_layers):
        o_proj = hf.get_submodule(f"{stack_path}.{layer}.{O_PROJ[family]}")
        z = native["z"][layer]
        with torch.no_grad():
            bias = o_proj(torch.zeros_like(z))
            for h in (0, heads - 1):  # one head alone through the native projection, bias removed
                alone = torch.zeros_like(z).unflatten(-1, (heads, -1))
                alone[..., h, :] = z.unflatten(-1, (heads, -1))[..., h, :]
                expected = o_proj(alone.flatten(-2)) - bias
                _close(stack[layer * heads + h], expected, native["mask"])
            total = stack[layer * heads : (layer + 1) * heads].sum(0) + bias
            _close(total, o_proj(z), native["mask"])
    remainder, labels = cache.stack_head_results(layer=1, incl_remainder=True, return_labels=True)
    assert labels[-1] == "remainder" and remainder.shape[0] == heads + 1


@pytest.mark.parametrize("family", sorted(SANDWICH))
def test_head_results_are_refused_across_a_post_attention_norm(family: str) -> None:
    model = load_tiny(family)
    cache = run_with_cache(model, TWO, names=["head_outputs.0", "layers_output.0"])
    with pytest.raises(UnavailableError, match="post-attention norm .* sits between the output projection"):
        cache.stack_head_results()


# -- logit attribution -------------------------------------------------------------------------------


def _unembedding_terms(family: str, model: StandardizedTransformer, hf: torch.nn.Module) -> tuple[Any, float]:
    """(b_U + ln_final.bias @ W_U) from the native modules, and the logit scale, by hand from the config."""
    head = hf.get_submodule(model.binding.spec.lm_head)
    norm = hf.get_submodule(model.binding.spec.final_norm)
    offset = head.bias.detach() if head.bias is not None else torch.zeros(head.weight.shape[0])
    if isinstance(getattr(norm, "bias", None), torch.Tensor):
        offset = offset + head.weight.detach() @ norm.bias.detach()
    scale = 1.0
    if family == "cohere":
        scale = hf.config.logit_scale
    elif family == "granite":
        scale = 1 / hf.config.logits_scaling
    return offset, scale


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_logit_attribution_adds_up_to_the_logits_minus_biases(family: str) -> None:
    model, hf = model_and_reference(family)
    cache = run_with_cache(model, TWO)
    native = _native(family, model)
    offset, scale = _unembedding_terms(family, model, hf)
    logits = native["lm_head"] if family in SOFTCAP else native["logits"]  # pre-cap logits where capped
    scale = 1.0 if family in SOFTCAP else scale
    tokens = torch.randint(
        0, model.vocab_size, native["mask"].shape, generator=torch.Generator().manual_seed(1)
    )
    expected = (logits - offset * scale).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    final = cache.accumulated_resid()[-1:]
    torch.testing.assert_close(
        cache.logit_attrs(final, tokens, pre_softcap=True)[0][native["mask"]],
        expected[native["mask"]],
        rtol=0,
        atol=ATOL,
    )
    parts = cache.logit_attrs(cache.decompose_resid(), tokens, pre_softcap=True)
    torch.testing.assert_close(parts.sum(0)[native["mask"]], expected[native["mask"]], rtol=0, atol=ATOL)


def test_logit_attribution_with_granite_multipliers() -> None:
    model = StandardizedTransformer(
        tiny_model_path("granite", residual_multiplier=0.5, logits_scaling=4.0, embedding_multiplier=3.0)
    )
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(
        tiny_model_path("granite", residual_multiplier=0.5, logits_scaling=4.0, embedding_multiplier=3.0)
    )
    cache = run_with_cache(model, TWO)
    enc = encode(model, TWO)
    with torch.no_grad():
        logits = hf(**enc).logits
    tokens = logits.argmax(-1)
    expected = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # no biases: llama-like head and RMS norm
    attrs = cache.logit_attrs(cache.decompose_resid(), tokens).sum(0)
    mask = enc["attention_mask"].bool()
    torch.testing.assert_close(attrs[mask], expected[mask], rtol=0, atol=ATOL)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma"])
def test_per_head_attribution_is_the_head_through_the_final_norm_and_unembedding(family: str) -> None:
    model, hf = model_and_reference(family)
    names = [f"head_outputs.{i}" for i in range(model.num_layers)] + ["layers_output.2"]
    cache = run_with_cache(model, TWO, names=names)
    heads = cache.stack_head_results(pos_slice=-1)  # (n_heads_total, batch, hidden)
    target = torch.tensor([5, 7])
    attrs = cache.logit_attrs(heads, tokens=target, pos_slice=-1)  # (n_heads_total, batch)
    assert attrs.shape == (model.num_layers * model.num_heads, 2)
    # by hand: centre (LayerNorm), divide by the final norm's scale on the cached residual, gain, W_U column
    norm = hf.get_submodule(model.binding.spec.final_norm)
    final = cache["layers_output.2"][:, -1]
    centred = heads - heads.mean(-1, keepdim=True) if family == "gpt2" else heads
    resid = final - final.mean(-1, keepdim=True) if family == "gpt2" else final
    eps = norm.eps if hasattr(norm, "eps") else norm.variance_epsilon
    scale = (resid.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    gain = norm.weight.detach() + (1 if family == "gemma" else 0)
    columns = hf.get_submodule(model.binding.spec.lm_head).weight.detach()[target]  # (batch, hidden)
    expected = (centred / scale * gain * columns).sum(-1)
    torch.testing.assert_close(attrs, expected, rtol=0, atol=ATOL)


def test_token_forms_and_directions() -> None:
    model = load_tiny("llama")
    cache = run_with_cache(model, TWO)
    stack = cache.decompose_resid()  # (n, batch, seq, hidden)
    seq = stack.shape[2]
    by_position = cache.logit_attrs(stack, torch.full((2, seq), 9))
    assert by_position.shape == (stack.shape[0], 2, seq)
    assert torch.equal(cache.logit_attrs(stack, 9), by_position)
    assert torch.equal(cache.logit_attrs(stack, torch.tensor([9, 9])), by_position)
    token = model.tokenizer.convert_ids_to_tokens(200)
    one = model.tokenizer.convert_tokens_to_string([token])
    if len(model.tokenizer(one, add_special_tokens=False).input_ids) == 1:
        assert torch.equal(cache.logit_attrs(stack, one), cache.logit_attrs(stack, 200))
    diff = cache.logit_attrs(stack, 9, incorrect_tokens=4)
    torch.testing.assert_close(diff, by_position - cache.logit_attrs(stack, 4), rtol=0, atol=ATOL)
    from uniterp._weight_views import model_weight

    direction = model_weight(model, "W_U")[:, 9]
    torch.testing.assert_close(cache.logit_attrs(stack, directions=direction), by_position, rtol=0, atol=ATOL)
    last = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), [9, 4], pos_slice=-1)
    assert last.shape == (stack.shape[0], 2)


def test_a_cache_without_its_batch_dimension() -> None:
    model = load_tiny("gpt2")
    single = run_with_cache(
        model, TWO[1], names=[f"head_outputs.{i}" for i in range(3)] + ["layers_output.2"]
    )
    batched = run_with_cache(model, TWO[1])
    plain = single.remove_batch_dim()
    heads = plain.stack_head_results()
    assert heads.shape == (3 * model.num_heads, single.input_ids.shape[1], model.hidden_size)
    attrs = plain.logit_attrs(heads, 3)
    assert attrs.shape == heads.shape[:2]
    torch.testing.assert_close(attrs, single.logit_attrs(single.stack_head_results(), 3)[:, 0])
    stack = batched.remove_batch_dim().decompose_resid()
    assert stack.dim() == 3 and torch.equal(stack, batched.decompose_resid()[:, 0])


# -- refusals ------------------------------------------------------------------------------------------


def test_refused_layouts_say_why() -> None:
    post_norm = StandardizedTransformer(tiny_model_path("opt", do_layer_norm_before=False))
    cache = run_with_cache(post_norm, TWO, names=None)
    with pytest.raises(UnavailableError, match="post-norm"):
        cache.decompose_resid()
    with pytest.raises(UnavailableError, match="post-norm"):
        cache.stack_head_results()
    wrong_residual = StandardizedTransformer(
        tiny_model_path("bloom", apply_residual_connection_post_layernorm=True)
    )
    with pytest.raises(UnavailableError, match="do not add up to layers_input.1"):
        run_with_cache(wrong_residual, TWO).decompose_resid(layer=1)
    capped = run_with_cache(load_tiny("gemma2"), TWO)
    with pytest.raises(UnavailableError, match="soft-capped.*pre_softcap=True"):
        capped.logit_attrs(capped.accumulated_resid()[-1:], 3)
    with pytest.raises(UnavailableError, match="residual_mid"):
        run_with_cache(load_tiny("gptj"), TWO).decompose_resid(layer=1, mlp_input=True)
    hybrid = run_with_cache(StandardizedTransformer(tiny_model_path("jamba")), TWO)
    with pytest.raises(UnavailableError, match="no attention"):
        hybrid.decompose_resid()


def test_bad_arguments_are_refused() -> None:
    model = load_tiny("llama")
    cache = run_with_cache(model, TWO)
    stack = cache.decompose_resid()
    with pytest.raises(ShapeError, match=r"must be \('n_components', 2, \d+, 64\)"):
        cache.apply_ln_to_stack(stack[:, :1])
    with pytest.raises(ShapeError, match="must be"):
        cache.logit_attrs(stack, 3, pos_slice=-1)
    with pytest.raises(InputError, match=r"token ids must be in \[0, 512\)"):
        cache.logit_attrs(stack, model.vocab_size)
    with pytest.raises(InputError, match="token ids must be integers"):
        cache.logit_attrs(stack, torch.tensor([1.5, 2.0]))
    with pytest.raises(ShapeError, match="do not fit the stack"):
        cache.logit_attrs(stack, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ShapeError, match="incorrect_tokens"):
        cache.logit_attrs(stack, torch.tensor([1, 2]), incorrect_tokens=3)
    with pytest.raises(InputError, match="not both"):
        cache.logit_attrs(stack)
    with pytest.raises(InputError, match="tokens"):
        cache.logit_attrs(stack, "hello world and more")
    with pytest.raises(InputError, match="mode"):
        cache.decompose_resid(mode="heads")
    with pytest.raises(LayerIndexError, match=r"\[0, 3\]"):
        cache.decompose_resid(layer=7)
    with pytest.raises(InputError, match="pos_slice"):
        cache.decompose_resid(pos_slice=40)
    with pytest.raises(InputError, match="pos_slice"):
        cache.decompose_resid(pos_slice="last")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"needs head_outputs.0, which is not in this cache"):
        cache.stack_head_results()
    with pytest.raises(InputError, match="mlp_input=True needs a layer below 3"):
        cache.decompose_resid(mlp_input=True)
    with pytest.raises(InputError, match="takes a tensor"):
        cache.apply_ln_to_stack([1, 2])  # type: ignore[arg-type]


def test_a_norm_that_is_not_normalize_times_gain_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from uniterp._nnsight_compat import native_module

    model = StandardizedTransformer(tiny_model_path("llama"))  # its own copy: norm gains are kept per model
    cache = run_with_cache(model, TWO)
    norm = native_module(model).model.norm
    original = norm.forward
    monkeypatch.setattr(norm, "forward", lambda x: original(x) * 2 + 1)
    with pytest.raises(UnavailableError, match=r"model.norm \(LlamaRMSNorm\) does not compute normalize"):
        cache.logit_attrs(cache.accumulated_resid()[-1:], 3)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_bfloat16_decompositions_add_up_within_its_precision(family: str) -> None:
    model = StandardizedTransformer(tiny_model_path(family), dtype=torch.bfloat16)
    cache = run_with_cache(model, TWO)
    stack = cache.decompose_resid()  # checked against the cached residual inside: no refusal
    assert stack.dtype == torch.bfloat16
    mask = cache.attention_mask.bool()
    final = cache["layers_output.2"]
    torch.testing.assert_close(stack.sum(0)[mask].float(), final[mask].float(), rtol=0, atol=0.1)
    assert cache.logit_attrs(stack, 3, pre_softcap=True).shape == (stack.shape[0], 2, mask.shape[1])
