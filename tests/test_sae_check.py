"""The check at attach time (FVU and L0 on live activations against the declared values), the hook
names of each format, and round trips through the saved formats."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sae_models import load, random_sae, site_tokens, train_topk
from uniterp._errors import CheckFailedError, InputError, UnavailableError
from uniterp._sae_check import canonical_model_name, judge
from uniterp.sae import SparseAutoencoder, load_sae, save_sae

from conftest import PROMPTS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # the tiny model's corpus generator
from tiny_corpus import generate_documents  # noqa: E402

TRAIN = generate_documents(48, seed=1)
CHECK = generate_documents(8, seed=2)


@pytest.fixture
def clean() -> Iterator[None]:
    yield
    from sae_models import _MODELS

    for model in _MODELS.values():
        model.detach()


_TRAINED: dict[str, SparseAutoencoder] = {}


def trained(family: str, site: str, out: str | None = None) -> SparseAutoencoder:
    """A TopK SAE (a transcoder with ``out``) trained on ``site`` of ``family`` on the generated corpus."""
    key = f"{family}:{site}:{out}"
    if key not in _TRAINED:
        model = load(family)
        x = site_tokens(model, site, TRAIN)
        target = None if out is None else site_tokens(model, out, TRAIN)
        _TRAINED[key] = train_topk(x, target=target)
    return _TRAINED[key]


@pytest.mark.parametrize("family", ["uniterp-tiny", "llama"])
def test_check_passes_the_right_site_and_catches_misplaced_ones(
    family: str, clean: None, caplog: pytest.LogCaptureFixture
) -> None:
    model = load(family)
    sae = trained(family, "blocks.1.hook_attn_out")
    declared = sae.statistics["fvu"]
    report = model.attach(sae, at="blocks.1.hook_attn_out", prompts=CHECK)
    assert report.verdict == "ok" and report.passed, str(report)
    assert report.fvu is not None and report.fvu < max(0.5, 3 * declared)
    assert report.declared_fvu == declared and report.declared_l0 == sae.statistics["l0"]
    assert report.l0 == pytest.approx(8.0)  # TopK with k=8
    assert report.n_tokens > 50
    model.detach()
    last = model.num_layers - 1
    for wrong in (f"blocks.{last}.hook_attn_out", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="uniterp"):
            report = model.attach(sae, at=wrong, prompts=CHECK)
        assert report.verdict == "misplaced" and not report.passed, str(report)
        assert "probably misplaced" in caplog.text and wrong in caplog.text
        assert model.attachments[wrong].report is report  # attached all the same, with the warning
        model.detach()
        with pytest.raises(CheckFailedError, match="probably misplaced"):
            model.attach(sae, at=wrong, prompts=CHECK, strict=True)
        assert model.attachments == {}


def test_check_of_a_transcoder_measures_the_output_site(clean: None) -> None:
    model = load("uniterp-tiny")
    tc = trained("uniterp-tiny", "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out")
    assert tc.is_transcoder
    report = model.attach(tc, at="blocks.1.hook_mlp_in", at_out="blocks.1.hook_mlp_out", prompts=CHECK)
    assert report.verdict == "ok", str(report)
    assert (report.site, report.site_out) == ("mlps_input.1", "mlps_output.1")
    model.detach()
    report = model.attach(tc, at="blocks.3.hook_mlp_in", at_out="blocks.3.hook_mlp_out", prompts=CHECK)
    assert report.verdict == "misplaced", str(report)


def test_check_counts_only_real_tokens(clean: None) -> None:
    model = load("uniterp-tiny")
    sae = random_sae(model.hidden_size, hook="blocks.1.hook_resid_post")
    report = model.attach(sae, prompts=PROMPTS)
    lengths = [len(ids) for ids in model.tokenizer(PROMPTS)["input_ids"]]
    assert report.n_tokens == sum(lengths) - len(PROMPTS)  # padding and each first token left out
    model.detach()
    default = model.attach(sae)  # the built-in prompts
    assert default.n_tokens > 80 and default.fvu is not None
    model.detach()
    with pytest.raises(InputError, match=r"leave [01] token"):
        model.attach(sae, prompts=["a"])
    unchecked = model.attach(sae, check=False)
    assert unchecked.verdict == "unchecked" and unchecked.fvu is None and "unchecked" in str(unchecked)


def test_thresholds() -> None:
    assert judge(0.3, 10, 0.1, 10)[0] == "ok"  # under max(0.5, 3 * 0.1)
    assert judge(0.6, 10, 0.1, 10)[0] == "misplaced"
    assert judge(0.6, 10, 0.3, 10)[0] == "ok"  # under 3 * 0.3
    assert judge(1.2, 10, None, None)[0] == "misplaced"
    verdict, notes = judge(0.8, 10, None, None)
    assert verdict == "ok" and "no declared FVU" in notes[0]
    verdict, notes = judge(0.1, 200, 0.1, 20)
    assert verdict == "ok" and "L0 200.0 is more than 4x off the declared 20.0" in notes[0]


def test_model_name_mismatch_is_warned(clean: None, caplog: pytest.LogCaptureFixture) -> None:
    model = load("uniterp-tiny")
    sae = random_sae(model.hidden_size, hook="blocks.1.hook_resid_post")
    sae.metadata.model_name = "google/gemma-2-2b"
    with caplog.at_level(logging.WARNING, logger="uniterp"):
        report = model.attach(sae, check=False)
    assert any("trained on 'google/gemma-2-2b'" in note for note in report.notes)
    assert "gemma-2-2b" in caplog.text
    assert canonical_model_name("gpt2-small") == canonical_model_name("openai-community/gpt2") == "gpt2"
    assert canonical_model_name("google/gemma-2-2b") == canonical_model_name("gemma-2-2b")


# -- hook names of each format ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("hook", "io", "site"),
    [
        ("blocks.2.hook_resid_pre", None, "layers_input.2"),
        ("blocks.2.hook_resid_mid", None, "residual_mid.2"),
        ("blocks.2.hook_resid_post", None, "layers_output.2"),
        ("blocks.2.hook_attn_out", None, "attentions_output.2"),
        ("blocks.2.hook_mlp_out", None, "mlps_output.2"),
        ("blocks.2.hook_mlp_in", None, "mlps_input.2"),
        (
            "blocks.2.ln2.hook_normalized",
            None,
            "residual_mid.2 normalized by model.layers.2.post_attention_layernorm",
        ),
        ("hook_embed", None, "token_embeddings"),
        ("layers.2", "out", "layers_output.2"),
        ("layers.2", "in", "layers_input.2"),
        ("layers.2.mlp", "out", "mlps_output.2"),
        ("layers.2.mlp", "in", "mlps_input.2"),
        ("model.layers.2.self_attn", "out", "attentions_output.2"),
        ("resid_post_layer_2", "out", "layers_output.2"),
        ("resid_2", "out", "layers_output.2"),
        ("resid_2", "in", "layers_input.2"),
        ("attn_2", "out", "attentions_output.2"),
        ("mlp_2", "out", "mlps_output.2"),
        ("mlp_2", "in", "mlps_input.2"),
        ("embed", "out", "token_embeddings"),
        ("layers_output.2", None, "layers_output.2"),
    ],
)
def test_each_format_s_hook_names_map_to_their_value(
    hook: str, io: str | None, site: str, clean: None
) -> None:
    model = load("uniterp-tiny")
    sae = random_sae(model.hidden_size, hook=hook)
    sae.metadata.hook_io = io
    assert model.attach(sae, check=False).site == site


def test_unknown_and_refused_format_names() -> None:
    model = load("uniterp-tiny")
    sae = random_sae(model.hidden_size, hook="embed")
    sae.metadata.hook_io = "in"
    with pytest.raises(InputError, match="no input value"):
        model.attach(sae, check=False)
    with pytest.raises(UnavailableError, match="hook_pos_embed"):
        model.attach(random_sae(model.hidden_size, hook="hook_pos_embed"), check=False)


# -- round trips through the saved formats ---------------------------------------------------


def _latents(model, name: str, prompts: list[str]) -> torch.Tensor:
    with torch.no_grad(), model.trace(prompts):
        out = model.sae_latents[name].save()
    return out


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_save_load_attach_round_trip(fmt: str, tmp_path: Path, clean: None) -> None:
    model = load("uniterp-tiny")
    sae = trained("uniterp-tiny", "blocks.1.hook_attn_out")
    hook = "blocks.1.hook_attn_out" if fmt == "saelens" else "layers.1.self_attn"
    copy = SparseAutoencoder(
        sae.d_in,
        sae.d_sae,
        architecture="topk",
        k=sae.k,
        weights=dict(sae.named_parameters()),
    )
    copy.metadata.hook_name = hook
    copy.metadata.hook_io = None if fmt == "saelens" else "out"
    copy.metadata.statistics = dict(sae.statistics)
    folder = tmp_path / hook
    save_sae(copy, folder, format=fmt)
    loaded = load_sae(folder)
    assert loaded.format == fmt and loaded.hook_name == hook
    report = model.attach(loaded, prompts=CHECK)
    assert report.site == "attentions_output.1" and report.verdict == "ok", str(report)
    got = _latents(model, hook, CHECK)
    model.detach()
    model.attach(sae, at="blocks.1.hook_attn_out", check=False)
    expected = _latents(model, "blocks.1.hook_attn_out", CHECK)
    assert torch.equal(got, expected)


def test_dictionary_learning_folder_attaches_by_its_submodule_name(tmp_path: Path, clean: None) -> None:
    model = load("uniterp-tiny")
    d, n = model.hidden_size, 64
    g = torch.Generator().manual_seed(0)
    state = {
        "encoder.weight": 0.2 * torch.randn(n, d, generator=g),
        "encoder.bias": 0.1 * torch.randn(n, generator=g),
        "decoder.weight": 0.2 * torch.randn(d, n, generator=g),
        "decoder.bias": 0.1 * torch.randn(d, generator=g),
    }
    trainer = {
        "dict_class": "AutoEncoderNew",
        "activation_dim": d,
        "dict_size": n,
        "layer": 2,
        "lm_name": "uniterp-tiny",
        "submodule_name": "resid_post_layer_2",
    }
    tmp_path.mkdir(exist_ok=True)
    torch.save(state, tmp_path / "ae.pt")
    (tmp_path / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"io": "out"}}))
    sae = load_sae(tmp_path)
    assert sae.format == "dictionary_learning"
    assert model.attach(sae, check=False).site == "layers_output.2"
    with torch.no_grad(), model.trace(PROMPTS):
        h = model.layers_output[2].save()
        latents = model.sae_latents["resid_post_layer_2"].save()
    manual = torch.relu(h @ state["encoder.weight"].T + state["encoder.bias"])  # AutoEncoderNew's encoder
    torch.testing.assert_close(latents, manual)
