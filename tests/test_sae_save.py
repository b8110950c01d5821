"""Round trips through `save_sae`: same files back, bit for bit; across formats; refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_files import (
    D_IN,
    D_SAE,
    SAELENS_TENSORS,
    write_dl,
    write_saelens,
    write_sparsify,
)
from uniterp import InputError
from uniterp.sae import SparseAutoencoder, load_sae, save_sae


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 7, D_IN, generator=torch.Generator().manual_seed(99))


def _params(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    return dict(sae.named_parameters())


def _bit_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[n].dtype == b[n].dtype and torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("architecture", list(SAELENS_TENSORS))
def test_saelens_round_trip(tmp_path: Path, architecture: str, x: torch.Tensor) -> None:
    written = write_saelens(tmp_path / "in", architecture)
    sae = load_sae(tmp_path / "in")
    save_sae(sae, tmp_path / "out")
    assert _bit_equal(load_file(str(tmp_path / "out" / "sae_weights.safetensors")), written)
    cfg_in = json.loads((tmp_path / "in" / "cfg.json").read_text())
    cfg_out = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg_out == cfg_in  # same fields, values and metadata as SAELens wrote them
    again = load_sae(tmp_path / "out")
    assert _bit_equal(_params(again), _params(sae)) and type(again) is type(sae)
    assert (again.hook_name, again.hook_name_out, again.architecture, again.k) == (
        sae.hook_name,
        sae.hook_name_out,
        sae.architecture,
        sae.k,
    )
    assert torch.equal(again(x), sae(x))


@pytest.mark.parametrize("activation", ["topk", "groupmax"])
@pytest.mark.parametrize("transcode", [False, True])
def test_sparsify_round_trip(tmp_path: Path, activation: str, transcode: bool, x: torch.Tensor) -> None:
    written = write_sparsify(
        tmp_path / "in" / "layers.4", activation=activation, transcode=transcode, skip=transcode
    )
    sae = load_sae(tmp_path / "in" / "layers.4")
    save_sae(sae, tmp_path / "out" / "layers.4", format="sparsify")
    assert _bit_equal(load_file(str(tmp_path / "out" / "layers.4" / "sae.safetensors")), written)
    cfg_in = json.loads((tmp_path / "in" / "layers.4" / "cfg.json").read_text())
    assert json.loads((tmp_path / "out" / "layers.4" / "cfg.json").read_text()) == cfg_in
    again = load_sae(tmp_path / "out" / "layers.4")
    assert _bit_equal(_params(again), _params(sae)) and torch.equal(again(x), sae(x))


def test_cross_format_round_trips(tmp_path: Path, x: torch.Tensor) -> None:
    write_sparsify(tmp_path / "sp" / "layers.1")
    sparsify_sae = load_sae(tmp_path / "sp" / "layers.1")
    save_sae(sparsify_sae, tmp_path / "as_saelens")
    as_saelens = load_sae(tmp_path / "as_saelens")
    cfg = json.loads((tmp_path / "as_saelens" / "cfg.json").read_text())
    assert (
        cfg["architecture"],
        cfg["k"],
        cfg["metadata"]["sae_lens_version"],
        cfg["metadata"]["hook_name"],
        cfg["dtype"],
    ) == ("topk", 4, "6.0.0", "layers.1", "float32")
    assert torch.equal(as_saelens.encode(x), sparsify_sae.encode(x)) and torch.equal(
        as_saelens(x), sparsify_sae(x)
    )
    save_sae(as_saelens, tmp_path / "back" / "layers.1", format="sparsify")
    assert _bit_equal(_params(load_sae(tmp_path / "back" / "layers.1")), _params(sparsify_sae))

    write_dl(tmp_path / "dl", "GatedAutoEncoder")
    gated = load_sae(tmp_path / "dl")
    save_sae(gated, tmp_path / "dl_as_saelens")
    written = load_file(str(tmp_path / "dl_as_saelens" / "sae_weights.safetensors"))
    assert {n: tuple(v.shape) for n, v in written.items()} == {
        "W_enc": (D_IN, D_SAE),
        "W_dec": (D_SAE, D_IN),
        "b_dec": (D_IN,),
        "b_gate": (D_SAE,),
        "b_mag": (D_SAE,),
        "r_mag": (D_SAE,),
    }
    from_saelens = load_sae(tmp_path / "dl_as_saelens")
    assert torch.equal(from_saelens(x), gated(x))
    assert (
        from_saelens.hook_name,
        from_saelens.hook_layer,
        from_saelens.metadata.hook_io,
        from_saelens.model_name,
    ) == ("resid_post_layer_3", 3, "out", "EleutherAI/pythia-70m-deduped")


def test_save_refuses_what_a_format_cannot_express(tmp_path: Path) -> None:
    write_sparsify(tmp_path / "g" / "layers.0", activation="groupmax")
    with pytest.raises(InputError, match="groupmax"):
        save_sae(load_sae(tmp_path / "g" / "layers.0"), tmp_path / "x")
    write_saelens(tmp_path / "gated", "gated")
    with pytest.raises(InputError, match="sparsify's format: architecture='gated'"):
        save_sae(load_sae(tmp_path / "gated"), tmp_path / "y", format="sparsify")
    write_saelens(tmp_path / "tc", "transcoder")
    with pytest.raises(InputError, match="d_out=12"):
        save_sae(load_sae(tmp_path / "tc"), tmp_path / "z", format="sparsify")
    with pytest.raises(InputError, match="'saelens' or 'sparsify'"):
        save_sae(load_sae(tmp_path / "gated"), tmp_path / "w", format="dictionary_learning")
