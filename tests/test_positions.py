"""One position model: positions count within each prompt, columns count the padded batch."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from uniterp import InputError
from uniterp._positions import mask_columns, prompt_columns

from conftest import PROMPTS, model_and_reference
from reference import NATIVE, encode, hooks


def test_prompt_columns_by_hand() -> None:
    rows, cols = prompt_columns([3, 5], [0, -1, 1], width=5)
    assert cols.tolist() == [[2, 4, 3], [0, 4, 1]]
    assert rows.tolist() == [[0, 0, 0], [1, 1, 1]]
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert mask_columns(mask, [0, -1, 1]).tolist() == cols.tolist()
    with pytest.raises(InputError, match="outside prompt 0, which has 3 tokens"):
        prompt_columns([3, 5], [3], width=5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "gemma2"])
@pytest.mark.parametrize("positions", [0, [0, -1], [1]])
def test_steer_at_positions_within_each_prompt_equals_a_hook(family: str, positions: Any) -> None:
    model, hf = model_and_reference(family)
    encoding = encode(model, PROMPTS)
    mask = encoding["attention_mask"]
    wanted = [positions] if isinstance(positions, int) else positions
    vector = torch.randn(model.hidden_size)
    stack = NATIVE[family][0]

    def add(_m: Any, _a: Any, _k: Any, out: Any) -> Any:
        h = (out[0] if isinstance(out, tuple) else out).clone()
        for row in range(h.shape[0]):
            length, width = int(mask[row].sum()), h.shape[1]
            for p in wanted:
                h[row, width - length + p % length] += 2.0 * vector
        return (h, *out[1:]) if isinstance(out, tuple) else h

    with torch.no_grad(), hooks(hf, {f"{stack}.1": add}):
        reference = hf(**encoding).logits
    with torch.no_grad(), model.trace(PROMPTS):
        model.steer(1, vector, factor=2.0, prompt_positions=positions)
        logits = model.logits.save()
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)


def test_prompt_positions_in_several_invokes_use_each_invokes_rows() -> None:
    model, _ = model_and_reference("llama")
    vector = torch.randn(model.hidden_size)
    with torch.no_grad(), model.trace(PROMPTS[1:]):
        model.steer(0, vector, prompt_positions=0)
        alone = model.logits.save()
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(PROMPTS[:1]):
            model.steer(0, vector * 0, prompt_positions=0)
        with tracer.invoke(PROMPTS[1:]):
            model.steer(0, vector, prompt_positions=0)
            together = model.logits.save()
    # the second invoke's prompts are padded to the longer first prompt: compare their real tokens
    mask = encode(model, PROMPTS[1:])["attention_mask"].bool()
    width = together.shape[1]
    torch.testing.assert_close(together[:, width - alone.shape[1] :][mask], alone[mask], rtol=1e-4, atol=1e-5)


def test_prompt_positions_are_checked() -> None:
    model, _ = model_and_reference("llama")
    with pytest.raises(InputError, match="outside prompt 1"), torch.no_grad():
        with model.trace(PROMPTS[:2]):
            model.steer(0, torch.ones(model.hidden_size), prompt_positions=5)
    with pytest.raises(InputError, match="not both"), torch.no_grad():
        with model.trace(PROMPTS[:2]):
            model.steer(0, torch.ones(model.hidden_size), token_positions=0, prompt_positions=0)
