"""Patchscopes against per-layer reference loops built from plain HF forwards and hooks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from uniterp import InputError, LayerIndexError, ShapeError, StandardizedTransformer
from uniterp.patchscope import (
    TargetPrompt,
    TargetPromptBatch,
    it_repeat_prompt,
    patch_object_attn_lens,
    patchscope_generate,
    patchscope_lens,
    repeat_prompt,
)
from uniterp.testing import build_tiny_tokenizer

from conftest import load_tiny
from reference import NATIVE, first_tensor, hf_forward, hidden_arg

FAMILIES = ["gpt2", "llama", "gemma2", "falcon", "opt", "bloom", "qwen3_moe", "phi"]
SOURCES = ["The Eiffel Tower is in the city of", "hello world"]
TOL = {"atol": 1e-5, "rtol": 1e-4}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(family: str) -> StandardizedTransformer:
    return load_tiny(family)


# -- independent references: one plain HF forward per layer, plain hooks ------------


def _layer(family: str, i: int) -> str:
    return f"{NATIVE[family][0]}.{i}"


def _attn(family: str, i: int) -> str:
    return f"{_layer(family, i)}.{NATIVE[family][1]}"


@contextmanager
def pre_hooks(root: torch.nn.Module, items: list[tuple[str, Any]]) -> Iterator[None]:
    handles = [root.get_submodule(p).register_forward_pre_hook(fn, with_kwargs=True) for p, fn in items]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def ref_states(model: StandardizedTransformer, family: str, prompt: str) -> torch.Tensor:
    """``(n_layers, hidden)``: each layer's output at the prompt's last token (prompt alone)."""
    states: list[torch.Tensor] = []

    def grab(_m, _a, _k, out):
        states.append(first_tensor(out)[0, -1].clone())

    hf_forward(model, [prompt], [(_layer(family, i), grab) for i in range(model.num_layers)])
    return torch.stack(states)


def ref_patched(
    model: StandardizedTransformer, family: str, target: str, layer: int, pos: int, latent: torch.Tensor
) -> torch.Tensor:
    """``(vocab,)`` next-token probabilities of ``target`` with layer ``layer``'s output at ``pos`` replaced."""

    def patch(_m, _a, _k, out):
        hidden = first_tensor(out).clone()
        hidden[:, pos] = latent
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    logits = hf_forward(model, [target], [(_layer(family, layer), patch)]).logits
    return logits[0, -1].float().softmax(-1)


def ref_clean(model: StandardizedTransformer, target: str) -> torch.Tensor:
    return hf_forward(model, [target]).logits[0, -1].float().softmax(-1)


# -- patchscope_lens -------------------------------------------------------------------


def test_identity_patch_leaves_probabilities_unchanged(model: StandardizedTransformer) -> None:
    target = repeat_prompt()
    clean = ref_clean(model, target.prompt)
    for cache in (True, False):
        probs = patchscope_lens(model, target.prompt, target, prefix_cache=cache)
        assert probs.shape == (1, model.num_layers, model.vocab_size)
        torch.testing.assert_close(probs[0], clean.expand(model.num_layers, -1), **TOL)


# caches of every kind: hybrids (linear attention, state space), several residual streams,
# sliding windows, compressed attention (DeepSeek-V4 cannot continue from a shared prefix)
CACHE_KINDS = [
    "qwen3_next",
    "jamba",
    "mamba",
    "gemma3n_text",
    "deepseek_v4",
    "falcon_h1",
    "lfm2",
    "mistral",
    "gemma3",
    "zamba2",
    "bamba",
    "qwen4_exp",
]


@pytest.mark.parametrize("model_type", CACHE_KINDS)
def test_shared_prefix_cache_equals_full_prompts(model_type: str) -> None:
    model = load_tiny(model_type)
    cached = patchscope_lens(model, SOURCES, prefix_cache=True)
    full = patchscope_lens(model, SOURCES, prefix_cache=False)
    assert cached.shape == (len(SOURCES), model.num_layers, model.vocab_size)
    torch.testing.assert_close(cached, full, **TOL)


def test_rows_equal_a_per_layer_reference_loop(model: StandardizedTransformer, family: str) -> None:
    target = repeat_prompt(["cat", "1135", "hello"], rel=" -> ")
    reference = torch.empty(len(SOURCES), model.num_layers, model.vocab_size)
    for s, source in enumerate(SOURCES):
        states = ref_states(model, family, source)
        for layer in range(model.num_layers):  # one forward per layer: the slow way, on purpose
            reference[s, layer] = ref_patched(model, family, target.prompt, layer, -1, states[layer])
    clean = ref_clean(model, target.prompt)
    assert (reference - clean).abs().amax() > 1e-3  # the patches do change the prediction
    fast = patchscope_lens(model, SOURCES, target)
    full = patchscope_lens(model, SOURCES, target, prefix_cache=False, max_batch_size=4)
    assert fast.shape == (len(SOURCES), model.num_layers, model.vocab_size)
    torch.testing.assert_close(fast, reference, **TOL)
    torch.testing.assert_close(full, reference, **TOL)
    picked = patchscope_lens(model, SOURCES, target, layers=[2, 0])
    torch.testing.assert_close(picked, reference[:, [2, 0]], **TOL)


@pytest.mark.parametrize("family_name", ["gpt2", "llama", "bloom"])
def test_one_target_per_source_and_positive_index(family_name: str) -> None:
    model = load_tiny(family_name)
    cases = [
        # same distance from the end, different lengths: shared prefix cache, left-padded
        [TargetPrompt("cat -> cat\n?", -1), TargetPrompt("the cat sat on the mat and the dog ?", -1)],
        # different distances from the end: every row runs in full
        [TargetPrompt("cat -> cat\n?", 2), TargetPrompt("the cat sat on the mat and the dog ?", -3)],
    ]
    for targets in cases:
        got = patchscope_lens(model, SOURCES, targets)
        for s, (source, target) in enumerate(zip(SOURCES, targets, strict=True)):
            states = ref_states(model, family_name, source)
            for layer in range(model.num_layers):
                ref = ref_patched(
                    model, family_name, target.prompt, layer, target.index_to_patch, states[layer]
                )
                torch.testing.assert_close(got[s, layer], ref, **TOL)


def test_latents_instead_of_sources() -> None:
    model = load_tiny("llama")
    states = torch.stack([ref_states(model, "llama", s) for s in SOURCES])  # (2, n_layers, hidden)
    from_prompts = patchscope_lens(model, SOURCES)
    torch.testing.assert_close(patchscope_lens(model, latents=states), from_prompts, **TOL)
    one = patchscope_lens(model, latents=states[1])
    torch.testing.assert_close(one, from_prompts[1:], **TOL)
    sub = patchscope_lens(model, latents=states[:, [2, 1]], layers=[2, 1])
    torch.testing.assert_close(sub, from_prompts[:, [2, 1]], **TOL)


def test_source_alone_equals_its_row_in_a_padded_batch(model: StandardizedTransformer) -> None:
    short = "hello world"
    batch = ["one two three four five six seven eight nine ten", short, "The capital of France is"]
    torch.testing.assert_close(patchscope_lens(model, batch)[1:2], patchscope_lens(model, short), **TOL)


# -- patchscope_generate -----------------------------------------------------------------


@pytest.mark.parametrize("family_name", ["gpt2", "llama", "falcon"])
def test_generate_matches_hf_generate_with_a_first_step_hook(family_name: str) -> None:
    model = load_tiny(family_name)
    target = repeat_prompt()
    layers = [2, 0]
    out = patchscope_generate(model, SOURCES, target, max_length=4, layers=layers, max_batch_size=3)
    assert list(out) == layers
    ids = torch.tensor([model.tokenizer(target.prompt)["input_ids"]])
    with torch.no_grad():
        clean = model._module.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False
        )
    # the patch at the last layer changes the continuation (so the check below has teeth)
    assert any(not torch.equal(out[2][s, : clean.shape[1]], clean[0]) for s in range(len(SOURCES)))
    for layer in layers:
        assert out[layer].shape[0] == len(SOURCES)
        for s, source in enumerate(SOURCES):
            latent = ref_states(model, family_name, source)[layer]
            calls = []

            def patch(_m, _a, _k, output, latent=latent, calls=calls):
                calls.append(1)
                if len(calls) > 1:
                    return None  # later steps see the patch through the cache only
                hidden = first_tensor(output).clone()
                hidden[:, -1] = latent
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

            root = model._module
            handle = root.get_submodule(_layer(family_name, layer)).register_forward_hook(
                patch, with_kwargs=True
            )
            try:
                with torch.no_grad():
                    ref = root.generate(
                        ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False
                    )
            finally:
                handle.remove()
            got = out[layer][s]
            torch.testing.assert_close(got[: ref.shape[1]], ref[0])


# -- patch_object_attn_lens ---------------------------------------------------------------


def ref_attn_lens(
    model: StandardizedTransformer, family: str, source: str, target: str, pos: int, num_patches: int
) -> torch.Tensor:
    """``(n_layers, vocab)``: one forward per start layer with pre-hooks on the attention inputs."""
    n = model.num_layers
    states: list[torch.Tensor] = []

    def grab(_m, args, kwargs):
        states.append(hidden_arg(args, kwargs)[0, -1].clone())

    with pre_hooks(model._module, [(_attn(family, i), grab) for i in range(n)]):
        hf_forward(model, [source])
    rows = []
    for start in range(n):

        def patch(_m, args, kwargs, layer_index):
            hidden = hidden_arg(args, kwargs).clone()
            hidden[:, pos] = states[layer_index]
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        items = []
        for i in range(start, min(start + num_patches, n)):
            items.append((_attn(family, i), lambda m, a, k, i=i: patch(m, a, k, i)))
        with pre_hooks(model._module, items):
            rows.append(hf_forward(model, [target]).logits[0, -1].float().softmax(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("family_name", ["gpt2", "llama", "falcon", "bloom"])
def test_patch_object_attn_lens_matches_reference(family_name: str) -> None:
    model = load_tiny(family_name)
    targets = ["The Eiffel Tower is in the city of", "the cat sat on the mat with a"]
    got = patch_object_attn_lens(model, SOURCES[1], targets, attn_idx_patch=2, num_patches=2)
    assert got.shape == (2, model.num_layers, model.vocab_size)
    for t, target in enumerate(targets):
        ref = ref_attn_lens(model, family_name, SOURCES[1], target, 2, 2)
        torch.testing.assert_close(got[t], ref, **TOL)
    # one source per target, patched token counted from the end (shared prefix cache)
    per_target = patch_object_attn_lens(model, SOURCES, targets, attn_idx_patch=-3, num_patches=5)
    for t, target in enumerate(targets):
        ref = ref_attn_lens(model, family_name, SOURCES[t], target, -3, 5)
        torch.testing.assert_close(per_target[t], ref, **TOL)


# -- remote, prompts, errors ---------------------------------------------------------------


def test_remote_local_matches_local(hide_uniterp_source: None) -> None:
    model = load_tiny("gpt2")
    target = repeat_prompt()
    torch.testing.assert_close(
        patchscope_lens(model, SOURCES, remote="local"),
        patchscope_lens(model, SOURCES, prefix_cache=False),
        atol=0,
        rtol=0,
    )
    targets = ["The Eiffel Tower is in the city of", "the cat sat on the mat with a"]
    torch.testing.assert_close(
        patch_object_attn_lens(model, SOURCES, targets, 2, 2, remote="local"),
        patch_object_attn_lens(model, SOURCES, targets, 2, 2, prefix_cache=False),
        atol=0,
        rtol=0,
    )
    remote = patchscope_generate(model, SOURCES, target, max_length=3, layers=[1], remote="local")
    local = patchscope_generate(model, SOURCES, target, max_length=3, layers=[1])
    assert torch.equal(remote[1], local[1])


def test_target_prompts() -> None:
    assert repeat_prompt() == TargetPrompt("king king\n1135 1135\nhello hello\n?", -1)
    paper = repeat_prompt(["cat", "1135", "hello"], rel=" -> ")
    assert paper.prompt == "cat -> cat\n1135 -> 1135\nhello -> hello\n?"
    batch = TargetPromptBatch.from_target_prompt(paper, 3)
    assert len(batch) == 3 and batch.prompts == [paper.prompt] * 3
    assert batch.index_to_patch.tolist() == [-1, -1, -1]
    mixed = TargetPromptBatch.from_target_prompts([paper, TargetPrompt("a b", 0)])
    assert mixed.index_to_patch.tolist() == [-1, 0]
    with pytest.raises(InputError, match="2 target prompts for 3 sources"):
        TargetPromptBatch.auto(mixed, 3)


def test_it_repeat_prompt_uses_the_chat_template() -> None:
    tokenizer = build_tiny_tokenizer()
    with pytest.raises(InputError, match="no chat template"):
        it_repeat_prompt(tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
        "{% if not loop.last %}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}\n<|assistant|>{% endif %}"
    )
    target = it_repeat_prompt(tokenizer)
    assert target.index_to_patch == -1
    assert target.prompt.startswith("<|system|>")
    assert target.prompt.endswith("<|assistant|>king king\n1135 1135\nhello hello\n?")
    open_answer = it_repeat_prompt(tokenizer, complete_prompt=False, use_system_prompt=False)
    assert open_answer.prompt.startswith("<|user|>")
    assert "hello hello\n?" in open_answer.prompt and open_answer.prompt.endswith("<|assistant|>")


def test_bad_input_raises_uniterp_errors() -> None:
    model = load_tiny("gpt2")
    n, hidden = model.num_layers, model.hidden_size
    with pytest.raises(InputError, match="exactly one of source_prompts or latents"):
        patchscope_lens(model)
    with pytest.raises(InputError, match="exactly one"):
        patchscope_lens(model, "hello", latents=torch.zeros(n, hidden))
    with pytest.raises(InputError, match="empty"):
        patchscope_lens(model, [])
    with pytest.raises(ShapeError, match=rf"expected \(n_sources, n_layers={n}, hidden={hidden}\)"):
        patchscope_lens(model, latents=torch.zeros(2, n, hidden + 1))
    with pytest.raises(ShapeError, match="n_layers=2"):
        patchscope_lens(model, latents=torch.zeros(n, hidden), layers=[0, 1])
    with pytest.raises(LayerIndexError, match="out of range"):
        patchscope_lens(model, "hello", layers=[n])
    with pytest.raises(InputError, match="index_to_patch=40 is outside the target prompt"):
        patchscope_lens(model, "hello", TargetPrompt("a b c", 40))
    with pytest.raises(InputError, match="2 target prompts for 3 sources"):
        patchscope_lens(model, ["a", "b", "c"], [repeat_prompt(), repeat_prompt()])
    with pytest.raises(InputError, match="max_length must be a positive int"):
        patchscope_generate(model, "hello", repeat_prompt(), max_length=0)
    with pytest.raises(InputError, match="2 source prompts for 3 targets"):
        patch_object_attn_lens(model, ["a", "b"], ["x y", "y z", "z w"], 0)
    with pytest.raises(InputError, match="num_patches must be a positive int"):
        patch_object_attn_lens(model, "a", "x y", 0, num_patches=0)
    with pytest.raises(InputError, match="outside the target prompt"):
        patch_object_attn_lens(model, "a", "x y", 30)
    with pytest.raises(InputError, match="site must be"):
        patch_object_attn_lens(model, "a", "x y", 0, site="mlps_output")  # type: ignore[arg-type]


# -- the rows skip the layers before their patch ------------------------------------------


@pytest.mark.parametrize("family_name", ["gpt2", "llama", "gemma2", "falcon"])
def test_rows_skip_the_layers_before_their_patch(family_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import uniterp._patching as engine

    model = load_tiny(family_name)
    ran: list[int] = []
    real = engine._run_skipping
    monkeypatch.setattr(engine, "_run_skipping", lambda *a, **k: ran.append(1) or real(*a, **k))
    skipped = patchscope_lens(model, SOURCES)
    targets = ["The Eiffel Tower is in the city of", "the cat sat on the mat with a"]
    attn = patch_object_attn_lens(model, SOURCES, targets, -2, 2)
    assert len(ran) == 2  # both took the skipping path (no fallback)
    torch.testing.assert_close(skipped, patchscope_lens(model, SOURCES, prefix_cache=False), **TOL)
    full = patch_object_attn_lens(model, SOURCES, targets, -2, 2, prefix_cache=False)
    torch.testing.assert_close(attn, full, **TOL)


def test_a_skip_that_changes_the_logits_falls_back_to_every_layer(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import uniterp._patching as engine
    from uniterp._skipping import SkipMismatch

    model = load_tiny("llama")

    def mismatch(*_: object) -> None:
        raise SkipMismatch("max |diff| 1")

    monkeypatch.setattr(engine, "compare_logits", mismatch)
    with caplog.at_level("INFO", logger="uniterp"):
        probs = patchscope_lens(model, SOURCES)
    assert any("running every layer" in record.getMessage() for record in caplog.records)
    torch.testing.assert_close(probs, patchscope_lens(model, SOURCES, prefix_cache=False), **TOL)
