"""Tests of uniterp.steering against hooks and ``generate`` on a plain HF model."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from uniterp import InputError, LayerIndexError, ShapeError, StandardizedTransformer
from uniterp.steering import generate_with_steering, steering_vector

from conftest import model_and_reference
from reference import NATIVE

FAMILIES = ["gpt2", "opt", "bloom", "falcon", "llama", "gemma2", "qwen2_moe", "phi"]
POSITIVE = ["I love this film", "What a wonderful day", "great"]
NEGATIVE = ["I hate it", "What an awful, terrible day it was"]
PROMPTS = ["The Eiffel Tower is in the city of", "hello"]


@pytest.fixture(scope="module", params=FAMILIES)
def models_pair(
    request: pytest.FixtureRequest,
) -> tuple[StandardizedTransformer, torch.nn.Module]:
    return model_and_reference(request.param)


def _layer_module(model: StandardizedTransformer, ref: torch.nn.Module, layer: int) -> torch.nn.Module:
    return ref.get_submodule(NATIVE[model.model_type][0])[layer]


def _hidden_at(model, ref, text: str, layer: int, position: int) -> torch.Tensor:
    """``layers_output[layer]`` of ``text`` alone at ``position``, from a forward hook."""
    seen: list[torch.Tensor] = []

    def hook(_module, _args, output) -> None:
        seen.append((output[0] if isinstance(output, tuple) else output)[0, position].detach().clone())

    handle = _layer_module(model, ref, layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            ref(**model.tokenizer(text, return_tensors="pt"))
    finally:
        handle.remove()
    return seen[0]


def _hf_generate(
    model,
    ref,
    prompts: list[str],
    max_new_tokens: int,
    edit: Callable[[torch.Tensor], torch.Tensor] | None = None,
    layers: tuple[int, ...] = (),
    **kwargs,
) -> torch.Tensor:
    """Greedy HF ``generate`` on the left-padded batch, with ``edit`` applied to layer outputs by hooks."""

    def hook(_module, _args, output):
        if isinstance(output, tuple):
            return (edit(output[0]), *output[1:])
        return edit(output)

    handles = [_layer_module(model, ref, layer).register_forward_hook(hook) for layer in layers]
    try:
        encoded = model.tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            return ref.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=model.tokenizer.pad_token_id,
                **kwargs,
            )
    finally:
        for handle in handles:
            handle.remove()


def test_steering_vector_is_mean_difference(models_pair) -> None:
    model, ref = models_pair
    for layer, position in ((1, -1), (-1, 0)):
        got = steering_vector(model, POSITIVE, NEGATIVE, layer=layer, position=position, batch_size=2)
        pos = torch.stack([_hidden_at(model, ref, t, layer, position) for t in POSITIVE]).float().mean(0)
        neg = torch.stack([_hidden_at(model, ref, t, layer, position) for t in NEGATIVE]).float().mean(0)
        assert got.shape == (model.hidden_size,)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, pos - neg, atol=2e-5, rtol=1e-4)


def test_factor_zero_equals_plain_greedy(models_pair) -> None:
    model, ref = models_pair
    vector = torch.randn(model.hidden_size)
    got = generate_with_steering(
        model, PROMPTS, layers=[0, 1], steering_vector=vector, factor=0.0, max_new_tokens=5
    )
    expected = _hf_generate(model, ref, PROMPTS, 5)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)
    single = generate_with_steering(model, PROMPTS[1], 0, vector, factor=0.0, max_new_tokens=3)
    assert torch.equal(single, _hf_generate(model, ref, PROMPTS[1:], 3))


def test_steering_equals_hooked_generation(models_pair) -> None:
    model, ref = models_pair
    torch.manual_seed(0)
    vector = torch.randn(model.hidden_size)
    factor = 4.0
    got = generate_with_steering(
        model, PROMPTS, layers=[1], steering_vector=vector, factor=factor, max_new_tokens=5
    )
    expected = _hf_generate(model, ref, PROMPTS, 5, edit=lambda h: h + factor * vector, layers=(1,))
    assert torch.equal(got, expected)
    plain = _hf_generate(model, ref, PROMPTS, 5)
    assert not torch.equal(got, plain), "a factor-4 random vector should change greedy output"


def test_steer_last_position_every_step() -> None:
    model, ref = model_and_reference("llama")
    torch.manual_seed(1)
    vector = torch.randn(model.hidden_size)

    def last_only(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[:, -1] += 3.0 * vector
        return h

    got = generate_with_steering(
        model, PROMPTS, [0, 2], vector, factor=3.0, max_new_tokens=4, token_positions=-1
    )
    expected = _hf_generate(model, ref, PROMPTS, 4, edit=last_only, layers=(0, 2))
    assert torch.equal(got, expected)
    # prompt only: later steps are not steered
    prompt_only = generate_with_steering(
        model,
        PROMPTS,
        [0, 2],
        vector,
        factor=3.0,
        max_new_tokens=4,
        token_positions=-1,
        steer_generated=False,
    )

    def first_only(h: torch.Tensor) -> torch.Tensor:
        if h.shape[1] > 1:
            return last_only(h)
        return h

    assert torch.equal(prompt_only, _hf_generate(model, ref, PROMPTS, 4, edit=first_only, layers=(0, 2)))


def test_generation_ending_early_on_eos_does_not_warn() -> None:
    model, ref = model_and_reference("gpt2")
    plain = _hf_generate(model, ref, PROMPTS, 6)
    eos = [int(plain[0, -4]), int(plain[1, -4])]  # both rows stop after 3 new tokens
    expected = _hf_generate(model, ref, PROMPTS, 6, eos_token_id=eos)
    assert expected.shape[1] < plain.shape[1]
    got = generate_with_steering(
        model, PROMPTS, [0], torch.zeros(model.hidden_size), factor=0.0, max_new_tokens=6, eos_token_id=eos
    )
    assert torch.equal(got, expected)


def test_remote_local_equals_local() -> None:
    model, _ = model_and_reference("gpt2")
    vector = torch.randn(model.hidden_size)
    local = generate_with_steering(model, PROMPTS, [1], vector, factor=2.0, max_new_tokens=3)
    remote = generate_with_steering(model, PROMPTS, [1], vector, factor=2.0, max_new_tokens=3, remote="local")
    assert torch.equal(local, remote)
    v_local = steering_vector(model, POSITIVE, NEGATIVE, layer=1)
    v_remote = steering_vector(model, POSITIVE, NEGATIVE, layer=1, remote="local")
    torch.testing.assert_close(v_local, v_remote)


def test_bad_input() -> None:
    model, _ = model_and_reference("gpt2")
    with pytest.raises(ShapeError, match="hidden_size"):
        generate_with_steering(model, "hi", [0], torch.zeros(model.hidden_size + 1))
    with pytest.raises(ShapeError, match="token_positions"):
        generate_with_steering(model, "hi", [0], torch.zeros(2, model.hidden_size))
    with pytest.raises(LayerIndexError):
        generate_with_steering(model, "hi", [model.num_layers], torch.zeros(model.hidden_size))
    with pytest.raises(InputError, match="max_new_tokens"):
        generate_with_steering(model, "hi", [0], torch.zeros(model.hidden_size), max_new_tokens=0)
    with pytest.raises(InputError):
        generate_with_steering(model, [], [0], torch.zeros(model.hidden_size))
    with pytest.raises(InputError, match="positive_prompts"):
        steering_vector(model, [], NEGATIVE, layer=0)
    with pytest.raises(LayerIndexError):
        steering_vector(model, POSITIVE, NEGATIVE, layer=-model.num_layers - 1)
