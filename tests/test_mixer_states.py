"""``model.mixer_states`` against the state a plain HF forward leaves in its own cache (or module)."""

from __future__ import annotations

import pytest
import torch

from uniterp import (
    InputError,
    LayerIndexError,
    OutsideTraceError,
    StandardizedTransformer,
    UnavailableError,
)
from uniterp._mixer_states import locate_mixer_states
from uniterp._nnsight_compat import native_module
from uniterp.cache import run_with_cache
from uniterp.testing import tiny_model_path

from conftest import PROMPTS, load_tiny, model_and_reference
from reference import encode

TWO = PROMPTS[:2]

# Families whose layers keep a recurrent state: state-space (Mamba, Mamba-2), gated delta
# nets, lightning attention (MiniMax's own cache) and RG-LRU (held on the module).
STATEFUL = [
    "mamba",
    "mamba2",
    "falcon_mamba",
    "jamba",
    "bamba",
    "zamba2",
    "falcon_h1",
    "granitemoehybrid",
    "nemotron_h",
    "qwen3_next",
    "olmo_hybrid",
    "kimi_linear",
    "minimax",
    "recurrent_gemma",
]


def _hf_states(
    root: torch.nn.Module, model_type: str, encoding: dict[str, torch.Tensor]
) -> dict[int, torch.Tensor]:
    """Every layer's recurrent state after one plain HF forward: from the returned cache, or the
    RG-LRU modules (RecurrentGemma keeps its state on them)."""
    with torch.no_grad():
        out = root(**encoding, use_cache=True)
    if model_type == "recurrent_gemma":
        layers = root.model.layers
        return {
            i: layer.temporal_block.rg_lru.recurrent_states.clone()
            for i, layer in enumerate(layers)
            if hasattr(layer.temporal_block, "rg_lru")
        }
    cache = out.past_key_values
    if hasattr(cache, "get_linear_cache"):  # MiniMax
        return {i: s for i, s in enumerate(cache.linear_cache) if isinstance(s, torch.Tensor)}
    states: dict[int, torch.Tensor] = {}
    for i, layer in enumerate(cache.layers):
        initialized = getattr(layer, "is_recurrent_states_initialized", {})
        if initialized.get(0):
            states[i] = layer.recurrent_states[0].clone()
    return states


@pytest.mark.parametrize("model_type", STATEFUL)
def test_mixer_states_equal_the_state_hf_leaves(model_type: str) -> None:
    model, root = model_and_reference(model_type)
    expected = _hf_states(root, model_type, encode(model, TWO))
    assert expected, "the reference found no state: the family list is wrong"
    sites, reasons = model.mixer_states.located()
    assert set(sites) == set(expected)  # the same layers, found independently
    assert set(reasons) == set(range(model.num_layers)) - set(expected)
    saved: dict[int, torch.Tensor] = {}
    with torch.no_grad(), model.trace(TWO):
        for i in sorted(sites):
            saved[i] = model.mixer_states[i].save()
    for i, state in saved.items():
        assert state.shape == expected[i].shape and state.shape[0] == 2
        torch.testing.assert_close(state, expected[i], rtol=0, atol=1e-6)
    assert model.support()["mixer_states"].layers == tuple(sorted(expected))


def test_each_invoke_gets_its_own_rows() -> None:
    model, root = model_and_reference("qwen3_next")
    first, second = (_hf_states(root, "qwen3_next", encode(model, [p]))[0] for p in TWO)
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(TWO[0]):
            a = model.mixer_states[0].save()
        with tracer.invoke(TWO[1]):
            b = model.mixer_states[0].save()
    assert a.shape[0] == b.shape[0] == 1
    torch.testing.assert_close(a, first, rtol=0, atol=1e-5)  # own forward vs padded batch: tolerance
    assert not torch.allclose(a, b)
    assert b.shape == second.shape


def test_each_generation_step_keeps_its_own_state() -> None:
    # the cache's state buffer is overwritten in place at every step: each read is a copy
    model, root = model_and_reference("mamba")
    prompt = TWO[0]
    first = _hf_states(root, "mamba", encode(model, [prompt]))[1]
    states: list[torch.Tensor] = []
    with torch.no_grad(), model.generate(prompt, max_new_tokens=3, do_sample=False) as tracer:
        for _ in tracer.iter[:3]:
            states.append(model.mixer_states[1].save())
    assert len(states) == 3
    torch.testing.assert_close(states[0], first, rtol=0, atol=1e-6)
    assert not torch.equal(states[0], states[1]) and not torch.equal(states[1], states[2])


def test_states_follow_the_value_order_within_a_trace() -> None:
    model = load_tiny("jamba")
    with torch.no_grad(), model.trace(TWO):
        h0 = model.layers_input[0].save()
        s0 = model.mixer_states[0].save()
        h2 = model.layers_output[2].save()
    assert h0.shape[0] == s0.shape[0] == h2.shape[0] == 2


# -- refusals ------------------------------------------------------------------------------------


def _reason(model: StandardizedTransformer, layer: int) -> str:
    with pytest.raises(UnavailableError) as caught, torch.no_grad(), model.trace(TWO):
        model.mixer_states[layer].save()
    return str(caught.value)


def test_softmax_attention_layers_are_refused_with_the_reason() -> None:
    qwen = load_tiny("qwen3_next")
    assert "keys and values" in _reason(qwen, 2) and "mixer_states[2]" in _reason(qwen, 2)
    gpt2 = load_tiny("gpt2")
    assert not gpt2.mixer_states.available(0)
    assert "softmax attention" in _reason(gpt2, -1)


def test_a_convolution_mixer_has_no_recurrent_state() -> None:
    lfm2 = load_tiny("lfm2")
    sites, reasons = lfm2.mixer_states.located()
    assert not sites
    assert any("convolution" in reason for reason in reasons.values())


def test_writes_and_bad_indices_are_refused() -> None:
    model = load_tiny("mamba")
    with pytest.raises(InputError, match="read-only"), torch.no_grad(), model.trace(TWO):
        model.mixer_states[0] = torch.zeros(2, 4)
    with pytest.raises(LayerIndexError), torch.no_grad(), model.trace(TWO):
        model.mixer_states[model.num_layers].save()
    for odd in ("0", 1.5, slice(0, 2), None):
        with pytest.raises(LayerIndexError, match="must be an int"), torch.no_grad(), model.trace(TWO):
            model.mixer_states[odd].save()  # type: ignore[index]
    with pytest.raises(InputError, match="read-only"), torch.no_grad(), model.trace(TWO):
        model.sites["mixer_states.0"] = torch.zeros(3)
    with pytest.raises(LayerIndexError):
        run_with_cache(model, TWO, names=["mixer_states.9"])
    with pytest.raises(InputError, match="not a standardized value"):
        run_with_cache(model, TWO, names=["mixer_states"])
    with pytest.raises(OutsideTraceError):
        model.mixer_states[0]  # noqa: B018
    with (
        pytest.raises(UnavailableError, match="use_cache=True"),
        torch.no_grad(),
        model.trace(TWO, use_cache=False),
    ):
        model.mixer_states[0].save()


def test_pure_attention_models_find_their_answer_without_a_forward() -> None:
    model = StandardizedTransformer(tiny_model_path("llama"))
    calls: list[int] = []
    model.dispatch()
    handle = native_module(model).register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        sites, reasons = model.mixer_states.located()
    finally:
        handle.remove()
    assert not sites and len(reasons) == model.num_layers and not calls


def test_a_model_that_cannot_run_with_a_cache_keeps_its_other_values(monkeypatch: pytest.MonkeyPatch) -> None:
    model = StandardizedTransformer(tiny_model_path("mamba"))
    model.dispatch()
    mixer = native_module(model).backbone.layers[0].mixer

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("no cache here")

    handle = mixer.register_forward_pre_hook(broken)
    try:
        sites, reasons = locate_mixer_states(model)
    finally:
        handle.remove()
    assert not sites and all("no cache here" in reason for reason in reasons.values())
    model._states_view._located = (sites, reasons)  # as if the load-time probe had failed
    with torch.no_grad(), model.trace(TWO):
        h = model.layers_output[0].save()
    assert h.shape[0] == 2
    assert "no cache here" in _reason(model, 0)


@pytest.mark.parametrize("model_type", ["falcon_h1", "zamba2", "jamba"])
def test_run_with_cache_keeps_the_states_in_forward_order(model_type: str) -> None:
    # Falcon-H1 runs its Mamba mixer before its attention, Zamba2's hybrid layer after it: the cache
    # reads each state where the mixer runs, among every other value of the layer
    model, root = model_and_reference(model_type)
    expected = _hf_states(root, model_type, encode(model, TWO))
    cache = run_with_cache(model, TWO, names=lambda name: True)
    for i, state in expected.items():
        torch.testing.assert_close(cache[f"mixer_states.{i}"], state, rtol=0, atol=1e-6)
        assert f"mixer_states.{i}" in cache
    sites = model.mixer_states.located()[0]
    assert any(site.after_attention for site in sites.values()) == (model_type == "zamba2")


def test_named_reads_and_refusals_of_states() -> None:
    model = load_tiny("qwen3_next")
    with torch.no_grad(), model.trace(TWO):
        named = model.sites["mixer_states.0"].save()
        direct = model.mixer_states[1].save()
    assert direct.shape == named.shape
    with pytest.raises(UnavailableError, match="keys and values"):
        run_with_cache(model, TWO, names=["mixer_states.2"])
    assert "mixer_states.2" not in run_with_cache(model, TWO, names=lambda name: name.startswith("mixer"))
