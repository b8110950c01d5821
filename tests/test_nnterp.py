# ruff: noqa: F841 - the documented examples bind values they do not use
"""``uniterp.nnterp``: nnterp's documented usage runs with only the import root changed.

Each test below follows one page of nnterp's documentation (its README and the
pages of its docs site): the same calls, names, arguments and values, with
``nnterp`` replaced by ``uniterp.nnterp`` and the model names ("gpt2",
"meta-llama/Llama-2-7b-hf", "Maykeye/TinyLLama-v0") replaced by one tiny
offline model shaped like the examples expect (13 layers, so ``layers_output[12]``
exists, and width 768, the size of the examples' ``torch.randn(768)``). The
calls nnterp documents that uniterp does not provide are run too, and must raise
uniterp's `UnavailableError` naming the replacement.

Values are checked against references built without uniterp: a plain HF forward
with torch hooks.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from uniterp import InputError, ShapeError, UnavailableError
from uniterp.testing import tiny_model_path

GPT2_LIKE = {"n_layer": 13, "n_embd": 768, "n_head": 12, "n_inner": 64}


@pytest.fixture(scope="module")
def path() -> str:
    return tiny_model_path("gpt2", **GPT2_LIKE)


@pytest.fixture(scope="module")
def model(path: str):
    from uniterp.nnterp import StandardizedTransformer

    return StandardizedTransformer(path)


@pytest.fixture(scope="module")
def reference(path: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.fixture(autouse=True)
def no_show(monkeypatch: pytest.MonkeyPatch) -> None:
    """nnterp's examples end in ``fig.show()``; a test must not open a browser."""
    pytest.importorskip("plotly")
    import plotly.graph_objects as go

    monkeypatch.setattr(go.Figure, "show", lambda self, *args, **kwargs: None)


def _store(seen: dict, key: str):
    """A forward hook that records the module's (first) output and changes nothing."""

    def hook(_module, _args, output) -> None:
        seen[key] = (output[0] if isinstance(output, tuple) else output).detach().clone()

    return hook


def _hf_logits(reference: torch.nn.Module, tokenizer, text: str, hooks=()) -> torch.Tensor:
    """Logits of ``text`` alone from the plain HF model, with optional ``(module, hook)`` forward hooks."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with torch.no_grad():
            return reference(**tokenizer(text, return_tensors="pt")).logits
    finally:
        for handle in handles:
            handle.remove()


# -- README --------------------------------------------------------------------------------


def test_readme_examples(path: str) -> None:
    from uniterp.nnterp import StandardizedTransformer

    model = StandardizedTransformer(path)

    with model.trace("The Eiffel Tower is in the city of"):
        attention_output = model.attentions_output[3]
        mlp_output = model.mlps_output[3]
        layer_5_output = model.layers_output[5]
        logits = model.logits.save()
    assert logits.shape[-1] == model.vocab_size

    with model.trace("Hello world"):
        attn_out = model.attentions_output[3]
        mlp_out = model.mlps_output[3]
        layer_3_output = model.layers_output[3]
        layer_5_output = model.layers_output[5]
        model.layers_output[10] = model.layers_output[10] + layer_3_output

    from uniterp.nnterp.interventions import logit_lens, patchscope_lens

    layer_probs = logit_lens(model, ["The capital of France is"])
    assert layer_probs.shape == (1, model.num_layers, model.vocab_size)

    from uniterp.nnterp.interventions import TargetPrompt

    target = TargetPrompt("The capital of France is", index_to_patch=-1)
    patchscope_probs = patchscope_lens(
        model, source_prompts=["The capital of England is"], target_patch_prompts=target, layers=10
    )
    assert patchscope_probs.shape == (1, 1, model.vocab_size)

    import torch

    steering_vector = torch.randn(model.hidden_size)
    with model.trace("Hello, how are you?"):
        model.steer(layers=[5, 10], steering_vector=steering_vector, factor=1.5)

    with model.trace(["Hello, how are you?", "Goodbye, world!"]):
        model.steer(layers=5, steering_vector=steering_vector, token_positions=0)
        model.steer(layers=5, steering_vector=steering_vector, batch_index=0)

    from uniterp.nnterp.prompt_utils import Prompt, run_prompts

    prompts = [
        Prompt.from_strings(
            "The capital of France is", {"target": "Paris", "other": ["London", "Madrid"]}, model.tokenizer
        )
    ]
    results = run_prompts(model, prompts)
    assert set(results) == {"target", "other"} and results["target"].shape == (1, 1)
    results = run_prompts(model, prompts, get_probs_func=logit_lens)
    assert results["target"].shape == (1, model.num_layers)


# -- Quick start -------------------------------------------------------------------------------


def test_quickstart_examples(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    from uniterp.nnterp import StandardizedTransformer

    model = StandardizedTransformer(path)
    print("✓ nnterp working!")

    with model.trace("Hello world"):
        layer_5_output = model.layers_output[5]
        logits = model.logits.save()

    with model.trace("Hello world"):
        attention_output = model.attentions_output[3]
        mlp_output = model.mlps_output[3]

    with model.trace("The capital of France is"):
        combined = model.layers_output[3] + model.layers_output[5]
        mlp_8 = model.mlps_output[8]
        model.layers_output[10] = combined
        model.layers_output[12] = model.layers_output[12] + mlp_8
        result = model.logits.save()
    assert result.shape[-1] == logits.shape[-1] == model.vocab_size
    assert "nnterp working" in capsys.readouterr().out


# -- Basic usage --------------------------------------------------------------------------------


def test_basic_usage_examples(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    from uniterp.nnterp import StandardizedTransformer

    model = StandardizedTransformer(path)
    model = StandardizedTransformer(path)

    print(model.device)
    print(f"number of layers: {model.num_layers}")
    print(f"hidden size: {model.hidden_size}")
    print(f"number of attention heads: {model.num_heads}")
    print(f"vocabulary size: {model.vocab_size}")
    out = capsys.readouterr().out
    assert "number of layers: 13" in out and "hidden size: 768" in out and "attention heads: 12" in out

    with model.trace("hello"):
        layer_5_output = model.layers_output[5]

    with model.trace("hello"):
        attn_output = model.attentions_output[3]
        mlp_output = model.mlps_output[3]

    with model.trace("Hello world"):
        model.skip_layer(1)
        model.skip_layers(2, 3)

    import torch

    with model.trace("Hello world") as tracer:
        layer_6_out = model.layers_output[6].save()
        tracer.stop()

    with model.trace("Hello world"):
        model.skip_layers(0, 6, skip_with=layer_6_out)
        result = model.logits.save()
    # The page goes on with a comparison whose indentation and names are broken in nnterp's
    # own docs; what it means to check: skipping 0..6 with layer 6's output changes nothing.
    with model.trace("Hello world"):
        results_vanilla = model.logits.save()
    assert torch.allclose(results_vanilla, result, atol=1e-5)

    with model.trace("The capital of France is"):
        hidden = model.layers_output[5]
        logits = model.project_on_vocab(hidden)

    steering_vector = torch.randn(768)
    with model.trace("The weather today is"):
        model.steer(layers=[1, 3], steering_vector=steering_vector, factor=0.5)

    with model.trace(["The weather today is", "I feel very"]):
        model.steer(layers=1, steering_vector=steering_vector, token_positions=0)
        model.steer(layers=1, steering_vector=steering_vector, batch_index=0)
        model.steer(layers=1, steering_vector=steering_vector, batch_index=1, token_positions=[0, 1])


# -- Interventions -------------------------------------------------------------------------------


def test_interventions_examples(model) -> None:
    from uniterp.nnterp.interventions import logit_lens

    prompts = ["The capital of France is", "The sun rises in the"]
    probs = logit_lens(model, prompts)
    assert probs.shape == (2, model.num_layers, model.vocab_size)

    probs, inv_probs = logit_lens(model, prompts, return_inv_logits=True)
    assert inv_probs.shape == probs.shape

    from uniterp.nnterp.interventions import TargetPrompt, patchscope_lens, repeat_prompt

    source_prompts = ["Paris is beautiful", "London is foggy"]
    target_prompt = TargetPrompt("city: Paris\\nfood: croissant\\n?", -1)

    target_prompt = repeat_prompt(words=["car", "cross", "azdrfa"])

    patchscope_probs = patchscope_lens(
        model, source_prompts=source_prompts, target_patch_prompts=target_prompt
    )
    assert patchscope_probs.shape == (2, model.num_layers, model.vocab_size)

    probs = patchscope_lens(
        model, source_prompts=source_prompts, target_patch_prompts=target_prompt, layers=5
    )
    assert probs.shape == (2, 1, model.vocab_size)

    probs = patchscope_lens(
        model, source_prompts=source_prompts, target_patch_prompts=target_prompt, layers=[3, 5, 7]
    )
    assert probs.shape == (2, 3, model.vocab_size)

    import torch

    latents = torch.randn(3, 2, 768)

    probs = patchscope_lens(model, latents=latents, target_patch_prompts=target_prompt, layers=[3, 5, 7])
    assert probs.shape == (2, 3, model.vocab_size)


# -- NNsight utils --------------------------------------------------------------------------------


def test_nnsight_utils_on_a_plain_nnsight_model_is_refused(path: str) -> None:
    """The page's setup renames a plain nnsight ``LanguageModel``; uniterp refuses it with the fix."""
    from nnsight import LanguageModel
    from transformers import AutoTokenizer

    from uniterp.nnterp.nnsight_utils import get_layer_output

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LanguageModel is deprecated in nnsight 0.8
        # (nnsight needs the tokenizer passed for a local folder; see docs/nnsight notes)
        model = LanguageModel(
            path,
            tokenizer=AutoTokenizer.from_pretrained(path),
            rename=dict(transformer="model", h="layers", ln_f="ln_final", attn="self_attn"),
        )
    with pytest.raises(UnavailableError, match=r"uniterp\.nnterp\.StandardizedTransformer"):
        get_layer_output(model, 5)


def test_nnsight_utils_examples(model) -> None:
    """The rest of the page, with the model loaded by ``uniterp.nnterp.StandardizedTransformer``."""
    from uniterp.nnterp.nnsight_utils import (
        collect_token_activations_batched,
        get_attention_output,
        get_layer_output,
        get_mlp_output,
        get_token_activations,
        project_on_vocab,
    )

    # As documented, this block reads layer 5 before layer 3: nnsight >= 0.5 refuses that (in
    # nnterp too), since values must be read in the order the forward computes them.
    with pytest.raises(Exception, match=r"(?i)ran past|order"):
        with model.trace("hello"):
            layer_5_out = get_layer_output(model, 5)

            attn_out = get_attention_output(model, 3)
            mlp_out = get_mlp_output(model, 3)
    with model.trace("hello"):  # the same reads in forward order
        attn_out = get_attention_output(model, 3)
        mlp_out = get_mlp_output(model, 3)
        layer_5_out = get_layer_output(model, 5)

    with model.trace("The capital of France is"):
        hidden = get_layer_output(model, 5)
        logits = project_on_vocab(model, hidden)

    prompts = ["The capital of France is", "The weather today is"]
    with model.trace(prompts) as tracer:
        activations = get_token_activations(model, prompts, idx=-1, tracer=tracer)

    large_prompts = ["Sample text " + str(i) for i in range(100)]
    batch_activations = collect_token_activations_batched(
        model, large_prompts, batch_size=16, layers=[3, 9, 11], idx=-1
    )
    assert batch_activations.shape == (3, 100, 768)


# -- Advanced features ---------------------------------------------------------------------------


def test_advanced_features_examples(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    from uniterp.nnterp import StandardizedTransformer

    model = StandardizedTransformer(path, enable_attention_probs=True)

    with model.trace("The cat sat on the mat"):
        attn_probs = model.attention_probabilities[5].save()

        attn_probs[:, :, :, 0] = 0
        attn_probs /= attn_probs.sum(dim=-1, keepdim=True)

        modified_logits = model.logits.save()
    # the first query attends only to token 0, so its row becomes 0 / 0 (as in nnterp); the others:
    edited = attn_probs[:, :, 1:]
    torch.testing.assert_close(edited[..., 0], torch.zeros_like(edited[..., 0]))
    torch.testing.assert_close(edited.sum(-1), torch.ones_like(edited.sum(-1)))
    with torch.no_grad(), model.trace("The cat sat on the mat"):
        plain_logits = model.logits.save()
    assert not torch.allclose(modified_logits[0, 1:], plain_logits[0, 1:])  # the edit reached the model

    model.attention_probabilities.print_source()
    assert "attention_probabilities[0]" in capsys.readouterr().out

    # renaming a LanguageModel / NNsight with nnterp's dictionary: refused, with the replacement
    from uniterp.nnterp import get_rename_dict

    with pytest.raises(UnavailableError, match="ModuleAccessor"):
        get_rename_dict()

    import torch.nn as nn
    from transformers import AutoModelForCausalLM

    from uniterp.nnterp import ModuleAccessor

    hf_model = AutoModelForCausalLM.from_pretrained(path)
    module_accessor = ModuleAccessor(hf_model)
    layers_modules = module_accessor.get_layers()

    layers_modules = module_accessor.layers
    assert isinstance(layers_modules, nn.ModuleList)
    assert layers_modules is hf_model.transformer.h

    from uniterp.nnterp.prompt_utils import Prompt, run_prompts

    targets = {
        "correct_answer": "Paris",
        "traps": ["London", "Madrid"],
        "longstring": "the country of France",
    }
    prompt = Prompt.from_strings(
        "The capital of France (not England or Spain) is",
        targets,
        model.tokenizer,
    )

    for name, tokens in prompt.target_tokens.items():
        print(f"{name}: {model.tokenizer.convert_ids_to_tokens(tokens)}")

    results = run_prompts(model, [prompt])
    for target, probs in results.items():
        print(f"{target}: {probs.shape}")
    out = capsys.readouterr().out
    assert "correct_answer: torch.Size([1, 1])" in out

    from uniterp.nnterp.interventions import logit_lens

    prompts = [prompt]
    results = run_prompts(model, prompts, get_probs_func=logit_lens)

    from uniterp.nnterp.display import plot_topk_tokens, prompts_to_df

    probs = logit_lens(model, "The capital of France is")

    plot_topk_tokens(probs[0], model.tokenizer, k=5, title="Top 5 tokens at each layer")

    df = prompts_to_df(prompts, model.tokenizer)
    # the page then calls display(df), a notebook built-in
    assert df[0]["prompt"] == prompts[0].prompt

    import plotly.graph_objects as go

    results = run_prompts(model, prompts, get_probs_func=logit_lens)

    fig = go.Figure()
    for category, probs in results.items():
        fig.add_trace(
            go.Scatter(x=list(range(len(probs[0]))), y=probs[0].tolist(), mode="lines+markers", name=category)
        )

    fig.update_layout(
        title="Target Token Probabilities Across Layers", xaxis_title="Layer", yaxis_title="Probability"
    )
    fig.show()


# -- Model validation and adding model support -------------------------------------------------------


def test_model_validation_examples(path: str) -> None:
    from uniterp.nnterp import StandardizedTransformer

    model = StandardizedTransformer(path)

    model = StandardizedTransformer(path, enable_attention_probs=True)
    model.attention_probabilities.print_source()

    model = StandardizedTransformer(path)

    with pytest.raises(InputError, match="attn_implementation='sdpa'"):
        model = StandardizedTransformer(path, enable_attention_probs=True, attn_implementation="sdpa")


def test_adding_model_support_with_rename_config_is_refused(path: str) -> None:
    from uniterp.nnterp import StandardizedTransformer
    from uniterp.nnterp.rename_utils import AttnProbFunction, RenameConfig

    rename_config = RenameConfig(
        model_name="custom_transformer",
        layers_name="custom_layers",
        attn_name="custom_attention",
        mlp_name="custom_ffn",
        ln_final_name="custom_norm",
        lm_head_name="custom_head",
    )
    with pytest.raises(UnavailableError, match=r"spec=uniterp\.ArchitectureSpec"):
        StandardizedTransformer(path, rename_config=rename_config)

    class GPTJAttnProbFunction(AttnProbFunction):
        def get_attention_prob_source(self, attention_module, return_module_source=False):
            return attention_module

    with pytest.raises(UnavailableError, match="rename_config"):
        StandardizedTransformer(
            path,
            enable_attention_probs=True,
            rename_config=RenameConfig(attn_prob_source=GPTJAttnProbFunction()),
        )


# -- the values behind the names, against plain HF forwards and hooks ------------------------------


def test_attentions_and_mlps_are_the_native_modules(model, reference) -> None:
    for layer in (0, 7, -1):
        assert model.attentions[layer]._module is model.layers[layer].self_attn._module
        assert type(model.attentions[layer]._module).__name__ == "GPT2Attention"
        assert type(model.mlps[layer]._module).__name__ == "GPT2MLP"
    assert len(model.attentions) == len(model.mlps) == 13
    text = "The Eiffel Tower is in"
    seen = {}
    hook = (reference.transformer.h[4].attn, _store(seen, "attn"))
    _hf_logits(reference, model.tokenizer, text, [hook])
    with torch.no_grad(), model.trace(text):
        attn = model.attentions[4].output[0].save()
        mlp_in = model.mlps[4].input.save()
    torch.testing.assert_close(attn, seen["attn"], atol=1e-5, rtol=1e-4)
    assert mlp_in.shape == (1, attn.shape[1], 768)


@pytest.mark.parametrize("keyword", ["positions", "token_positions"])
def test_steer_positions_against_a_hooked_hf_forward(model, reference, keyword: str) -> None:
    text = "The weather today is"
    vector = torch.randn(768, generator=torch.Generator().manual_seed(1))

    def add_at_first_token(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, 0] += 0.5 * vector
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    expected = _hf_logits(
        reference, model.tokenizer, text, [(reference.transformer.h[3], add_at_first_token)]
    )
    with torch.no_grad(), model.trace(text):
        model.steer(layers=3, steering_vector=vector, factor=0.5, **{keyword: 0})
        logits = model.logits.save()
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="not both"):
        with model.trace(text):
            model.steer(layers=3, steering_vector=vector, positions=0, token_positions=0)


def test_patchscope_latents_keep_nnterp_layout(model) -> None:
    from uniterp.nnterp.interventions import patchscope_lens, repeat_prompt
    from uniterp.nnterp.nnsight_utils import get_token_activations

    sources = ["Paris is beautiful", "London is foggy"]
    target = repeat_prompt(words=["car", "cross", "azdrfa"])
    latents = get_token_activations(model, sources, layers=[3, 5, 7])  # (n_layers, n_sources, hidden)
    assert latents.shape == (3, 2, 768)
    from_latents = patchscope_lens(model, latents=latents, target_patch_prompts=target, layers=[3, 5, 7])
    from_prompts = patchscope_lens(
        model, source_prompts=sources, target_patch_prompts=target, layers=[3, 5, 7]
    )
    torch.testing.assert_close(from_latents, from_prompts, atol=1e-5, rtol=1e-4)
    with pytest.raises(ShapeError, match="n_layers, n_sources, hidden"):
        patchscope_lens(model, latents=latents[0], target_patch_prompts=target, layers=[3])
    assert repeat_prompt(index_to_patch=-2).index_to_patch == -2


def test_token_activations_in_an_open_trace_equal_hf(model, reference) -> None:
    from uniterp.nnterp.nnsight_utils import get_token_activations

    prompts = ["The capital of France is", "The weather today is"]
    with torch.no_grad(), model.trace(prompts) as tracer:
        activations = get_token_activations(model, prompts, idx=-1, tracer=tracer).save()
    alone = get_token_activations(model, prompts, layers=[0, 12])
    for row, text in enumerate(prompts):
        with torch.no_grad():
            states = reference(**model.tokenizer(text, return_tensors="pt"), output_hidden_states=True)
        for layer in (0, 12):
            expected = states.hidden_states[layer + 1][0, -1]
            if layer == 12:  # HF's last hidden state is after the final norm; hook the block instead
                seen = {}
                hook = (reference.transformer.h[12], _store(seen, "h"))
                _hf_logits(reference, model.tokenizer, text, [hook])
                expected = seen["h"][0, -1]
            torch.testing.assert_close(activations[layer, row], expected, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(alone[[0, 12].index(layer), row], expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="negative"):
        with model.trace(prompts) as tracer:
            get_token_activations(model, prompts, idx=1, tracer=tracer)


def test_prompt_utils_and_display_follow_nnterp(model, tmp_path) -> None:
    from uniterp.nnterp.display import plot_topk_tokens, prompts_to_df
    from uniterp.nnterp.interventions import logit_lens
    from uniterp.nnterp.prompt_utils import Prompt, get_first_tokens, next_token_probs_unsqueeze, run_prompts

    first = get_first_tokens(["Paris"], model)
    assert first == get_first_tokens("Paris", model.tokenizer)
    pieces = [model.tokenizer.decode([t]) for t in first]  # first tokens of "Paris" and " Paris"
    assert "Paris".startswith(pieces[0]) and " Paris".startswith(pieces[-1]) and pieces[-1].startswith(" ")
    prompts = [
        Prompt.from_strings("The capital of France is", {"city": "Paris", "other": "London"}, model),
        Prompt.from_strings("The weather today is", {"city": "Paris", "other": "Paris"}, model.tokenizer),
    ]
    assert prompts[0].has_no_collisions() and not prompts[1].has_no_collisions()
    assert prompts[1].has_no_collisions(ignore_targets="other")
    probs = next_token_probs_unsqueeze(model, [p.prompt for p in prompts])  # (2, 1, vocab)
    by_layer = prompts[0].get_target_probs(probs)
    assert by_layer["city"].shape == (2, 1)
    assert prompts[0].get_target_probs(probs, layer=0)["city"].shape == (2,)
    quiet = run_prompts(model, prompts, tqdm=None)
    torch.testing.assert_close(quiet["city"][:, 0], by_layer["city"][:, 0])
    lens = prompts[0].run(model, logit_lens)
    assert lens["city"].shape == (1, model.num_layers)
    df = prompts_to_df(prompts, model.tokenizer)
    assert list(df.columns) == [0, 1]
    assert list(df.index) == ["prompt", "city_string", "other_string", "city_tokens", "other_tokens"]
    assert df[1]["city_tokens"] == model.tokenizer.convert_ids_to_tokens(prompts[1].target_tokens["city"])
    grid = logit_lens(model, "The capital of France is")[0]
    fig = plot_topk_tokens(grid, model.tokenizer, k=2, use_token_ids=True, file=tmp_path / "top.html")
    assert (tmp_path / "top.html").is_file()
    assert fig.data[0].text[0][-1] == str(int(grid[-1].argmax()))


def test_model_members_nnterp_has(model, path: str) -> None:
    from uniterp.nnterp import load_model

    assert not model.attn_probs_available
    hidden = torch.randn(2, 768, generator=torch.Generator().manual_seed(0))
    closest = model.get_topk_closest_tokens(hidden, k=3)
    assert len(closest) == 2 and all(len(row) == 3 for row in closest)
    with torch.no_grad():  # reference: final norm and unembedding of the plain HF modules
        head = model.lm_head._module
        logits = head(model.ln_final._module(hidden))
    expected = logits.float().softmax(-1).topk(3)
    for row in range(2):
        names = model.tokenizer.convert_ids_to_tokens(expected.indices[row].tolist())
        names = [n if n is not None else f"<id {i}>" for n, i in zip(names, expected.indices[row].tolist())]
        assert list(closest[row]) == names
        assert list(closest[row].values()) == pytest.approx(expected.values[row].tolist(), abs=1e-6)
    single = model.get_topk_closest_tokens(hidden[0], k=3)
    assert list(single) == list(closest[0])
    assert list(single.values()) == pytest.approx(list(closest[0].values()), abs=1e-6)
    with pytest.raises(ShapeError, match="hidden = 768"):
        model.get_topk_closest_tokens(torch.randn(5))
    with model.trace(["a b c", "d"]):
        size = model.input_size.save()
    assert tuple(size)[0] == 2
    model.detect_layer_output_type()
    loaded = load_model(path, torch_dtype=torch.float32)
    assert loaded.num_layers == 13 and loaded.dtype == torch.float32
    with pytest.raises(UnavailableError, match="TransformerLens"):
        load_model(path, use_tl=True)
