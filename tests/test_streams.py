"""Models that keep several residual streams per token, and models whose readout is not a lens.

Hyper-connections (DeepSeek-V4, HY-V4, Qwen4-Exp) and AltUp (Gemma 3n) carry
``n`` residual streams per token, packed natively as ``(batch, seq, n, hidden)``,
``(batch, seq, n * hidden)`` or ``(n, batch, seq, hidden)``. uniterp shows layer
values as ``(batch, seq, n, hidden)``; the references below are the native
decoder layers' outputs captured with plain hooks and unpacked here by hand.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from uniterp import UnavailableError

from conftest import PROMPTS, model_and_reference
from reference import encode, first_tensor, hooks

# model_type -> (decoder stack, native packing of the streams, number of streams, stream readout
# module applied before the final norm or None when the model merges streams in inline code,
# final norm or None)
STREAMS: dict[str, tuple[str, str, int, str | None, str | None]] = {
    "deepseek_v4": ("model.layers", "split", 2, "model.hc_head", "model.norm"),
    "hy_v4": ("model.layers", "split", 4, "model.hc_head", "model.norm"),
    "qwen4_exp_text": ("model.layers", "packed", 4, "model.hyper_connection_mixer", None),
    "gemma3n_text": ("model.layers", "leading", 2, None, None),
}


def _unpack(x: torch.Tensor, packing: str, n: int) -> torch.Tensor:
    if packing == "packed":
        return x.reshape(*x.shape[:-1], n, x.shape[-1] // n)
    if packing == "leading":
        return x.permute(1, 2, 0, 3)
    return x


def _native_outputs(hf: torch.nn.Module, stack: str, n_layers: int, prompts: list[str], model: Any) -> list:
    seen: list[torch.Tensor] = [None] * n_layers  # type: ignore[list-item]

    def grab(i: int) -> Any:
        def hook(_m: Any, _a: Any, _k: Any, out: Any) -> None:
            seen[i] = first_tensor(out).detach().clone()

        return hook

    with torch.no_grad(), hooks(hf, [(f"{stack}.{i}", grab(i)) for i in range(n_layers)]):
        logits = hf(**encode(model, prompts)).logits
    return [seen, logits]


@pytest.mark.parametrize("model_type", sorted(STREAMS))
def test_layer_values_are_the_native_streams(model_type: str) -> None:
    model, hf = model_and_reference(model_type)
    stack, packing, n, _, _ = STREAMS[model_type]
    assert model.check().passed
    saved: list[torch.Tensor] = []
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad(), model.trace(PROMPTS):
        for i in range(model.num_layers):
            saved.append(model.layers_output[i].save())
        out["logits"] = model.logits.save()
    native, logits = _native_outputs(hf, stack, model.num_layers, PROMPTS, model)
    assert torch.equal(out["logits"], logits)
    for i in range(model.num_layers):
        expected = _unpack(native[i], packing, n)
        assert saved[i].shape[-2:] == (n, model.hidden_size)
        assert torch.equal(saved[i], expected), f"{model_type}: layers_output[{i}]"


@pytest.mark.parametrize("model_type", sorted(STREAMS))
def test_lens_is_the_models_own_readout_or_refused(model_type: str) -> None:
    model, hf = model_and_reference(model_type)
    stack, packing, n, readout, norm = STREAMS[model_type]
    if readout is None:
        assert model.lens_unavailable and "residual streams" in model.lens_unavailable
        assert not model.support()["project_on_vocab"].available
        with pytest.raises(UnavailableError, match="project_on_vocab"), model.trace(PROMPTS):
            model.project_on_vocab(model.layers_output[-1]).save()
        return
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad(), model.trace(PROMPTS):
        out["mid"] = model.project_on_vocab(model.layers_output[0]).save()
        out["last"] = model.project_on_vocab(model.layers_output[-1][:, -1]).save()
        out["logits"] = model.logits.save()
    native, _ = _native_outputs(hf, stack, model.num_layers, PROMPTS, model)
    with torch.no_grad():
        merged = hf.get_submodule(readout)(native[0])
        normed = hf.get_submodule(norm)(merged) if norm else merged
        reference_mid = hf.lm_head(normed)
    torch.testing.assert_close(out["last"], out["logits"][:, -1])
    torch.testing.assert_close(out["mid"], reference_mid)


@pytest.mark.parametrize("model_type", sorted(STREAMS))
def test_writes_and_steering_equal_plain_hooks(model_type: str) -> None:
    model, hf = model_and_reference(model_type)
    stack, packing, n, _, _ = STREAMS[model_type]
    vector = torch.randn(2, model.hidden_size, generator=torch.Generator().manual_seed(0))

    def replace_hidden(out: Any, hidden: torch.Tensor) -> Any:
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    def steer_hook(_m: Any, _a: Any, _k: Any, out: Any) -> Any:
        streams = _unpack(first_tensor(out), packing, n).clone()
        streams[:, -2:] += 3.0 * vector[:, None, :]
        if packing == "packed":
            return replace_hidden(out, streams.flatten(-2))
        if packing == "leading":
            return replace_hidden(out, streams.permute(2, 0, 1, 3))
        return replace_hidden(out, streams)

    def zero_hook(_m: Any, _a: Any, _k: Any, out: Any) -> Any:
        return replace_hidden(out, torch.zeros_like(first_tensor(out)))

    out: dict[str, torch.Tensor] = {}
    with torch.no_grad(), model.trace(PROMPTS):
        model.steer(1, vector, factor=3.0, token_positions=[-2, -1])
        out["steered"] = model.logits.save()
    with torch.no_grad(), model.trace(PROMPTS):
        model.layers_output[0] = torch.zeros_like(model.layers_output[0])
        out["zeroed"] = model.logits.save()
    with torch.no_grad(), hooks(hf, [(f"{stack}.1", steer_hook)]):
        steered = hf(**encode(model, PROMPTS)).logits
    with torch.no_grad(), hooks(hf, [(f"{stack}.0", zero_hook)]):
        zeroed = hf(**encode(model, PROMPTS)).logits
    torch.testing.assert_close(out["steered"], steered)
    torch.testing.assert_close(out["zeroed"], zeroed)


def test_readout_that_attends_over_earlier_layers_has_no_lens() -> None:
    """Inkling 2 reads out through attention over block states of earlier layers."""
    model, hf = model_and_reference("inkling2_text")
    result = model.check()
    assert result.passed, str(result)
    assert model.lens_unavailable and "readout uses more than the last layer" in model.lens_unavailable
    lens = [item for item in result.items if item.name.startswith("project_on_vocab")]
    assert [item.status for item in lens] == ["skipped"]
    with pytest.raises(UnavailableError, match="project_on_vocab"), model.trace(PROMPTS):
        model.project_on_vocab(model.layers_output[-1]).save()
    native, logits = _native_outputs(hf, "model.layers", model.num_layers, PROMPTS, model)
    saved: list[torch.Tensor] = []
    with torch.no_grad(), model.trace(PROMPTS):
        for i in range(model.num_layers):
            saved.append(model.layers_output[i].save())
    for i in range(model.num_layers):
        assert torch.equal(saved[i], native[i])
