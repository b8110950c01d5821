"""Tests of uniterp.prompts: target tokens and run_prompts against plain HF forwards."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from uniterp import InputError, ShapeError, StandardizedTransformer
from uniterp.prompts import Prompt, get_first_tokens, results_to_dataframe, run_prompts

from conftest import model_and_reference

FAMILIES = ["gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "llama", "gemma2", "qwen2_moe", "phi"]

PROMPT_TEXTS = ["The Eiffel Tower is in the city of", "hello", "The capital of Japan is"]
TARGETS = [
    {"city": ["Paris", "Tokyo"], "animal": "cat"},
    {"city": "world", "animal": ["dog", "cat"]},
    "Tokyo",  # category "target" only
]


@pytest.fixture(scope="module", params=FAMILIES)
def models_pair(
    request: pytest.FixtureRequest,
) -> tuple[StandardizedTransformer, torch.nn.Module]:
    return model_and_reference(request.param)


def _reference_probs(ref: torch.nn.Module, tokenizer, text: str) -> torch.Tensor:
    """Next-token probabilities of ``text`` alone (no padding), by a plain HF forward."""
    with torch.no_grad():
        logits = ref(**tokenizer(text, return_tensors="pt")).logits
    return logits[0, -1].float().softmax(-1)


def _prompts(tokenizer) -> list[Prompt]:
    return [Prompt.from_strings(text, targets, tokenizer) for text, targets in zip(PROMPT_TEXTS, TARGETS)]


# -- run_prompts ----------------------------------------------------------------


def test_run_prompts_equals_sum_of_token_probs(models_pair) -> None:
    model, ref = models_pair
    prompts = _prompts(model.tokenizer)
    results = run_prompts(model, prompts, batch_size=2, tqdm=False)  # a padded batch + a single
    assert set(results) == {"city", "animal", "target"}
    for i, prompt in enumerate(prompts):
        probs = _reference_probs(ref, model.tokenizer, prompt.prompt)
        for category, values in results.items():
            assert values.shape == (len(prompts), 1)
            ids = prompt.target_tokens.get(category)
            if ids is None:
                assert math.isnan(values[i, 0])
                continue
            expected = sum(float(probs[t]) for t in set(ids))
            assert values[i, 0].item() == pytest.approx(expected, abs=1e-6)


def test_run_prompts_deduplicates_tokens(models_pair) -> None:
    model, ref = models_pair
    token = model.tokenizer.encode(" cat")[0]
    prompt = Prompt("hello world", {"dup": [token, token, token]}, {"dup": ["cat"]})
    result = run_prompts(model, [prompt])["dup"]  # default progress bar on
    expected = float(_reference_probs(ref, model.tokenizer, "hello world")[token])
    assert result.item() == pytest.approx(expected, abs=1e-7)


def test_run_prompts_custom_probs_func(models_pair) -> None:
    model, ref = models_pair
    prompts = _prompts(model.tokenizer)
    seen: list[list[str]] = []

    def two_layer_probs(m, texts, power: float = 2.0):
        seen.append(list(texts))
        rows = []
        for text in texts:
            p = _reference_probs(ref, m.tokenizer, text)
            q = p**power / (p**power).sum()
            rows.append(torch.stack([p, q]))
        return torch.stack(rows)  # (n, 2, vocab)

    results = run_prompts(
        model, prompts, batch_size=2, get_probs_func=two_layer_probs, func_kwargs={"power": 3.0}, tqdm=False
    )
    assert seen == [PROMPT_TEXTS[:2], PROMPT_TEXTS[2:]]
    for i, prompt in enumerate(prompts):
        p = _reference_probs(ref, model.tokenizer, prompt.prompt)
        q = p**3 / (p**3).sum()
        for category, ids in prompt.target_tokens.items():
            got = results[category][i]
            assert got.shape == (2,)
            assert got[0].item() == pytest.approx(float(p[list(set(ids))].sum()), abs=1e-6)
            assert got[1].item() == pytest.approx(float(q[list(set(ids))].sum()), abs=1e-6)


def test_run_prompts_accepts_two_dim_probs_and_checks_shape() -> None:
    model, ref = model_and_reference("llama")
    prompts = _prompts(model.tokenizer)
    plain = run_prompts(model, prompts, tqdm=False)
    flat = run_prompts(
        model,
        prompts,
        tqdm=False,
        get_probs_func=lambda m, texts: torch.stack([_reference_probs(ref, m.tokenizer, t) for t in texts]),
    )
    for category in plain:
        torch.testing.assert_close(plain[category], flat[category], equal_nan=True, atol=1e-6, rtol=0)
    with pytest.raises(ShapeError, match="n_prompts, n_layers, vocab"):
        run_prompts(model, prompts, tqdm=False, get_probs_func=lambda m, texts: torch.zeros(1, 2, 3, 4))


def test_run_prompts_remote_local_and_progress() -> None:
    model, _ = model_and_reference("gpt2")
    prompts = _prompts(model.tokenizer)
    plain = run_prompts(model, prompts, batch_size=2, tqdm=False)
    updates: list[int] = []

    class Bar:
        def __init__(self, total: int, desc: str) -> None:
            self.total = total

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

        def update(self, n: int) -> None:
            updates.append(n)

    remote = run_prompts(model, prompts, batch_size=2, remote="local", tqdm=Bar)
    assert updates == [1, 1]
    for category in plain:
        torch.testing.assert_close(plain[category], remote[category], equal_nan=True)


def test_run_prompts_with_logit_lens() -> None:
    from uniterp.lens import logit_lens

    model, _ = model_and_reference("llama")
    prompts = _prompts(model.tokenizer)
    plain = run_prompts(model, prompts, tqdm=False)
    layered = run_prompts(model, prompts, batch_size=2, get_probs_func=logit_lens, tqdm=False)
    remote = run_prompts(
        model, prompts, get_probs_func=logit_lens, func_kwargs={"layers": [0, -1]}, remote="local", tqdm=False
    )
    for category in plain:
        assert layered[category].shape == (len(prompts), model.num_layers)
        torch.testing.assert_close(
            layered[category][:, -1:], plain[category], equal_nan=True, atol=1e-6, rtol=1e-5
        )
        torch.testing.assert_close(
            remote[category], layered[category][:, [0, -1]], equal_nan=True, atol=1e-6, rtol=1e-5
        )


def test_run_prompts_with_patchscope_lens() -> None:
    from uniterp.patchscope import patchscope_lens

    model, _ = model_and_reference("gpt2")
    prompts = _prompts(model.tokenizer)
    results = run_prompts(
        model, prompts, get_probs_func=patchscope_lens, func_kwargs={"layers": [0, 2]}, tqdm=False
    )
    for category, values in results.items():
        assert values.shape == (len(prompts), 2)
        has = torch.tensor([category in p.target_tokens for p in prompts])
        assert torch.isnan(values[~has]).all() and (values[has] > 0).all() and (values[has] <= 1).all()


def test_results_to_dataframe() -> None:
    pytest.importorskip("pandas")
    model, _ = model_and_reference("gpt2")
    prompts = _prompts(model.tokenizer)
    results = {"a": torch.tensor([[0.1, 0.2], [0.3, 0.4], [float("nan"), 0.5]])}
    df = results_to_dataframe(results, prompts, layers=[3, 7])
    assert list(df.columns) == ["prompt_index", "prompt", "category", "layer", "probability"]
    assert len(df) == 6
    row = df[(df.prompt_index == 1) & (df.layer == 7)].iloc[0]
    assert row.prompt == PROMPT_TEXTS[1] and row.category == "a"
    assert row.probability == pytest.approx(0.4)
    with pytest.raises(InputError):
        results_to_dataframe(results, prompts[:2])


def test_run_prompts_bad_input() -> None:
    model, _ = model_and_reference("gpt2")
    with pytest.raises(InputError, match="empty prompt list"):
        run_prompts(model, [], tqdm=False)
    with pytest.raises(InputError, match="Prompt objects"):
        run_prompts(model, ["just a string"], tqdm=False)
    with pytest.raises(InputError, match="batch_size"):
        run_prompts(model, _prompts(model.tokenizer), batch_size=0, tqdm=False)

    with pytest.raises(InputError, match="not ids in"):
        run_prompts(model, [Prompt("hi", {"x": [model.vocab_size]})], tqdm=False)
    with pytest.raises(InputError, match="no target tokens"):
        run_prompts(model, [Prompt("hi", {"x": []})], tqdm=False)

    def local_only(m, texts):
        return torch.zeros(len(texts), 1, model.vocab_size)

    with pytest.raises(InputError, match="cannot run remotely"):
        run_prompts(model, _prompts(model.tokenizer), get_probs_func=local_only, remote="local", tqdm=False)


# -- Prompt.from_strings --------------------------------------------------------


def test_from_strings_forms() -> None:
    tok = _byte_level(add_prefix_space=False)
    single = Prompt.from_strings("x", "Paris", tok)
    assert single.target_strings == {"target": ["Paris"]}
    assert single.target_tokens == {"target": get_first_tokens(["Paris"], tok)}
    listed = Prompt.from_strings("x", ["Paris", "cat"], tok)
    assert listed.categories == ["target"]
    mapped = Prompt.from_strings("x", {"a": "Paris", "b": ["cat", "Paris"]}, tok)
    assert mapped.target_strings == {"a": ["Paris"], "b": ["cat", "Paris"]}
    assert mapped.target_tokens["b"] == get_first_tokens(["cat", "Paris"], tok)
    probs = torch.zeros(2, len(tok))
    probs[:, mapped.target_tokens["a"][0]] = 0.25
    assert mapped.get_target_probs(probs)["a"].tolist() == [0.25, 0.25]
    for bad in ([], {}, {"a": []}, "   "):
        with pytest.raises(InputError):
            Prompt.from_strings("x", bad, tok)
    with pytest.raises(InputError):
        Prompt.from_strings("", "Paris", tok)


# -- get_first_tokens on several tokenizer styles --------------------------------


def _byte_level(add_prefix_space: bool) -> PreTrainedTokenizerFast:
    """Byte-level BPE with a fixed vocabulary: "Paris" and "Ġcat" whole, no "ĠParis" merge."""
    vocab = {"<|endoftext|>": 0}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    merges = [
        ("Ġ", "c"),
        ("Ġc", "a"),
        ("Ġca", "t"),
        ("c", "a"),
        ("ca", "t"),
        ("P", "a"),
        ("Pa", "r"),
        ("Par", "i"),
        ("Pari", "s"),
    ]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def _trained_byte_level(add_prefix_space: bool) -> PreTrainedTokenizerFast:
    corpus = ["Paris is big. Paris is old.", "I saw Paris and a cat.", "cat sat; the cat ran."] * 8
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def _sentencepiece_unigram() -> PreTrainedTokenizerFast:
    """Metaspace + Unigram with a BOS post-processor; " Paris" splits into "▁" + "Paris"."""
    pieces = [
        ("<unk>", 0.0),
        ("<s>", 0.0),
        ("</s>", 0.0),
        ("▁", -1.0),
        ("Paris", -1.0),
        ("▁Paris", -5.0),
        ("▁cat", -1.0),
    ] + [(c, -3.0) for c in "Parisct"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _sentencepiece_bpe() -> PreTrainedTokenizerFast:
    corpus = ["Paris is big. Paris is old.", "I saw Paris and a cat.", "cat sat; the cat ran."] * 8
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_first_tokens_byte_level_without_prefix_space() -> None:
    tok = _byte_level(add_prefix_space=False)
    vocab = tok.get_vocab()
    # "Paris" is one token; " Paris" is "Ġ" + "Paris": the lone space is skipped
    assert get_first_tokens(["Paris"], tok) == [vocab["Paris"]]
    assert get_first_tokens(["cat"], tok) == [vocab["cat"], vocab["Ġcat"]]
    assert get_first_tokens(["Parisc", " cat"], tok) == [vocab["Paris"], vocab["cat"], vocab["Ġcat"]]
    assert get_first_tokens("cat", tok) == get_first_tokens(["cat"], tok)


def test_first_tokens_byte_level_with_prefix_space() -> None:
    tok = _byte_level(add_prefix_space=True)
    vocab = tok.get_vocab()
    assert get_first_tokens(["cat"], tok) == [vocab["Ġcat"]]  # both forms start with "Ġcat"
    trained = _trained_byte_level(add_prefix_space=True)
    tvocab = trained.get_vocab()
    assert "ĠParis" in tvocab
    assert get_first_tokens(["Paris"], trained) == [tvocab["ĠParis"]]


def test_first_tokens_trained_byte_level() -> None:
    tok = _trained_byte_level(add_prefix_space=False)
    vocab = tok.get_vocab()
    assert {"Paris", "ĠParis", "cat", "Ġcat"} <= set(vocab)
    assert get_first_tokens(["Paris", "cat"], tok) == [vocab[t] for t in ("Paris", "ĠParis", "cat", "Ġcat")]
    # a multi-byte first character: the first byte token, whatever it decodes to alone
    assert get_first_tokens(["ünter"], tok)[0] == tok.encode("ünter")[0]


def test_first_tokens_sentencepiece_lone_marker_and_bos() -> None:
    tok = _sentencepiece_unigram()
    vocab = tok.get_vocab()
    assert tok.convert_ids_to_tokens(tok.encode(" Paris")) == ["<s>", "▁", "Paris"]
    assert get_first_tokens(["Paris"], tok) == [vocab["Paris"]]
    assert get_first_tokens(["cat", "Paris"], tok) == [vocab["▁cat"], vocab["Paris"]]
    assert vocab["<s>"] not in get_first_tokens(["cat", "Paris"], tok)


def test_first_tokens_sentencepiece_bpe() -> None:
    tok = _sentencepiece_bpe()
    vocab = tok.get_vocab()
    assert "▁Paris" in vocab and "▁cat" in vocab
    assert get_first_tokens(["Paris", "cat"], tok) == [vocab["▁Paris"], vocab["▁cat"]]


def test_first_tokens_empty_word() -> None:
    tok = _byte_level(add_prefix_space=False)
    for bad in ["", "   ", "\n"]:
        with pytest.raises(InputError, match="no first token|tokenizes to nothing"):
            get_first_tokens([bad], tok)
    with pytest.raises(InputError):
        get_first_tokens([3], tok)


# -- prompts must be text (issue 9) ------------------------------------------------


@pytest.mark.parametrize("bad", [123, [15, 16], torch.tensor([5]), b"bytes", None, ""])
def test_prompt_refuses_non_string_prompt(bad) -> None:
    with pytest.raises(InputError, match="Prompt.prompt"):
        Prompt(bad, {"x": [5]})


@pytest.mark.parametrize(
    "targets, message",
    [
        ({"x": "Paris"}, "list of token ids"),
        ({"x": [5, "Paris"]}, "not int token ids"),
        ({"x": [True]}, "not int token ids"),
        ({5: [1]}, "not a string"),
        ([5, 6], "dict of category"),
    ],
)
def test_prompt_refuses_bad_target_tokens(targets, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Prompt("The capital of France is", targets)


def test_run_prompts_refuses_a_token_id_prompt() -> None:
    model, ref = model_and_reference("gpt2")
    token = model.tokenizer.encode(" cat")[0]
    # a token id as the prompt was run as if it were text; now refused before any forward
    with pytest.raises(InputError, match="must be a string"):
        run_prompts(model, [Prompt(123, {"x": [token]})])
    prompt = Prompt("hello world", {"x": [token]})
    prompt.prompt = 123  # changed after construction: run_prompts checks again
    with pytest.raises(InputError, match=r"prompts\[0\]\.prompt must be a string"):
        run_prompts(model, [prompt])
    prompt.prompt = "hello world"
    expected = float(_reference_probs(ref, model.tokenizer, "hello world")[token])
    assert run_prompts(model, [prompt])["x"].item() == pytest.approx(expected, abs=1e-7)


# -- true labels (issue 9) -----------------------------------------------------------


def test_results_to_dataframe_has_no_layer_for_next_token_probs() -> None:
    pytest.importorskip("pandas")
    model, ref = model_and_reference("gpt2")
    prompts = _prompts(model.tokenizer)
    results = run_prompts(model, prompts, tqdm=False)
    assert results.per_layer is False and results.layers is None
    df = results_to_dataframe(results, prompts)
    assert list(df.columns) == ["prompt_index", "prompt", "category", "probability"]
    assert len(df) == len(prompts) * len(results)
    probs = _reference_probs(ref, model.tokenizer, PROMPT_TEXTS[1])
    row = df[(df.prompt_index == 1) & (df.category == "animal")].iloc[0]
    expected = sum(float(probs[t]) for t in set(prompts[1].target_tokens["animal"]))
    assert row.probability == pytest.approx(expected, abs=1e-6)


def test_results_to_dataframe_labels_the_layers_the_lens_read() -> None:
    pytest.importorskip("pandas")
    from uniterp.lens import logit_lens

    model, _ = model_and_reference("gpt2")
    prompts = _prompts(model.tokenizer)
    every = run_prompts(model, prompts, get_probs_func=logit_lens, tqdm=False)
    assert every.per_layer and every.layers == list(range(model.num_layers))
    some = run_prompts(model, prompts, get_probs_func=logit_lens, func_kwargs={"layers": [-1, 0]}, tqdm=False)
    assert some.layers == [model.num_layers - 1, 0]
    df = results_to_dataframe(some, prompts)
    assert list(df.columns) == ["prompt_index", "prompt", "category", "layer", "probability"]
    assert sorted(set(df.layer)) == [0, model.num_layers - 1]
    for category, values in every.items():
        for i in range(len(prompts)):
            last = df[(df.prompt_index == i) & (df.category == category) & (df.layer == model.num_layers - 1)]
            assert last.probability.item() == pytest.approx(float(values[i, -1]), nan_ok=True)
    # one layer is still a layer: labelled with its number, not dropped
    one = run_prompts(model, prompts, get_probs_func=logit_lens, func_kwargs={"layers": [1]}, tqdm=False)
    assert set(results_to_dataframe(one, prompts).layer) == {1}


def test_results_to_dataframe_never_invents_layer_numbers() -> None:
    pytest.importorskip("pandas")
    model, _ = model_and_reference("gpt2")
    prompts = _prompts(model.tokenizer)
    two_columns = {"a": torch.rand(len(prompts), 2)}
    with pytest.raises(InputError, match="layers="):
        results_to_dataframe(two_columns, prompts)
    assert "layer" not in results_to_dataframe({"a": torch.rand(len(prompts), 1)}, prompts).columns
    assert "layer" not in results_to_dataframe({"a": torch.rand(len(prompts))}, prompts).columns

    def some_rows(m, texts):  # a layer dimension that is not one row per layer of the model
        return torch.rand(len(texts), m.num_layers - 1, m.vocab_size).softmax(-1)

    unknown = run_prompts(model, prompts, get_probs_func=some_rows, tqdm=False)
    assert unknown.per_layer and unknown.layers is None
    with pytest.raises(InputError, match="numbers are unknown"):
        results_to_dataframe(unknown, prompts)
    labels = list(range(1, model.num_layers))
    assert list(results_to_dataframe(unknown, prompts, layers=labels).layer.unique()) == labels


# -- progress bars only when there is progress to show (issue 9) ------------------------


def test_progress_bar_only_for_several_batches(capfd: pytest.CaptureFixture[str]) -> None:
    from uniterp.prompts import progress_bar

    assert progress_bar(None, 1, "x").disable
    assert not progress_bar(None, 2, "x").disable
    assert not progress_bar(True, 1, "x").disable
    assert progress_bar(False, 5, "x").disable
    capfd.readouterr()
    model, _ = model_and_reference("gpt2")
    prompts = _prompts(model.tokenizer)
    run_prompts(model, prompts[:1])  # one prompt, one batch: silent by default
    assert "run_prompts" not in capfd.readouterr().err
    run_prompts(model, prompts, batch_size=2)  # two batches: a bar
    assert "run_prompts" in capfd.readouterr().err
    run_prompts(model, prompts[:1], tqdm=True)  # asked for
    assert "run_prompts" in capfd.readouterr().err
