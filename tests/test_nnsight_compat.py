"""Every private internal uniterp relies on (``uniterp._nnsight_compat``), exercised directly.

When an nnsight, torch or transformers upgrade changes one of them, the test for it
fails here, naming the internal, instead of a tool failing somewhere else.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from uniterp import OrderError, StandardizedTransformer
from uniterp import _nnsight_compat as compat
from uniterp.testing import tiny_model_path

from conftest import PROMPTS, load_tiny


def test_native_module_and_envoy_paths() -> None:
    model = load_tiny("llama")
    envoy = compat.envoy_at(model, "model.layers.1.self_attn")
    module = compat.native_module(envoy)
    assert module is compat.native_module(model).model.layers[1].self_attn
    assert compat.envoy_at(model, "") is model


def test_child_named_like_an_envoy_value_is_mounted_under_the_prefix() -> None:
    # BERT blocks hold a submodule named `output`, which every envoy serves as a value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = StandardizedTransformer(tiny_model_path("bert"))
    envoy = compat.envoy_at(model, "bert.encoder.layer.0.output")
    assert type(compat.native_module(envoy)).__name__ == "BertOutput"


def test_refresh_envoys_follows_a_replaced_module() -> None:
    model = StandardizedTransformer(tiny_model_path("gpt2"))
    model.dispatch()
    root = compat.native_module(model)
    old = root.transformer.h[0].mlp
    new = type(old)(old.c_fc.nf, model.text_config)
    root.transformer.h[0].mlp = new
    refreshed = compat.refresh_envoys(model)
    assert refreshed == ["model.transformer.h.0.mlp"]
    assert compat.native_module(compat.envoy_at(model, "transformer.h.0.mlp")) is new


def test_mediator_is_visible_inside_a_trace_only() -> None:
    model = load_tiny("llama")
    seen: dict[str, object] = {}
    assert not compat.in_trace() and compat.current_mediator() is None
    with torch.no_grad(), model.trace(PROMPTS):
        seen["inside"] = compat.in_trace()
        seen["mediator"] = compat.current_mediator() is not None
        seen["loop"] = compat.in_step_loop()
    assert seen == {"inside": True, "mediator": True, "loop": False}


def test_step_loop_is_recognised_inside_tracer_iter() -> None:
    model = load_tiny("llama")
    flags: list[bool] = []
    with torch.no_grad(), model.generate(PROMPTS[:1], max_new_tokens=3, do_sample=False) as tracer:
        for step in tracer.iter[:3]:
            if step > 0:
                flags.append(compat.in_step_loop())
    assert flags == [True, True]


def test_invoke_rows_of_a_tensor_shared_by_several_invokes() -> None:
    model = load_tiny("llama")
    rows: dict[str, object] = {}
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(PROMPTS[:2]):
            rows["a"] = compat.invoke_rows(5 * 3, per_row=3)  # total batch 5, three rows per prompt
            rows["a_narrowed"] = compat.invoke_rows(2 * 3, per_row=3)
        with tracer.invoke(PROMPTS[:3]):
            rows["b"] = compat.invoke_rows(5 * 3, per_row=3)
    assert rows == {"a": (0, 6), "a_narrowed": None, "b": (6, 15)}


def test_out_of_order_error_is_nnsights_and_uniterps() -> None:
    model = load_tiny("llama")
    with pytest.raises(compat.OutOfOrderError) as caught, torch.no_grad():
        with model.trace(PROMPTS):
            model.layers_output[1].save()
            model.layers_output[0].save()
    assert isinstance(caught.value, OrderError)


def test_source_operation_labels() -> None:
    model = load_tiny("llama")
    envoy = compat.envoy_at(model, "model.layers.0.self_attn")
    names = compat.source_names(envoy)
    bases = [compat.op_base(name) for name in names]
    assert "attention_interface" in bases and "apply_rotary_pos_emb" in bases
    call = [n for n in names if compat.op_base(n) == "attention_interface"][-1]
    with torch.no_grad(), model.trace(PROMPTS):
        args, _ = compat.source_op(envoy, (call,)).inputs
        query = args[1].save()
    assert query.shape[:2] == (len(PROMPTS), model.num_heads)
    assert compat.op_base("nn_functional_softmax_12") == "nn_functional_softmax"
    assert compat.op_base("plain") == "plain"


def test_quiet_fake_tensor_logs_restores_the_level() -> None:
    fake_logger = logging.getLogger("torch._subclasses.fake_tensor")
    before = fake_logger.level
    with compat.quiet_fake_tensor_logs():
        assert fake_logger.level == logging.CRITICAL
    assert fake_logger.level == before


def test_tensor_version_counts_in_place_edits() -> None:
    x = torch.zeros(3)
    v = compat.tensor_version(x)
    x.add_(1)
    assert compat.tensor_version(x) == v + 1
    y = x.clone()
    assert compat.tensor_version(y) == 0


def test_cache_rows_can_be_selected() -> None:
    from transformers import DynamicCache

    model = load_tiny("llama")
    model.dispatch()
    cache = DynamicCache(config=model.text_config)
    encoding = model.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = compat.native_module(model)(**encoding, cache=cache, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    assert compat.cache_selectable(cache)
    keys_before = cache.layers[0].keys[[2, 0]].clone()
    compat.select_cache_rows(cache, torch.tensor([2, 0]))
    assert torch.equal(cache.layers[0].keys, keys_before)


def test_fused_experts_gate_by_the_default_function() -> None:
    model = load_tiny("mixtral")
    experts = compat.native_module(model).model.layers[0].mlp.experts
    assert compat.expert_gating(experts) is None

    class Custom(type(experts)):  # type: ignore[misc]
        def _apply_gate(self, gate_up):  # noqa: ANN001, ANN202
            return gate_up

    assert compat.expert_gating(Custom.__new__(Custom)) is not None


def test_standalone_envoy_serves_a_module_called_from_a_hook() -> None:
    model = StandardizedTransformer(tiny_model_path("llama"))
    model.dispatch()
    passthrough = torch.nn.Identity()
    envoy = compat.standalone_envoy(model, passthrough, "side_0")
    assert envoy.path == f"{model.path}.side_0"
    layer = compat.native_module(model).model.layers[1]
    handle = layer.register_forward_hook(lambda _m, _a, out: passthrough(out))
    try:
        with torch.no_grad(), model.trace(PROMPTS):
            seen = envoy.output.save()
            envoy.output = seen * 0
            after = model.layers_input[2].save()  # the hook runs after layer 1 hands its output over
        assert seen.abs().sum() > 0 and torch.equal(after, torch.zeros_like(after))
    finally:
        handle.remove()
    compat.drop_standalone_envoy(envoy)
    assert id(passthrough) not in model.interleaver.envoys


def test_reading_the_labels_does_not_instrument_the_forward() -> None:
    model = StandardizedTransformer(tiny_model_path("llama"))
    envoy = compat.envoy_at(model, "model.layers.1.self_attn")
    assert not compat.is_instrumented(envoy)  # binding read every attention forward's labels
    compiled = compat.source_compiled(envoy)
    assert not compat.is_instrumented(envoy)
    calls = compat.source_calls(envoy)
    assert [compat.op_base(c) for c in calls].count("attention_interface") == 1
    assert tuple(compiled.names) == compat.source_names(envoy)  # the same labels nnsight serves
    assert compat.is_instrumented(envoy)  # .source instruments, permanently


def _cache_of(model: StandardizedTransformer, prompts: list[str]):  # noqa: ANN202
    from transformers import DynamicCache

    model.dispatch()
    cache = DynamicCache(config=model.text_config)
    encoding = model.tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = compat.native_module(model)(**encoding, cache=cache, use_cache=True)
    return getattr(out, "cache", None) or out.past_key_values


def test_one_cache_row_is_broadcast_and_skipped_layers_are_left_alone() -> None:
    model = load_tiny("llama")
    cache = _cache_of(model, PROMPTS[:1])
    keys = [layer.keys.clone() for layer in cache.layers]
    compat.select_cache_rows(cache, torch.zeros(3, dtype=torch.long), from_layer=1)
    assert cache.layers[0].keys.shape[0] == 1  # before from_layer: untouched
    for layer, before in zip(cache.layers[1:], keys[1:]):
        assert layer.keys.shape[0] == 3
        assert torch.equal(layer.keys, before.expand(3, -1, -1, -1))


def test_last_cache_tokens_are_dropped_from_plain_layers_only() -> None:
    model = load_tiny("llama")
    full = _cache_of(model, ["one two three four five"])
    prefix = _cache_of(model, ["one two three four"])
    width = prefix.layers[0].keys.shape[-2]
    assert compat.drop_last_cache_tokens(full, full.layers[0].keys.shape[-2] - width)
    for a, b in zip(full.layers, prefix.layers):
        torch.testing.assert_close(a.keys, b.keys)
        torch.testing.assert_close(a.values, b.values)
    sliding = _cache_of(load_tiny("gemma2"), PROMPTS[:1])  # sliding-window layers roll their state
    assert any(type(layer).__name__ != "DynamicLayer" for layer in sliding.layers)
    width = sliding.layers[0].keys.shape[-2]
    assert not compat.drop_last_cache_tokens(sliding, 1)
    assert sliding.layers[0].keys.shape[-2] == width


def test_stored_edits_are_counted() -> None:
    model = StandardizedTransformer(tiny_model_path("gpt2"))
    assert compat.stored_edits(model) == 0
    with model.edit(inplace=True):
        model.layers_output[0] = model.layers_output[0] * 2
    assert compat.stored_edits(model) == 1
    model.clear_edits()
    assert compat.stored_edits(model) == 0


def test_position_ids_are_supplied_for_left_padding_only() -> None:
    model = load_tiny("gpt2")
    model.tokenizer.padding_side = "left"
    padded = dict(model.tokenizer(PROMPTS, return_tensors="pt", padding=True))
    compat.supply_position_ids(model, padded)
    mask = padded["attention_mask"]
    assert torch.equal(padded["position_ids"], (mask.cumsum(-1) - 1).clamp(min=0))
    alone = dict(model.tokenizer(PROMPTS[:1], return_tensors="pt"))
    compat.supply_position_ids(model, alone)
    assert "position_ids" not in alone


def _received(model: StandardizedTransformer, run) -> dict:  # noqa: ANN001
    seen: list[dict] = []
    handle = compat.native_module(model).register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(dict(kwargs)), with_kwargs=True
    )
    try:
        run()
    finally:
        handle.remove()
    (kwargs,) = seen
    return kwargs


@pytest.mark.parametrize("family", ["gpt2", "llama", "xlnet", "bloom", "opt"])
def test_text_encoding_equals_what_nnsights_pipeline_builds(family: str) -> None:
    from nnsight.modeling.transformers import TransformersModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_tiny(family)
    model.dispatch()
    inputs = ["The Eiffel Tower", ["The Eiffel Tower is in the city of", "hi"], ["a b c", "a b c"]]
    for prompts in inputs:
        as_list = [prompts] if isinstance(prompts, str) else prompts
        encoding = compat.pipeline_text_encoding(model, as_list)
        assert encoding is not None
        for kwargs in ({}, {"use_cache": False}, {"logits_to_keep": 1}):

            def nnsight_route(prompts=prompts, kwargs=kwargs) -> None:  # noqa: ANN001
                with torch.no_grad(), TransformersModel.trace(model, prompts, **kwargs):
                    compat.native_module  # noqa: B018 - a body for the block

            def direct_route(encoding=encoding, kwargs=kwargs) -> None:  # noqa: ANN001
                with torch.no_grad(), TransformersModel.trace(model, encoding, **kwargs):
                    compat.native_module  # noqa: B018 - a body for the block

            a, b = _received(model, nnsight_route), _received(model, direct_route)
            assert set(a) == set(b), (prompts, kwargs)
            for key, value in a.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, b[key]), (prompts, kwargs, key)
                else:
                    assert value == b[key], (prompts, kwargs, key)
