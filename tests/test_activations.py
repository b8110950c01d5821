"""Tests of uniterp.activations against hooks on a plain HF model."""

from __future__ import annotations

import json
import os

import pytest
import torch

import uniterp.activations as activations
from uniterp import InputError, LayerIndexError, StandardizedTransformer
from uniterp.activations import (
    collect_token_activations_batched,
    get_token_activations,
    load_token_activations,
)

from conftest import model_and_reference
from reference import NATIVE

FAMILIES = ["gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "llama", "gemma2", "qwen2_moe", "phi"]
PROMPTS = ["The Eiffel Tower is in the city of", "hello world", "cat", "one two three four"]


@pytest.fixture(scope="module", params=FAMILIES)
def models_pair(
    request: pytest.FixtureRequest,
) -> tuple[StandardizedTransformer, torch.nn.Module]:
    return model_and_reference(request.param)


def _hf_layer_outputs(model: StandardizedTransformer, ref: torch.nn.Module, text: str) -> list[torch.Tensor]:
    """Every decoder layer's output for ``text`` alone, from forward hooks: each ``(seq, hidden)``."""
    outputs: list[torch.Tensor] = []

    def hook(_module, _args, output) -> None:
        outputs.append((output[0] if isinstance(output, tuple) else output)[0].detach().clone())

    handles = [layer.register_forward_hook(hook) for layer in ref.get_submodule(NATIVE[model.model_type][0])]
    try:
        with torch.no_grad():
            ref(**model.tokenizer(text, return_tensors="pt"))
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def test_activations_equal_hf_in_padded_batch(models_pair) -> None:
    model, ref = models_pair
    prompts = [p for p in PROMPTS if len(model.tokenizer(p).input_ids) >= 2]
    references = [
        torch.stack(_hf_layer_outputs(model, ref, text)) for text in prompts
    ]  # (layers, seq, hidden)
    for idx in (-1, 0, 1, -2):
        got = get_token_activations(model, prompts, idx=idx)
        assert got.shape == (model.num_layers, len(prompts), model.hidden_size)
        assert got.device.type == "cpu"
        for i, expected in enumerate(references):
            torch.testing.assert_close(got[:, i], expected[:, idx], atol=2e-5, rtol=1e-4)


def test_prompt_alone_equals_batch_row(models_pair) -> None:
    model, _ = models_pair
    batch = get_token_activations(model, PROMPTS, layers=[0, -1], idx=0)
    for i, text in enumerate(PROMPTS):
        alone = get_token_activations(model, text, layers=[0, -1], idx=0)
        torch.testing.assert_close(alone[:, 0], batch[:, i], atol=2e-5, rtol=1e-4)


def test_layers_order_and_negative_indices() -> None:
    model, _ = model_and_reference("llama")
    every = get_token_activations(model, PROMPTS)
    picked = get_token_activations(model, PROMPTS, layers=[-1, 0, 1])
    torch.testing.assert_close(picked, every[[model.num_layers - 1, 0, 1]])
    torch.testing.assert_close(get_token_activations(model, PROMPTS, layers=1)[0], every[1])


def test_early_stop_skips_later_layers(models_pair) -> None:
    model, _ = models_pair
    get_token_activations(model, "warm up", layers=[0])  # dispatches the real weights
    stack = model._module.get_submodule(NATIVE[model.model_type][0])
    calls = {"first": 0, "last": 0, "head": 0}
    # pre-hooks: the stop fires inside the deepest requested layer's output hook
    handles = [
        stack[0].register_forward_pre_hook(lambda *a: calls.__setitem__("first", calls["first"] + 1)),
        stack[-1].register_forward_pre_hook(lambda *a: calls.__setitem__("last", calls["last"] + 1)),
        model._module.get_output_embeddings().register_forward_pre_hook(
            lambda *a: calls.__setitem__("head", calls["head"] + 1)
        ),
    ]
    try:
        get_token_activations(model, PROMPTS, layers=[0])
        assert calls == {"first": 1, "last": 0, "head": 0}
        get_token_activations(model, PROMPTS, layers=[-1])
        assert calls == {"first": 2, "last": 1, "head": 0}
    finally:
        for handle in handles:
            handle.remove()


def test_remote_local_equals_local() -> None:
    model, _ = model_and_reference("gpt2")
    local = get_token_activations(model, PROMPTS, layers=[0, 2], idx=0)
    remote = get_token_activations(model, PROMPTS, layers=[0, 2], idx=0, remote="local")
    torch.testing.assert_close(local, remote)


def test_batched_equals_single_call(models_pair) -> None:
    model, _ = models_pair
    whole = get_token_activations(model, PROMPTS, layers=[0, 1])
    batched = collect_token_activations_batched(model, PROMPTS, batch_size=3, layers=[0, 1], tqdm=False)
    torch.testing.assert_close(batched, whole, atol=2e-5, rtol=1e-4)


def test_stream_to_safetensors_and_resume(tmp_path, monkeypatch) -> None:
    model, _ = model_and_reference("llama")
    prompts = PROMPTS + ["the cat sat on the mat"]
    out = tmp_path / "acts"
    expected = collect_token_activations_batched(model, prompts, 2, layers=[1, 0], tqdm=False)
    first = collect_token_activations_batched(model, prompts, 2, layers=[1, 0], out_dir=out, tqdm=False)
    torch.testing.assert_close(first, expected)
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "batch_000000.safetensors",
        "batch_000001.safetensors",
        "batch_000002.safetensors",
        "manifest.json",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_type"] == "llama" and manifest["layers"] == [1, 0]
    assert manifest["n_prompts"] == 5 and manifest["batch_size"] == 2 and manifest["idx"] == -1
    from safetensors.torch import load_file

    assert load_file(str(out / "batch_000002.safetensors"))["activations"].shape == (2, 1, model.hidden_size)

    calls: list[list[str]] = []
    real = activations.get_token_activations

    def counting(model, prompts, **kwargs):
        calls.append(list(prompts))
        return real(model, prompts, **kwargs)

    monkeypatch.setattr(activations, "get_token_activations", counting)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("batch_*")}
    again = collect_token_activations_batched(model, prompts, 2, layers=[1, 0], out_dir=out, tqdm=False)
    assert calls == []
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("batch_*")} == mtimes
    torch.testing.assert_close(again, expected)

    os.remove(out / "batch_000001.safetensors")
    result = collect_token_activations_batched(
        model, prompts, 2, layers=[1, 0], out_dir=out, tqdm=False, return_activations=False
    )
    assert result is None
    assert calls == [prompts[2:4]]
    torch.testing.assert_close(load_token_activations(out), expected)

    calls.clear()
    collect_token_activations_batched(
        model, prompts, 2, layers=[1, 0], out_dir=out, tqdm=False, resume=False, return_activations=False
    )
    assert len(calls) == 3


def test_stream_refuses_mismatching_directory(tmp_path) -> None:
    model, _ = model_and_reference("gpt2")
    out = tmp_path / "acts"
    collect_token_activations_batched(
        model, PROMPTS, 2, layers=[0], out_dir=out, tqdm=False, return_activations=False
    )
    with pytest.raises(InputError, match="layers"):
        collect_token_activations_batched(model, PROMPTS, 2, layers=[1], out_dir=out, tqdm=False)
    with pytest.raises(InputError, match="prompts_sha256"):
        collect_token_activations_batched(model, PROMPTS[::-1], 2, layers=[0], out_dir=out, tqdm=False)
    with pytest.raises(InputError, match="batch_size"):
        collect_token_activations_batched(model, PROMPTS, 3, layers=[0], out_dir=out, tqdm=False)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "batch_000000.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="no manifest"):
        collect_token_activations_batched(model, PROMPTS, 2, out_dir=stray, tqdm=False)
    os.remove(out / "batch_000001.safetensors")
    with pytest.raises(InputError, match="incomplete"):
        load_token_activations(out)


def test_stream_with_remote_local(tmp_path) -> None:
    model, _ = model_and_reference("gpt2")
    local = collect_token_activations_batched(model, PROMPTS, 3, layers=[1], tqdm=False)
    remote = collect_token_activations_batched(
        model, PROMPTS, 3, layers=[1], out_dir=tmp_path, tqdm=False, remote="local"
    )
    torch.testing.assert_close(local, remote)


def test_bad_input() -> None:
    model, _ = model_and_reference("gpt2")
    with pytest.raises(InputError, match="empty"):
        get_token_activations(model, [])
    with pytest.raises(InputError, match="empty string"):
        get_token_activations(model, ["ok", ""])
    with pytest.raises(InputError, match="outside prompt 1"):
        get_token_activations(model, ["The Eiffel Tower is in", "cat"], idx=3)
    with pytest.raises(InputError, match="outside prompt"):
        get_token_activations(model, ["cat"], idx=-5)
    with pytest.raises(LayerIndexError, match="out of range"):
        get_token_activations(model, PROMPTS, layers=[model.num_layers])
    with pytest.raises(InputError, match="idx"):
        get_token_activations(model, PROMPTS, idx=1.5)
    with pytest.raises(InputError, match="out_dir"):
        collect_token_activations_batched(model, PROMPTS, 2, return_activations=False)
    with pytest.raises(InputError, match="batch_size"):
        collect_token_activations_batched(model, PROMPTS, 0)


# -- damaged batch files, file permissions, progress (issue 9) --------------------------


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path) -> None:
    path.write_bytes(b"this is not a safetensors file" * 8)


def _empty(path) -> None:
    path.write_bytes(b"")


def _wrong_key(path) -> None:
    from safetensors.torch import save_file

    save_file({"something_else": torch.zeros(2, 2, 4)}, str(path))


def _wrong_shape(path) -> None:
    from safetensors.torch import save_file

    save_file({"activations": torch.zeros(2, 2, 3)}, str(path))  # hidden 3, not the model's


@pytest.mark.parametrize(
    "damage, what",
    [
        (_truncate, "not a readable safetensors file"),
        (_garbage, "not a readable safetensors file"),
        (_empty, "not a readable safetensors file"),
        (_wrong_key, "no tensor 'activations'"),
        (_wrong_shape, "has shape"),
    ],
)
@pytest.mark.parametrize("return_activations", [True, False])
def test_damaged_batch_file_on_resume_names_the_file_and_the_fix(
    tmp_path, damage, what: str, return_activations: bool
) -> None:
    model, _ = model_and_reference("gpt2")
    out = tmp_path / "acts"
    expected = collect_token_activations_batched(model, PROMPTS, 2, layers=[0, 1], out_dir=out, tqdm=False)
    damaged = out / "batch_000001.safetensors"
    damage(damaged)
    with pytest.raises(InputError) as info:
        collect_token_activations_batched(
            model, PROMPTS, 2, layers=[0, 1], out_dir=out, tqdm=False, return_activations=return_activations
        )
    message = str(info.value)
    assert str(damaged) in message and what in message
    assert "Delete batch_000001.safetensors" in message and "resume=False" in message
    with pytest.raises(InputError, match="batch_000001.safetensors is damaged"):
        load_token_activations(out)
    # the fixes work: delete the file and rerun, or recompute everything
    damaged.unlink()
    again = collect_token_activations_batched(model, PROMPTS, 2, layers=[0, 1], out_dir=out, tqdm=False)
    torch.testing.assert_close(again, expected)
    damage(damaged)
    fresh = collect_token_activations_batched(
        model, PROMPTS, 2, layers=[0, 1], out_dir=out, tqdm=False, resume=False
    )
    torch.testing.assert_close(fresh, expected)
    torch.testing.assert_close(load_token_activations(out), expected)


def test_batch_files_get_the_usual_permissions(tmp_path) -> None:
    model, _ = model_and_reference("gpt2")
    previous = os.umask(0o022)
    try:
        out = tmp_path / "acts"
        collect_token_activations_batched(model, PROMPTS, 2, layers=[0], out_dir=out, tqdm=False)
        modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
        os.umask(0o077)
        activations.save_safetensors(tmp_path / "private.safetensors", {"a": torch.zeros(2)})
        private = (tmp_path / "private.safetensors").stat().st_mode & 0o777
    finally:
        os.umask(previous)
    assert modes == {name: 0o644 for name in modes}, modes  # safetensors alone writes 0600
    assert private == 0o600  # the umask is respected, not overridden
    assert not list(out.glob("*.tmp")) and not list(tmp_path.glob("*.tmp"))


def test_collect_shows_a_progress_bar_only_for_several_batches(capfd: pytest.CaptureFixture[str]) -> None:
    model, _ = model_and_reference("gpt2")
    capfd.readouterr()
    collect_token_activations_batched(model, PROMPTS, batch_size=len(PROMPTS), layers=[0])
    assert "activations" not in capfd.readouterr().err
    collect_token_activations_batched(model, PROMPTS, batch_size=2, layers=[0])
    assert "activations" in capfd.readouterr().err
