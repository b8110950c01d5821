"""Path patching against the same two runs built by hand with hooks on plain HF models."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from uniterp import InputError
from uniterp.patching import patch_sweep
from uniterp.path_patching import path_patch

from conftest import load_tiny
from grad_reference import O_PROJ, edit_hooks, hf_model, native_place, native_values
from reference import NATIVE, encode

CLEAN, CORRUPT = ["The capital of France is"], ["The capital of Japan is"]
FINAL = {"llama": "model.norm", "gpt2": "transformer.ln_f", "qwen2": "model.norm"}


def raw_metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, 5] - logits[:, -1, 7] + 0.5 * logits[:, -2, 11]


def _by_hand(family: str, model: Any, sender: tuple[str, int, int | None], receiver_layer: int) -> float:
    """Receivers: the MLP input of ``receiver_layer`` and the logits (the final norm's input)."""
    hf = hf_model(family)
    stack = NATIVE[family][0]
    layers = list(range(model.num_layers))
    heads = [(f"{stack}.{i}.{O_PROJ[family]}", "input") for i in layers]
    mlps = [native_place(family, "mlps_output", i) for i in layers]
    src_enc, base_enc = encode(model, CLEAN), encode(model, CORRUPT)
    src_h = native_values(family, hf, src_enc, heads, model.num_heads, "attentions_output")
    base_h = native_values(family, hf, base_enc, heads, model.num_heads, "attentions_output")
    src_m = native_values(family, hf, src_enc, mlps, model.num_heads, "mlps_output")
    base_m = native_values(family, hf, base_enc, mlps, model.num_heads, "mlps_output")
    kind, layer, index = sender
    dim = model.head_dim
    edits = []
    for i in layers:
        held = base_h[i].clone()
        if kind == "head" and i == layer:
            held[..., index * dim : (index + 1) * dim] = src_h[i][..., index * dim : (index + 1) * dim]
        edits.append((heads[i][0], "input", lambda v, held=held: held))
        edits.append((*mlps[i], lambda v, i=i: src_m[i] if kind == "mlp" and i == layer else base_m[i]))
    got: dict[str, torch.Tensor] = {}

    def record(key: str):
        def fn(v: torch.Tensor) -> torch.Tensor:
            got[key] = v.detach().clone()
            return v

        return fn

    edits.append((f"{stack}.{receiver_layer}.{'mlp' if family != 'opt' else 'fc1'}", "input", record("mlp")))
    edits.append((FINAL[family], "input", record("final")))
    with torch.no_grad(), edit_hooks(hf, edits):
        hf(**base_enc)
    patch = [
        (f"{stack}.{receiver_layer}.mlp", "input", lambda v: got["mlp"]),
        (FINAL[family], "input", lambda v: got["final"]),
    ]
    with torch.no_grad(), edit_hooks(hf, patch):
        logits = hf(**base_enc).logits
    return float(raw_metric(logits).sum())


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_path_patching_equals_the_two_runs_by_hand(family: str) -> None:
    model = load_tiny(family)
    senders = ["head.0.1", "mlp.0", "head.1.3"]
    result = path_patch(model, CLEAN, CORRUPT, raw_metric, senders, ["mlp.2", "logits"], batch_size=2)
    assert result.axes == ("sender",) and result.labels["sender"] == senders
    want = [_by_hand(family, model, ("head", 0, 1), 2), _by_hand(family, model, ("mlp", 0, None), 2)]
    want.append(_by_hand(family, model, ("head", 1, 3), 2))
    torch.testing.assert_close(result.values, torch.tensor(want), atol=1e-6, rtol=0)


def test_a_last_layer_head_of_a_parallel_block_reaches_only_the_logits() -> None:
    model = load_tiny("gpt_neox")
    last = model.num_layers - 1
    # its MLP reads the layer input, so the head's only path is its write to the logits
    path = path_patch(model, CLEAN, CORRUPT, raw_metric, [f"head.{last}.{h}" for h in range(4)], "logits")
    sweep = patch_sweep(model, CLEAN, CORRUPT, raw_metric, f"head_outputs.{last}", over=("head",))
    torch.testing.assert_close(path.values, sweep.values, atol=1e-6, rtol=0)
    llama = load_tiny("llama")
    q = path_patch(llama, CLEAN, CORRUPT, raw_metric, "head.0.0", ["q.2.1", "k.2.0", "v.1.1"])
    assert q.values.shape == (1,) and q.values[0] != q.corrupted_metric


def test_path_patching_refusals() -> None:
    model = load_tiny("llama")
    with pytest.raises(InputError, match="not after"):
        path_patch(model, CLEAN, CORRUPT, raw_metric, "head.2.0", "mlp.1")
    with pytest.raises(InputError, match="not a node name"):
        path_patch(model, CLEAN, CORRUPT, raw_metric, "head.2", "logits")
    with pytest.raises(InputError, match="layers 0 to 2"):
        path_patch(model, CLEAN, CORRUPT, raw_metric, "mlp.7", "logits")
    with pytest.raises(InputError, match="not after"):
        path_patch(load_tiny("gpt_neox"), CLEAN, CORRUPT, raw_metric, "head.0.0", "mlp.0")
