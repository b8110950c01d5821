"""Attention probabilities: located inside the attention forward, equal to HF's, writable."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

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


# Types whose probabilities need more than finding the softmax, with the native module
# that makes exactly one dropout call, on the probabilities (read off the HF modeling
# files). MVP, TrOCR and XGLM use bmm-style attention: the probabilities are flattened
# as (batch * heads, q, k). XGLM also has a softmax in a float16-only branch. BigBird
# replaces its attention module in its first forward.
_PROBS_DROPOUT = {
    "big_bird": "bert.encoder.layer.{}.attention.self",
    "mvp": "model.decoder.layers.{}.self_attn",
    "trocr": "model.decoder.layers.{}.self_attn",
    "xglm": "model.layers.{}.self_attn",
}
_PLAIN: dict[str, torch.nn.Module] = {}


def plain_eager(family: str) -> torch.nn.Module:
    """The same weights loaded by plain transformers (no nnsight), eager attention."""
    if family not in _PLAIN:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(tiny_model_path(family), attn_implementation="eager").eval()
        with torch.no_grad():  # BigBird swaps its attention module here; hooks go on the new one
            hf(input_ids=torch.tensor([[5, 6, 7]]))
        _PLAIN[family] = hf
    return _PLAIN[family]


def plain_inputs(model: StandardizedTransformer, hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The left-padded batch of PROMPTS, with position ids where the forward takes them."""
    inputs = encode(model, PROMPTS)
    if "position_ids" not in inspect.signature(hf.forward).parameters:
        del inputs["position_ids"]
    return inputs


@contextmanager
def edit_dropout_output(hf: torch.nn.Module, path: str, edit: Callable) -> Iterator[dict[str, int]]:
    """Plain torch: apply ``edit`` to what each ``nn.functional.dropout`` call inside module ``path`` returns.

    A pre-hook and a hook bracket the module's forward; ``nn.Dropout`` calls the
    functional dropout too. Yields a counter of the calls edited.
    """
    original = torch.nn.functional.dropout
    state = {"inside": 0, "calls": 0}

    def dropout(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = original(x, *args, **kwargs)
        if not state["inside"]:
            return y
        state["calls"] += 1
        return edit(y.clone())

    module = hf.get_submodule(path)
    handles = [
        module.register_forward_pre_hook(lambda *_: state.update(inside=1)),
        module.register_forward_hook(lambda *_: state.update(inside=0)),
    ]
    torch.nn.functional.dropout = dropout
    try:
        yield state
    finally:
        torch.nn.functional.dropout = original
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("family", sorted(_PROBS_DROPOUT))
def test_probabilities_equal_plain_hf_output_attentions(family: str) -> None:
    model = eager(family)
    assert all(model.attention_probabilities.available(i) for i in range(model.num_layers))
    saved: list[torch.Tensor] = []
    with torch.no_grad(), model.trace(PROMPTS):
        for i in range(model.num_layers):
            saved.append(model.attention_probabilities[i].save())
    hf = plain_eager(family)
    inputs = plain_inputs(model, hf)
    with torch.no_grad():
        reference = hf(**inputs, output_attentions=True).attentions
    batch, seq = inputs["input_ids"].shape
    assert len(reference) == model.num_layers
    for i, (ours, theirs) in enumerate(zip(saved, reference)):
        assert ours.shape == (batch, hf.config.num_attention_heads, seq, seq), f"layer {i}: {ours.shape}"
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6, msg=f"{family} layer {i}")
        sums = ours.sum(-1)
        torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-5)


def _zero_head(probs: torch.Tensor, head: int, heads: int) -> torch.Tensor:
    """Zero one head's probabilities, in the (batch, heads, q, k) or flattened (batch * heads, q, k) layout."""
    if probs.ndim == 4:
        probs[:, head] = 0
    else:  # HF flattens with .view(bsz * num_heads, ...): row b * heads + h
        probs[head::heads] = 0
    return probs


@pytest.mark.parametrize("family", sorted(_PROBS_DROPOUT))
def test_writing_probabilities_matches_a_plain_hook(family: str) -> None:
    model = eager(family)
    hf = plain_eager(family)
    heads = hf.config.num_attention_heads
    with torch.no_grad():
        with model.trace(PROMPTS):
            base = model.logits.save()
        with model.trace(PROMPTS):
            edited = model.attention_probabilities[1].clone()
            model.attention_probabilities[1] = _zero_head(edited, 1, heads)
            changed = model.logits.save()
        with model.trace(PROMPTS):
            model.attention_probabilities[1] = model.attention_probabilities[1].clone()
            same = model.logits.save()
        inputs = plain_inputs(model, hf)
        plain = hf(**inputs).logits
        with edit_dropout_output(
            hf, _PROBS_DROPOUT[family].format(1), lambda p: _zero_head(p, 1, heads)
        ) as seen:
            hooked = hf(**inputs).logits
    assert seen["calls"] == 1
    torch.testing.assert_close(base, plain, rtol=0, atol=1e-5)
    assert not torch.allclose(base, changed)
    torch.testing.assert_close(changed, hooked, rtol=0, atol=1e-5)
    assert torch.equal(base, same)


def test_flattened_probabilities_with_several_invokes() -> None:
    """Each invoke reads and writes its own rows of a (batch * heads, q, k) tensor."""
    model = eager("mvp")
    with torch.no_grad():
        with model.trace(PROMPTS):
            whole = model.attention_probabilities[1].save()
            base = model.logits.save()
        with model.trace() as tracer:
            with tracer.invoke(PROMPTS[:2]):
                first = model.attention_probabilities[1].save()
                first_logits = model.logits.save()
            with tracer.invoke(PROMPTS[2:]):
                second = model.attention_probabilities[1].clone().save()
                model.attention_probabilities[1] = torch.zeros_like(second)
                second_logits = model.logits.save()
    assert torch.equal(first, whole[:2])
    assert torch.equal(second, whole[2:])
    assert torch.equal(first_logits, base[:2])
    assert not torch.allclose(second_logits, base[2:])


def test_flattened_probabilities_refuse_a_wrong_shape() -> None:
    from uniterp import ShapeError

    model = eager("xglm")
    with pytest.raises(
        ShapeError, match=r"takes a tensor of shape \(\d+, 4, \d+, \d+\) \(batch, heads, q, k\)"
    ):
        with model.trace(PROMPTS):
            probs = model.attention_probabilities[0]
            model.attention_probabilities[0] = probs.flatten(0, 1)


def test_ops_in_a_branch_that_does_not_run_are_skipped() -> None:
    """XGLM softmaxes in float32 and casts back only for float16 weights; in float32 that never runs."""
    from uniterp._attention import _first_that_runs

    model = eager("xglm")
    # nnsight 0.8 labels: the float16 branch's softmax and cast, then the float32 softmax
    ops = [("to_0",), ("nn_functional_softmax_0",), ("nn_functional_softmax_1",)]
    assert _first_that_runs(model, 0, "self_attn", ops) == ("nn_functional_softmax_1",)
    half = StandardizedTransformer(tiny_model_path("xglm"), enable_attention_probs=True, dtype=torch.float16)
    assert _first_that_runs(half, 0, "self_attn", ops) == ("to_0",)
    assert all(half.attention_probabilities.available(i) for i in range(half.num_layers))


def test_probabilities_that_never_arrive_are_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """An op that never runs is reported as unavailable, not raised at load."""
    from uniterp import _attention

    monkeypatch.setattr(
        _attention, "_probability_ops", lambda names: [("to_0", "to_0")] if "to_0" in names else []
    )
    model = StandardizedTransformer(tiny_model_path("xglm"), enable_attention_probs=True)
    assert not model.attention_probabilities.available(0)
    with pytest.raises(UnavailableError, match="not verified: reading them failed: OutOfOrderError"):
        with model.trace(PROMPTS):
            model.attention_probabilities[0].save()
