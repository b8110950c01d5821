"""run_with_cache and ActivationCache: one forward, values by any name, equal to the native modules."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from uniterp import InputError, LayerIndexError, StandardizedTransformer, UnavailableError
from uniterp.cache import DEFAULT_SITES, FORWARD_ORDER, ActivationCache, default_names, run_with_cache
from uniterp.testing import TINY_FAMILIES, tiny_model_path

from conftest import PROMPTS, load_tiny, model_and_reference
from reference import NATIVE, encode, first_tensor, hidden_arg, hooks

TWO = PROMPTS[:2]


def _native_residual(family: str, model: StandardizedTransformer) -> dict[str, list[torch.Tensor]]:
    """Each layer's input and output, and the attention and MLP contributions, by plain hooks on HF."""
    _, hf = model_and_reference(family)
    stack, _, attn, _, mlp = NATIVE[family]
    seen: dict[str, list[torch.Tensor]] = {"in": [], "out": [], "attn": [], "mlp": []}

    def grab(kind: str, output: bool) -> Any:
        def hook(_m: Any, args: Any, kwargs: Any, out: Any) -> None:
            value = first_tensor(out) if output else hidden_arg(args, kwargs)
            seen[kind].append(value.detach().clone())

        return hook

    spec = []
    for i in range(model.num_layers):
        spec += [(f"{stack}.{i}", grab("in", False)), (f"{stack}.{i}", grab("out", True))]
        spec += [(f"{stack}.{i}.{attn}", grab("attn", True)), (f"{stack}.{i}.{mlp}", grab("mlp", True))]
    with torch.no_grad(), hooks(hf, spec):
        hf(**encode(model, TWO))
    return seen


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_the_default_cache_is_the_residual_stream_of_the_native_modules(family: str) -> None:
    model = load_tiny(family)
    cache = run_with_cache(model, TWO)
    native = _native_residual(family, model)
    mask = encode(model, TWO)["attention_mask"].bool()
    for i in range(model.num_layers):
        for key, name in (("in", "layers_input"), ("out", "layers_output"), ("attn", "attentions_output")):
            got, ref = cache[f"{name}.{i}"], native[key][i]
            torch.testing.assert_close(got[mask], ref.view(got.shape)[mask], rtol=0, atol=1e-6)
        mlp = cache[f"mlps_output.{i}"]
        torch.testing.assert_close(mlp[mask], native["mlp"][i].view(mlp.shape)[mask], rtol=0, atol=1e-6)
    assert list(cache.keys()) == default_names(model)
    assert all(name.split(".")[0] in (*DEFAULT_SITES, "token_embeddings") for name in cache)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_value_in_one_forward_equals_the_value_read_alone(family: str) -> None:
    model = load_tiny(family)
    alone: dict[str, torch.Tensor] = {}
    refused: set[str] = set()  # partial rotary embeddings: the pre-rotary values are refused when read
    for site in ["token_embeddings", "logits"] + [f"{site}.1" for site in FORWARD_ORDER]:
        try:
            model.sites.resolve(site)
            with torch.no_grad(), model.trace(TWO):
                alone[site] = model.sites[site].save()
        except UnavailableError:
            refused.add(site.split(".")[0])
    cache = run_with_cache(model, TWO, names=lambda name: name.split(".")[0] not in refused)
    assert "logits" in cache and "layers_output.2" in cache
    order = [FORWARD_ORDER.index(n.split(".")[0]) for n in cache if n.endswith(".1")]
    assert order == sorted(order)
    assert {n for n in cache if n.endswith(".1")} | {"token_embeddings", "logits"} == set(alone)
    for name, value in alone.items():
        assert torch.equal(cache[name], value), name


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "qwen3", "olmo"])
def test_transformerlens_names_read_the_cache_as_they_read_the_model(family: str) -> None:
    model = load_tiny(family)
    names = [
        "blocks.1.hook_resid_pre",
        "blocks.1.ln1.hook_normalized",
        "blocks.1.ln1.hook_scale",
        "blocks.1.attn.hook_q",
        "blocks.1.attn.hook_v",
        "blocks.1.attn.hook_z",
        "blocks.1.hook_attn_out",
        "blocks.1.hook_mlp_out",
        "ln_final.hook_scale",
        "ln_final.hook_normalized",
    ]
    if family == "gpt2":
        names.remove("ln_final.hook_normalized")  # read-only aliases after the last layer: checked on others
    cache = run_with_cache(model, TWO, names=names)
    for name in names:
        with torch.no_grad(), model.trace(TWO):
            direct = model.sites[name].save()
        torch.testing.assert_close(cache[name], direct, rtol=0, atol=1e-6, msg=name)
    # keys are the base values, in standardized names
    assert "queries_pre_rotary.1" in cache or "queries.1" in cache
    assert cache["blocks.1.hook_resid_pre"] is cache["layers_input.1"]
    assert cache["resid_pre", 1] is cache["layers_input.1"]
    assert cache["layers_input", 1] is cache["layers_input.1"]
    assert cache["z", 1].shape == (2, cache["layers_input.1"].shape[1], model.num_heads, model.head_dim)


def test_sandwich_blocks_read_hook_attn_out_after_the_post_norm() -> None:
    cache = run_with_cache(load_tiny("gemma2"), TWO)
    assert cache["blocks.0.hook_attn_out"] is cache["attentions_output_normed.0"]
    assert cache["blocks.0.hook_mlp_out"] is cache["mlps_output_normed.0"]


def test_the_forward_stops_after_the_deepest_value() -> None:
    model, _ = model_and_reference("llama")
    from uniterp._nnsight_compat import native_module

    model.dispatch()  # hooks go on the loaded modules
    calls: list[int] = []
    handle = native_module(model).model.norm.register_forward_hook(lambda *_: calls.append(1))
    try:
        run_with_cache(model, TWO, names=["layers_output.0"])
        assert calls == []  # the final norm never ran
        run_with_cache(model, TWO, names=["layers_output.0", "logits"])
        assert calls == [1]
    finally:
        handle.remove()


def test_devices_gradients_and_token_inputs() -> None:
    model = load_tiny("llama")
    cache = run_with_cache(model, TWO, names=["layers_output.1"], device="meta")
    assert cache["layers_output.1"].device.type == "meta"
    assert cache["layers_output.1"].grad_fn is None
    live = run_with_cache(model, TWO, names=["layers_output.1"], detach=False)
    assert live["layers_output.1"].grad_fn is not None
    live["layers_output.1"].sum().backward()
    weight = model.layers[0].mlp.down_proj.weight
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    ids = encode(model, TWO)
    from_ids = run_with_cache(model, {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]})
    from_text = run_with_cache(model, TWO)
    assert torch.equal(from_ids["layers_output.2"], from_text["layers_output.2"])
    assert torch.equal(from_text.input_ids, ids["input_ids"]) and from_text.prompts == TWO
    plain = run_with_cache(model, ids["input_ids"][1:])  # no padding in row 1
    assert plain.attention_mask.all() and plain.prompts is None


def test_a_prompt_alone_and_inside_a_padded_batch() -> None:
    model = load_tiny("llama")
    cache = run_with_cache(model, TWO)
    alone = run_with_cache(model, TWO[1])
    n = cache.lengths[1]
    assert cache.prompt_columns(1) == slice(cache.input_ids.shape[1] - n, cache.input_ids.shape[1])
    mine = cache.prompt_value("layers_output.2", 1)
    assert mine.shape == (n, model.hidden_size)
    torch.testing.assert_close(mine, alone["layers_output.2"][0], rtol=0, atol=1e-5)
    heads = run_with_cache(model, TWO, names=["queries.0"])
    assert heads.prompt_value("queries.0", 1).shape == (model.num_heads, n, model.head_dim)
    assert heads.prompt_value("blocks.0.attn.hook_rot_q", 1).shape == (n, model.num_heads, model.head_dim)


def test_mapping_methods_copies_and_batch_removal() -> None:
    model = load_tiny("gpt2")
    cache = run_with_cache(model, TWO, names=["layers_output.0", "blocks.1.attn.hook_q"])
    assert list(cache) == list(cache.keys()) == ["layers_output.0", "queries.1"]  # forward order
    assert len(cache) == 2 and [k for k, _ in cache.items()] == list(cache.keys())
    assert "blocks.0.hook_resid_post" in cache and "layers_output.1" not in cache
    assert "not a name" not in cache and "input_ids" in cache
    moved = cache.to("meta")
    assert isinstance(moved, ActivationCache) and moved["layers_output.0"].device.type == "meta"
    single = run_with_cache(model, TWO[0], names=["layers_output.0", "queries.0"]).remove_batch_dim()
    assert single["layers_output.0"].dim() == 2 and single["blocks.0.attn.hook_q"].dim() == 3
    assert not single.has_batch_dim and "ActivationCache of gpt2" in repr(single)
    with pytest.raises(InputError, match="one prompt; this one has 2"):
        cache.remove_batch_dim()


@pytest.mark.parametrize(
    ("names", "error", "match"),
    [
        (["layers_output.1", "no_such_value.0"], InputError, "not a per-layer value"),
        (["blocks.0.hook_nothing"], InputError, "unknown TransformerLens hook"),
        (["layers_output.9"], LayerIndexError, "out of range"),
        (["blocks.0.attn.hook_pattern"], UnavailableError, "enable_attention_probs=True"),
        (["blocks.0.mlp.hook_pre"], UnavailableError, "pre-activation"),
        ([], InputError, "names is empty"),
        (lambda name: False, InputError, "accepted none"),
    ],
)
def test_bad_names_are_refused_before_the_forward(names: Any, error: type, match: str) -> None:
    model = load_tiny("llama")
    from uniterp._nnsight_compat import native_module

    model.dispatch()  # hooks go on the loaded modules
    calls: list[int] = []
    handle = native_module(model).model.embed_tokens.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(error, match=match):
            run_with_cache(model, TWO, names=names)
        assert calls == []
        run_with_cache(model, TWO, names=["layers_output.0"])
        assert calls == [1]  # the hook does see a forward
    finally:
        handle.remove()


def test_bad_inputs_and_lookups_are_refused() -> None:
    model = load_tiny("llama")
    with pytest.raises(InputError, match="empty"):
        run_with_cache(model, [])
    with pytest.raises(InputError, match="prompts must be"):
        run_with_cache(model, 3.5)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        run_with_cache(model, torch.full((1, 3), model.vocab_size + 5))
    with pytest.raises(InputError, match="attention_mask"):
        run_with_cache(
            model, {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 4)}
        )
    cache = run_with_cache(model, TWO, names=["layers_output.0"])
    with pytest.raises(InputError, match=r"not in this cache.*names=\[\.\.\., 'layers_output.1'\]"):
        cache["layers_output.1"]
    with pytest.raises(InputError, match="tuple key"):
        cache["resid_post", "one"]
    with pytest.raises(InputError, match="names"):
        cache[3]  # type: ignore[index]
    with pytest.raises(InputError, match="prompt index"):
        cache.prompt_columns(5)


def test_attention_patterns_with_eager_attention() -> None:
    model = StandardizedTransformer(tiny_model_path("llama"), enable_attention_probs=True)
    cache = run_with_cache(model, TWO, names=["blocks.1.attn.hook_pattern", "attention_scores.1", "logits"])
    assert list(cache.keys()) == ["attention_scores.1", "attention_probabilities.1", "logits"]
    pattern = cache["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(cache["attention_scores.1"].softmax(-1), pattern)
    n = cache.lengths[1]
    assert cache.prompt_value("attention_probabilities.1", 1).shape == (model.num_heads, n, n)


def test_remote_local_caches_the_same(hide_uniterp_source: None) -> None:
    model = load_tiny("llama")
    local = run_with_cache(model, TWO, names=["layers_output.1"], remote="local")
    assert torch.equal(
        local["layers_output.1"], run_with_cache(model, TWO, names=["layers_output.1"])["layers_output.1"]
    )


def test_a_norm_with_its_epsilon_in_code() -> None:
    # OLMo's parameter-free LayerNorm calls F.layer_norm(..., eps=1e-5) and keeps no attribute
    cache = run_with_cache(load_tiny("olmo"), TWO)
    x = cache["layers_input.1"]
    centred = x - x.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(cache["blocks.1.ln1.hook_scale"], scale, rtol=0, atol=1e-7)
