"""No silently wrong value, and uniterp's own error for every bad input (issue: trust).

References are plain HF forwards with plain torch hooks on the native modules.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from uniterp import (
    InPlaceEditError,
    InputError,
    OrderError,
    ShapeError,
    StandardizedTransformer,
    UniterpError,
)
from uniterp.testing import TINY_FAMILIES, tiny_model_path

from conftest import PROMPTS, load_tiny, model_and_reference
from reference import encode, hf_forward, hidden_arg, hooks

TWO = PROMPTS[:2]


# -- values handed out as copies --------------------------------------------------------------


def _copy_sites(model: StandardizedTransformer) -> list[str]:
    return sorted({site for layer in model.binding.layout.layers for site, loc in layer.items() if loc.clone})


def test_falcon_hands_out_a_copy_of_its_mlp_output() -> None:
    # Falcon adds the attention output into the MLP output in place: a read is a copy
    assert _copy_sites(load_tiny("falcon")) == ["mlps_output"]
    assert [f for f in TINY_FAMILIES if _copy_sites(load_tiny(f))] == ["falcon"]


def test_an_in_place_edit_of_a_copy_is_refused() -> None:
    model = load_tiny("falcon")
    with pytest.raises(
        InPlaceEditError, match=r"mlps_output\[0\] was edited in place.*model.mlps_output\[0\] = "
    ):
        with torch.no_grad(), model.trace(TWO):
            model.mlps_output[0][:] = 0
            model.logits.save()


def test_assigning_an_edited_copy_reaches_the_model() -> None:
    model = load_tiny("falcon")

    def zero(_m: Any, _a: Any, _k: Any, out: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(out)

    reference = hf_forward(model, TWO, {"transformer.h.0.mlp": zero}).logits
    with torch.no_grad(), model.trace(TWO):
        model.mlps_output[0] = model.mlps_output[0] * 0
        assigned = model.logits.save()
    with torch.no_grad(), model.trace(TWO):
        h = model.mlps_output[0]
        h[:] = 0  # edit, then assign back: the assignment carries the edit
        model.mlps_output[0] = h
        edited_then_assigned = model.logits.save()
    torch.testing.assert_close(assigned, reference, rtol=1e-5, atol=1e-5)
    assert torch.equal(assigned, edited_then_assigned)


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "bloom", "gpt_neox"])
def test_in_place_edits_of_views_reach_the_model(family: str) -> None:
    model = load_tiny(family)
    path = {
        "llama": "model.layers.0.mlp",
        "gpt2": "transformer.h.0.mlp",
        "opt": "model.decoder.layers.0.fc2",
        "bloom": "transformer.h.0.mlp.dense_4h_to_h",
        "gpt_neox": "gpt_neox.layers.0.mlp",
    }[family]

    def zero(_m: Any, _a: Any, _k: Any, out: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(out)

    reference = hf_forward(model, TWO, {path: zero}).logits
    with torch.no_grad(), model.trace(TWO):
        model.mlps_output[0][:] = 0
        logits = model.logits.save()
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)


# -- OPT with a narrower word embedding ---------------------------------------------------------


def test_opt_token_embeddings_are_projected_to_the_hidden_size() -> None:
    path = tiny_model_path("opt", word_embed_proj_dim=32)
    model = StandardizedTransformer(path)
    assert (
        model.hidden_size == 64 and model.binding.layout.token_embeddings.path == "model.decoder.project_in"
    )
    assert model.check().passed
    seen: dict[str, torch.Tensor] = {}

    def grab(_m: Any, _a: Any, _k: Any, out: torch.Tensor) -> None:
        seen["projected"] = out.detach().clone()

    def double(_m: Any, _a: Any, _k: Any, out: torch.Tensor) -> torch.Tensor:
        return out * 2

    reference = hf_forward(model, TWO, {"model.decoder.project_in": grab})
    doubled = hf_forward(model, TWO, {"model.decoder.project_in": double}).logits
    with torch.no_grad(), model.trace(TWO):
        emb = model.token_embeddings.save()
        model.token_embeddings = emb * 2
        logits = model.logits.save()
    assert emb.shape == (2, seen["projected"].shape[1], 64)
    assert torch.equal(emb, seen["projected"])
    torch.testing.assert_close(logits, doubled, rtol=1e-5, atol=1e-5)
    assert reference.logits.shape == logits.shape
    assert any("projection" in note for note in model.support().notes)


def test_a_narrower_embedding_without_a_separate_projection_is_documented() -> None:
    # ELECTRA adds positions and normalises before projecting: token_embeddings keeps its width, said so
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = StandardizedTransformer(tiny_model_path("electra"))
    width = model.binding.layout.embedding_width
    assert width != model.hidden_size
    assert any(f"(batch, seq, {width})" in note for note in model.support().notes)
    with torch.no_grad(), model.trace(TWO):
        emb = model.token_embeddings.save()
    assert emb.shape[-1] == width


# -- skip on special layouts --------------------------------------------------------------------


def _identity_layer(_m: Any, args: Any, kwargs: Any, out: Any) -> Any:
    h = hidden_arg(args, kwargs) if args or "hidden_states" in kwargs else next(iter(kwargs.values()))
    return (h, *([None] * (len(out) - 1))) if isinstance(out, tuple) else h


@pytest.mark.parametrize(
    ("family", "stack"),
    [("xlnet", "transformer.layer"), ("deepseek_v4", "model.layers"), ("qwen4_exp_text", "model.layers")],
)
def test_skip_layer_on_transposed_and_multi_stream_layers(family: str, stack: str) -> None:
    model, hf = model_and_reference(family)
    with torch.no_grad(), hooks(hf, {f"{stack}.1": _identity_layer}):
        reference = hf(**encode(model, TWO)).logits
    with torch.no_grad(), model.trace(TWO):
        before = model.layers_input[1].save()
        model.skip_layer(1)
        after = model.layers_output[1].save()
        logits = model.logits.save()
    assert torch.equal(before, after)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)


def test_skip_with_a_replacement_of_the_wrong_shape_is_refused() -> None:
    model = load_tiny("llama")
    with pytest.raises(ShapeError, match="skip_with"), torch.no_grad():
        with model.trace(TWO):
            model.skip_layer(1, skip_with=torch.zeros(model.hidden_size))


# -- writes are checked ---------------------------------------------------------------------------

_SITES = ["layers_output", "mlps_output", "attentions_output", "layers_input"]


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "falcon", "bloom", "xlnet"])
@pytest.mark.parametrize("site", _SITES)
def test_a_write_of_the_wrong_shape_names_the_value_and_both_shapes(family: str, site: str) -> None:
    model = load_tiny(family)
    with torch.no_grad(), model.trace(TWO):
        value = getattr(model, site)[0].save()
    shape = tuple(value.shape)
    b, s, h = shape
    for bad in [(h,), (b, s, h + 1), (s, h), (1, s, h), (b, s + 1, h)]:
        with pytest.raises(ShapeError) as caught, torch.no_grad():
            with model.trace(TWO):
                getattr(model, site)[0] = torch.zeros(bad)
        text = str(caught.value)
        assert f"{site}[0]" in text and str(shape) in text and str(bad) in text, text


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_writes_of_another_float_dtype_are_cast_and_other_dtypes_refused(family: str) -> None:
    model = load_tiny(family)
    with torch.no_grad(), model.trace(TWO):
        h = model.layers_output[0]
        model.layers_output[0] = h.double() * 2
        doubled = model.logits.save()
    with torch.no_grad(), model.trace(TWO):
        model.layers_output[0] = model.layers_output[0] * 2
        reference = model.logits.save()
    assert torch.equal(doubled, reference)
    with pytest.raises(ShapeError, match="torch.int64"), torch.no_grad():
        with model.trace(TWO):
            model.layers_output[0] = torch.zeros_like(model.layers_output[0], dtype=torch.long)
    with pytest.raises(InputError, match="takes a tensor"), torch.no_grad():
        with model.trace(TWO):
            model.layers_output[0] = 0.0


def test_writes_to_token_embeddings_and_logits_are_checked() -> None:
    model = load_tiny("gpt2")
    with pytest.raises(ShapeError, match=r"token_embeddings"), torch.no_grad():
        with model.trace(TWO):
            model.token_embeddings = torch.zeros(model.hidden_size)
    with pytest.raises(ShapeError, match=r"logits"), torch.no_grad():
        with model.trace(TWO):
            model.logits = torch.zeros(2, 1, model.vocab_size)


def test_steer_rows_must_match_the_positions() -> None:
    model = load_tiny("llama")
    with pytest.raises(ShapeError, match="3 rows.*2 positions"), torch.no_grad():
        with model.trace(TWO):
            model.steer(0, torch.ones(3, model.hidden_size), token_positions=[-1, -2])
    with pytest.raises(ShapeError, match="expected \\(hidden,\\)"), torch.no_grad():
        with model.trace(TWO):
            model.steer(0, torch.ones(1, 2, model.hidden_size))
    with pytest.raises(InputError, match="token_positions"), torch.no_grad():
        with model.trace(TWO):
            model.steer(0, torch.ones(model.hidden_size), token_positions=[99])


def test_project_on_vocab_refuses_the_wrong_width() -> None:
    model = load_tiny("llama")
    with pytest.raises(ShapeError, match=r"hidden=64.*\(2, 65\)"), torch.no_grad():
        with model.trace(TWO):
            model.project_on_vocab(torch.zeros(2, model.hidden_size + 1))
    with pytest.raises(InputError, match="takes a tensor"), torch.no_grad():
        with model.trace(TWO):
            model.project_on_vocab([1.0, 2.0])


# -- loading and trace inputs ---------------------------------------------------------------------


def test_a_missing_folder_and_a_misspelt_embedded_name() -> None:
    with pytest.raises(InputError, match="does not exist"):
        StandardizedTransformer("/no/such/folder")
    with pytest.raises(InputError, match="did you mean the embedded model 'uniterp-tiny'"):
        StandardizedTransformer("uniterp-tyny")
    with pytest.raises(InputError, match="offline"):
        StandardizedTransformer("some-org/some-model-that-is-not-here")
    with pytest.raises(InputError, match="Hub id"):
        StandardizedTransformer(123)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [123, None, 1.5, [None], [1, "a"], torch.randn(2, 3), {"text": "x"}, [], [""], ""],
)
def test_trace_refuses_inputs_it_cannot_run(bad: Any) -> None:
    model = load_tiny("gpt2")
    with pytest.raises(InputError):
        with model.trace(bad):
            pass


def test_trace_refuses_token_ids_outside_the_vocabulary() -> None:
    model = load_tiny("gpt2")
    with pytest.raises(InputError, match="outside the vocabulary"):
        with model.trace([[1, 2, model.vocab_size]]):
            pass
    with torch.no_grad(), model.trace([[1, 2, 3]]):
        ok = model.logits.save()
    assert ok.shape == (1, 3, model.vocab_size)


@pytest.mark.parametrize(
    ("ids", "bad"),
    [
        ([[1, 2], [3, 10**6]], 10**6),
        ([[-1, 2]], -1),
        ([5, 10**6], 10**6),
        ({"input_ids": [[[1, 10**6]]]}, 10**6),
    ],
)
def test_token_ids_are_checked_in_every_layout(ids: Any, bad: int) -> None:
    from uniterp._inputs import check_token_ids

    with pytest.raises(InputError, match=f"token id {bad} is outside the vocabulary"):
        check_token_ids((ids,), 1000, "gpt2")
    check_token_ids(([[1, 2], [], [999]],), 1000, "gpt2")  # ragged and empty rows are fine


def test_a_prompt_longer_than_the_context_is_refused() -> None:
    model = StandardizedTransformer(tiny_model_path("gpt2", n_positions=16))
    assert model.binding.sizes.context_limit == 16
    with torch.no_grad(), model.trace([list(range(1, 17))]):
        fits = model.logits.save()
    assert fits.shape[1] == 16
    with pytest.raises(InputError, match="accepts at most 16 tokens"), torch.no_grad():
        with model.trace([list(range(1, 18))]):
            model.logits.save()
    with pytest.raises(InputError, match="accepts at most 16 tokens"), torch.no_grad():
        with model.generate([list(range(1, 15))], max_new_tokens=5, do_sample=False):
            pass
    assert load_tiny("llama").binding.sizes.context_limit is None  # rotary positions extrapolate


def test_an_out_of_order_read_names_the_standardized_value() -> None:
    model = load_tiny("gpt2")
    with (
        pytest.raises(OrderError, match=r"^layers_output\[0\] was requested after") as caught,
        torch.no_grad(),
    ):
        with model.trace(TWO):
            model.layers_output[1].save()
            model.layers_output[0].save()
    assert "model.transformer" not in str(caught.value).split("(")[0]


def test_a_users_tokenizer_keeps_its_padding_side() -> None:
    from transformers import AutoTokenizer

    path = tiny_model_path("llama")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "right"
    model = StandardizedTransformer(path, tokenizer=tokenizer)
    with torch.no_grad(), model.trace(PROMPTS):
        model.logits.save()
    assert tokenizer.padding_side == "right"
    assert model.tokenizer.padding_side == "left"


def test_loading_prints_no_progress_bars(capfd: pytest.CaptureFixture[str]) -> None:
    path = tiny_model_path("llama")
    capfd.readouterr()
    model = StandardizedTransformer(path)
    model.dispatch()
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err, err


def test_every_error_above_is_a_uniterp_error() -> None:
    for error in (InPlaceEditError, InputError, OrderError, ShapeError):
        assert issubclass(error, UniterpError)


def test_uniterp_errors_pickle_and_keep_their_fields() -> None:
    import pickle

    from uniterp import ArchitectureError, UnavailableError

    for error in (
        UnavailableError("llama", "W_Q", "no such weight"),
        ArchitectureError("llama", "layers", ["model.layers"], "no module"),
        ShapeError("bad shape"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
    assert pickle.loads(pickle.dumps(UnavailableError("t", "n", "r"))).reason == "r"
