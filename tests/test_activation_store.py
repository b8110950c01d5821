"""`collect_activations` / `ActivationStore` against plain HF forwards with hooks on the native modules."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import uniterp.activation_store as store_module
from uniterp import InputError, UnavailableError
from uniterp.activation_store import ActivationStore, collect_activations, load_activations

from conftest import load_tiny, model_and_reference
from reference import NATIVE, first_tensor

TEXTS = [
    "The Eiffel Tower is in the city of Paris.",
    "hello world",
    "one two three four five six seven eight nine ten",
    "cat",
    "The capital of Japan is Tokyo, and the capital of France is",
    "A B C D E F G H",
    "She said that he would come back tomorrow morning.",
]


def _reference_layers(model, ref, text: str) -> torch.Tensor:  # noqa: ANN001
    """Every decoder layer's output for ``text`` alone, from hooks on the plain HF copy: (layers, seq, hidden)."""
    outputs: list[torch.Tensor] = []
    stack = ref.get_submodule(NATIVE[model.model_type][0])
    handles = [
        layer.register_forward_hook(lambda _m, _a, out: outputs.append(first_tensor(out)[0].detach().clone()))
        for layer in stack
    ]
    try:
        with torch.no_grad():
            ref(**model.tokenizer(text, return_tensors="pt"))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(outputs)


@pytest.mark.parametrize("family", ["gpt2", "llama", "opt", "falcon", "gemma2"])
def test_every_token_equals_the_model_alone(family: str, tmp_path) -> None:  # noqa: ANN001
    model, ref = model_and_reference(family)
    store = collect_activations(model, TEXTS, tmp_path, batch_size=3, shard_tokens=20, progress=False)
    lengths = [len(model.tokenizer(t)["input_ids"]) for t in TEXTS]
    assert len(store) == sum(lengths) and store.complete
    assert store.sites == [f"layers_output.{i}" for i in range(model.num_layers)]
    items = store.get("item_index")
    positions = store.get("position")
    ids = store.get("token_ids")
    for i, text in enumerate(TEXTS):
        rows = items == i
        expected = _reference_layers(model, ref, text)  # (layers, seq, hidden)
        assert torch.equal(positions[rows], torch.arange(lengths[i], dtype=torch.int32))
        assert ids[rows].tolist() == model.tokenizer(text)["input_ids"]
        for layer in range(model.num_layers):
            got = store.get(f"layers_output.{layer}")[rows]
            torch.testing.assert_close(got, expected[layer], atol=2e-5, rtol=1e-4)


def test_shards_hold_whole_batches_within_the_budget(tmp_path) -> None:  # noqa: ANN001
    model = load_tiny("llama")
    store = collect_activations(model, TEXTS, tmp_path, batch_size=2, shard_tokens=25, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["n_tokens"] == len(store) and manifest["n_items"] == len(TEXTS)
    assert all(s["n_items"] % 2 == 0 for s in store.shards[:-1])  # whole batches
    batch_tokens = [
        sum(len(model.tokenizer(t)["input_ids"]) for t in TEXTS[i : i + 2]) for i in range(0, len(TEXTS), 2)
    ]
    for shard in store.shards:
        assert shard["n_tokens"] <= max(25, max(batch_tokens))
    assert len(store.shards) > 2
    whole = torch.cat([store.shard(i)["layers_output.1"] for i in range(len(store.shards))])
    assert torch.equal(whole, store.get("layers_output.1"))
    assert torch.equal(store.get("layers_output.1", 7, 40), whole[7:40])
    batches = list(store.iter_batches("layers_output.1", 16))
    assert torch.equal(torch.cat(batches), whole) and all(len(b) == 16 for b in batches[:-1])
    assert manifest["sites"][0]["shape"] == [model.hidden_size]


def test_bf16_storage_is_the_values_rounded(tmp_path) -> None:  # noqa: ANN001
    model = load_tiny("gpt2")
    full = collect_activations(model, TEXTS, tmp_path / "f32", batch_size=4, progress=False)
    half = collect_activations(
        model, TEXTS, tmp_path / "bf16", batch_size=4, dtype=torch.bfloat16, progress=False
    )
    assert half.manifest["dtype"] == "bfloat16"
    value = half.get("layers_output.0")
    assert value.dtype == torch.bfloat16
    assert torch.equal(value, full.get("layers_output.0").to(torch.bfloat16))


def test_an_interrupted_collection_resumes_to_the_same_values(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    model = load_tiny("llama")
    whole = collect_activations(
        model, TEXTS, tmp_path / "whole", batch_size=2, shard_tokens=20, progress=False
    )
    real = store_module._flush
    calls: list[int] = []

    def crash_after_two(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(store_module, "_flush", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        collect_activations(model, TEXTS, tmp_path / "cut", batch_size=2, shard_tokens=20, progress=False)
    monkeypatch.setattr(store_module, "_flush", real)
    partial = ActivationStore(tmp_path / "cut")
    assert not partial.complete and len(partial.shards) == 2
    read: list[str] = []

    def counted():  # noqa: ANN202 - a generator: the inputs are streamed, never listed
        for text in TEXTS:
            read.append(text)
            yield text

    resumed = collect_activations(
        model, counted(), tmp_path / "cut", batch_size=2, shard_tokens=20, progress=False
    )
    assert resumed.complete and len(resumed) == len(whole)
    for key in [*whole.sites, "token_ids", "item_index", "position"]:
        assert torch.equal(resumed.get(key), whole.get(key)), key
    with pytest.raises(InputError, match="differ"):
        collect_activations(
            model, TEXTS[::-1], tmp_path / "cut", batch_size=2, shard_tokens=20, progress=False
        )
    with pytest.raises(InputError, match="different collection"):
        collect_activations(model, TEXTS, tmp_path / "cut", batch_size=3, shard_tokens=20, progress=False)
    again = collect_activations(
        model, TEXTS[:2], tmp_path / "cut", batch_size=3, shard_tokens=20, resume=False, progress=False
    )
    assert again.get("item_index").max() == 1


def test_a_damaged_shard_is_collected_again(tmp_path) -> None:  # noqa: ANN001
    model = load_tiny("gpt2")
    first = collect_activations(model, TEXTS, tmp_path, batch_size=2, shard_tokens=20, progress=False)
    expected = first.get("layers_output.1")
    victim = tmp_path / first.shards[1]["file"]
    victim.write_bytes(victim.read_bytes()[:50])
    with pytest.raises(InputError, match="damaged"):
        ActivationStore(tmp_path).get("layers_output.1")
    again = collect_activations(model, TEXTS, tmp_path, batch_size=2, shard_tokens=20, progress=False)
    assert torch.equal(again.get("layers_output.1"), expected)


def test_token_ids_max_tokens_and_other_sites(tmp_path) -> None:  # noqa: ANN001
    model = load_tiny("llama")
    ids = [model.tokenizer(t)["input_ids"] for t in TEXTS]
    from_text = collect_activations(
        model, TEXTS, tmp_path / "a", progress=False, sites=["layers_input.0", "mlp_neurons"]
    )
    from_ids = collect_activations(
        model,
        (torch.tensor(i) for i in ids),
        tmp_path / "b",
        progress=False,
        sites=["layers_input.0", "mlp_neurons"],
    )
    assert from_text.sites == ["layers_input.0"] + [f"mlp_neurons.{i}" for i in range(model.num_layers)]
    for key in from_text.sites:
        assert torch.equal(from_text.get(key), from_ids.get(key))
    cut = collect_activations(model, TEXTS, tmp_path / "c", max_tokens=13, batch_size=2, progress=False)
    assert len(cut) == 13
    uncut = collect_activations(model, TEXTS, tmp_path / "e", batch_size=2, progress=False)
    assert torch.equal(cut.get("layers_output.0"), uncut.get("layers_output.0")[:13])  # same batches
    short = collect_activations(model, TEXTS, tmp_path / "d", max_seq_len=3, progress=False)
    assert int(short.get("position").max()) == 2


def test_a_value_read_inside_the_attention_goes_through_a_trace(tmp_path) -> None:  # noqa: ANN001
    model = load_tiny("llama")
    store = collect_activations(model, TEXTS[:3], tmp_path, sites=["queries.1"], progress=False)
    assert store.manifest["sites"][0]["shape"] == [model.num_heads, model.head_dim]
    with torch.no_grad(), model.trace(TEXTS[:3]):  # the same batch, left-padded
        mask = model.attention_mask.save()
        queries = model.queries[1].save()  # (batch, heads, seq, head_dim)
    first = store.get("queries.1")[store.get("item_index") == 0]
    assert torch.equal(first, queries[0].transpose(0, 1)[mask[0].bool()])


def test_bad_arguments_raise_uniterp_errors(tmp_path) -> None:  # noqa: ANN001
    model = load_tiny("gpt2")
    with pytest.raises(InputError, match="batch_size"):
        collect_activations(model, TEXTS, tmp_path, batch_size=0)
    with pytest.raises(InputError, match="one string"):
        collect_activations(model, "a text", tmp_path)
    with pytest.raises(InputError, match="token axis"):
        collect_activations(model, TEXTS, tmp_path, sites="next_token_probs")
    with pytest.raises(InputError, match="floating"):
        collect_activations(model, TEXTS, tmp_path, dtype=torch.int8)
    with pytest.raises(InputError, match="input 1 holds token id"):
        collect_activations(model, [[1, 2], [1, 10**6]], tmp_path / "x", progress=False)
    with pytest.raises(InputError, match="input 0 is a dict"):
        collect_activations(model, [{"text": "a"}], tmp_path / "y", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hybrid = load_tiny("jamba")
    with pytest.raises(UnavailableError):
        collect_activations(hybrid, TEXTS, tmp_path / "z", sites="attentions_output.0", progress=False)
    with pytest.raises(InputError, match="no manifest"):
        load_activations(tmp_path / "nothing")
    from uniterp.activations import collect_token_activations_batched

    collect_token_activations_batched(model, TEXTS[:2], 1, out_dir=tmp_path / "other", tqdm=False)
    for resume in (True, False):  # another tool's folder is never overwritten
        with pytest.raises(InputError, match="not a collect_activations store"):
            collect_activations(model, TEXTS, tmp_path / "other", resume=resume, progress=False)
    assert (tmp_path / "other" / "batch_000001.safetensors").exists()
    store = collect_activations(model, TEXTS[:2], tmp_path / "ok", progress=False)
    with pytest.raises(InputError, match="not stored"):
        store.get("mlps_output.0")
    with pytest.raises(InputError, match="outside"):
        store.get("layers_output.0", 0, len(store) + 1)


def test_the_progress_bar_counts_tokens(tmp_path) -> None:  # noqa: ANN001
    seen: dict[str, object] = {"updates": 0}

    class Bar:
        def __init__(self, **kwargs) -> None:  # noqa: ANN003
            seen.update(kwargs)

        def update(self, count: int) -> None:
            seen["updates"] = int(seen["updates"]) + count

        def close(self) -> None:
            seen["closed"] = True

    model = load_tiny("gpt2")
    store = collect_activations(model, TEXTS, tmp_path, batch_size=2, progress=Bar)
    assert seen["unit"] == "tok" and seen["unit_scale"] is True and seen["closed"] is True
    assert seen["updates"] == len(store)
