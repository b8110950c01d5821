"""sparsify and dictionary_learning folders written by hand, loaded by uniterp, compared with each
project's math; bad files refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sae_files import (
    D_IN,
    D_SAE,
    DL_CLASSES,
    dl_reference,
    dl_state,
    sparsify_reference,
    write_dl,
    write_sparsify,
)
from uniterp import InputError, ShapeError
from uniterp.sae import Transcoder, load_sae


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 7, D_IN, generator=torch.Generator().manual_seed(99))


@pytest.mark.parametrize("activation", ["topk", "groupmax"])
@pytest.mark.parametrize("transcode", [False, True])
@pytest.mark.parametrize("skip", [False, True])
def test_sparsify(tmp_path: Path, activation: str, transcode: bool, skip: bool, x: torch.Tensor) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m", "sae": {}}))
    t = write_sparsify(tmp_path / "layers.10", activation=activation, transcode=transcode, skip=skip)
    sae = load_sae(tmp_path / "layers.10")
    assert isinstance(sae, Transcoder) is transcode
    assert (sae.format, sae.hook_name, sae.hook_layer, sae.model_name) == (
        "sparsify",
        "layers.10",
        10,
        "EleutherAI/pythia-70m",
    )
    assert (sae.metadata.hook_io, sae.hook_name_out) == (
        ("in_and_out", "layers.10") if transcode else ("out", None)
    )
    latents, out = sparsify_reference(t, x, activation, transcode=transcode)
    torch.testing.assert_close(sae.encode(x), latents)
    torch.testing.assert_close(sae(x), out)


def test_sparsify_first_release_config(tmp_path: Path, x: torch.Tensor) -> None:
    t = write_sparsify(tmp_path / "layers.3", old=True, dtype=torch.bfloat16)
    sae = load_sae(tmp_path / "layers.3")
    assert (sae.architecture, sae.k, sae.d_sae, sae.dtype, sae.metadata.hook_io) == (
        "topk",
        4,
        D_SAE,
        torch.bfloat16,
        "out",
    )
    as_float = load_sae(tmp_path / "layers.3", dtype=torch.float32)
    latents, out = sparsify_reference({n: v.float() for n, v in t.items()}, x)
    torch.testing.assert_close(as_float.encode(x), latents)
    torch.testing.assert_close(as_float(x), out)


@pytest.mark.parametrize("dict_class", DL_CLASSES)
def test_dictionary_learning(tmp_path: Path, dict_class: str, x: torch.Tensor) -> None:
    s = write_dl(tmp_path, dict_class)
    sae = load_sae(tmp_path)
    assert (sae.format, sae.hook_name, sae.hook_layer, sae.model_name, sae.metadata.hook_io) == (
        "dictionary_learning",
        "resid_post_layer_3",
        3,
        "EleutherAI/pythia-70m-deduped",
        "out",
    )
    latents, out = dl_reference(dict_class, s, x)
    torch.testing.assert_close(sae.encode(x), latents)
    torch.testing.assert_close(sae(x), out)
    assert torch.equal(sae.reconstruct_with_error(sae.encode(x), x), x)


def test_dictionary_learning_decoder_normalisation_keeps_reconstruction(
    tmp_path: Path, x: torch.Tensor
) -> None:
    s = write_dl(tmp_path, "AutoEncoder")
    plain = (
        F.linear(
            torch.relu(F.linear(x - s["bias"], s["encoder.weight"], s["encoder.bias"])), s["decoder.weight"]
        )
        + s["bias"]
    )
    sae = load_sae(tmp_path)
    torch.testing.assert_close(sae(x), plain)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))


def test_dictionary_learning_transcoder_and_safetensors(tmp_path: Path, x: torch.Tensor) -> None:
    s = write_dl(tmp_path, "JumpReluAutoEncoder", io="in_and_out", safetensors=True)
    tc = load_sae(tmp_path)
    assert isinstance(tc, Transcoder) and (tc.hook_name, tc.hook_name_out) == (
        "resid_post_layer_3",
        "resid_post_layer_3",
    )
    torch.testing.assert_close(tc(x), dl_reference("JumpReluAutoEncoder", s, x)[1])


def test_sparsify_and_dl_errors(tmp_path: Path) -> None:
    write_sparsify(tmp_path / "a" / "layers.0", activation="jumprelu")
    with pytest.raises(InputError, match="activation 'jumprelu' is not supported"):
        load_sae(tmp_path / "a" / "layers.0")
    write_sparsify(tmp_path / "b" / "layers.0")
    cfg = json.loads((tmp_path / "b" / "layers.0" / "cfg.json").read_text())
    (tmp_path / "b" / "layers.0" / "cfg.json").write_text(json.dumps({**cfg, "num_latents": 128}))
    with pytest.raises(ShapeError, match="num_latents=128"):
        load_sae(tmp_path / "b" / "layers.0")

    write_dl(tmp_path / "c", "IdentityDict", state={"x": torch.zeros(1)})
    with pytest.raises(InputError, match="dict_class 'IdentityDict' is not supported"):
        load_sae(tmp_path / "c")
    write_dl(
        tmp_path / "d", "AutoEncoder", state={"step": 10, "ae": dl_state("AutoEncoder"), "optimizer": {}}
    )
    with pytest.raises(InputError, match="mid-training backup"):
        load_sae(tmp_path / "d")
    write_dl(tmp_path / "e", "AutoEncoder")
    torch.save({"weights": _Opaque()}, tmp_path / "e" / "ae.pt")
    with pytest.raises(InputError, match="weights_only=True"):
        load_sae(tmp_path / "e")
    s = dl_state("AutoEncoderTopK")
    write_dl(tmp_path / "f", "AutoEncoderTopK", state={**s, "k": torch.tensor(7, dtype=torch.int)})
    with pytest.raises(InputError, match="trainer.k=4 .* k=7"):
        load_sae(tmp_path / "f")


class _Opaque:
    """Not a tensor: torch.load(weights_only=True) must refuse to build it."""
