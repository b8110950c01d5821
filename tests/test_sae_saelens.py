"""SAELens folders written by hand, loaded by uniterp, compared with SAELens's math; bad files refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sae_files import (
    D_IN,
    D_OUT,
    D_SAE,
    rand,
    saelens_reference,
    saelens_tensors,
    write_saelens,
)
from uniterp import InputError, ShapeError
from uniterp.sae import SparseAutoencoder, Transcoder, load_sae


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 7, D_IN, generator=torch.Generator().manual_seed(99))


@pytest.mark.parametrize("architecture", ["standard", "topk", "abstopk", "jumprelu", "gated"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_saelens_saes(tmp_path: Path, architecture: str, apply_b_dec: bool, x: torch.Tensor) -> None:
    t = write_saelens(tmp_path, architecture, apply_b_dec_to_input=apply_b_dec)
    sae = load_sae(tmp_path)
    assert type(sae) is SparseAutoencoder
    assert (sae.format, sae.hook_name, sae.model_name, sae.d_in, sae.d_sae) == (
        "saelens",
        "blocks.3.hook_resid_pre",
        "gpt2",
        D_IN,
        D_SAE,
    )
    assert sae.architecture == {"standard": "relu"}.get(architecture, architecture)
    acts, out = saelens_reference(t, architecture, x, apply_b_dec)
    torch.testing.assert_close(sae.encode(x), acts)
    torch.testing.assert_close(sae(x), out)
    assert torch.equal(sae.reconstruct_with_error(sae.encode(x), x), x)


@pytest.mark.parametrize(
    "architecture", ["transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"]
)
def test_saelens_transcoders(tmp_path: Path, architecture: str, x: torch.Tensor) -> None:
    t = write_saelens(tmp_path, architecture)
    tc = load_sae(tmp_path)
    assert isinstance(tc, Transcoder) and tc.is_transcoder
    assert (tc.hook_name, tc.hook_name_out, tc.d_out) == (
        "blocks.3.hook_resid_pre",
        "blocks.3.hook_mlp_out",
        D_OUT,
    )
    acts, out = saelens_reference(t, architecture, x)
    torch.testing.assert_close(tc.encode(x), acts)
    torch.testing.assert_close(tc(x), out)
    y = rand(3, 7, D_OUT, seed=5)
    assert torch.equal(tc.reconstruct_with_error(tc.encode(x), x, target=y), y)


def test_saelens_topk_rescaled(tmp_path: Path, x: torch.Tensor) -> None:
    t = write_saelens(tmp_path, "topk", rescale_acts_by_decoder_norm=True)
    acts, out = saelens_reference(t, "topk", x, rescale=True)
    sae = load_sae(tmp_path)
    torch.testing.assert_close(sae.encode(x), acts)
    torch.testing.assert_close(sae(x), out)


@pytest.mark.parametrize(
    "legacy",
    [
        {"hook_name": "blocks.2.hook_resid_pre", "hook_layer": 2, "activation_fn_str": "relu"},
        {"hook_point": "blocks.2.hook_resid_pre", "hook_point_layer": 2, "normalize_activations": False},
        {
            "hook_name": "blocks.2.hook_resid_pre",
            "hook_layer": 2,
            "activation_fn": "topk",
            "activation_fn_kwargs": {"k": 6},
        },
    ],
    ids=["v5", "v3-hook-point", "v5-topk"],
)
def test_saelens_pre6_configs(tmp_path: Path, legacy: dict, x: torch.Tensor) -> None:
    t = saelens_tensors("standard")
    save_file(t, str(tmp_path / "sae_weights.safetensors"))
    cfg = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "model_name": "gpt2",
        "apply_b_dec_to_input": True,
        "sae_lens_training_version": "3.5.0",
        **legacy,
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(tmp_path)
    assert (sae.hook_name, sae.hook_layer, sae.model_name) == ("blocks.2.hook_resid_pre", 2, "gpt2")
    arch = "topk" if legacy.get("activation_fn") == "topk" else "standard"
    assert sae.architecture == {"standard": "relu"}.get(arch, arch)
    acts, out = saelens_reference(t, arch, x)
    torch.testing.assert_close(sae.encode(x), acts)
    torch.testing.assert_close(sae(x), out)


def test_saelens_unit_scaling_factor_is_dropped(tmp_path: Path, x: torch.Tensor) -> None:
    t = saelens_tensors("standard")
    write_saelens(tmp_path, "standard", {**t, "scaling_factor": torch.ones(D_SAE)}, version="4.0.0")
    torch.testing.assert_close(load_sae(tmp_path)(x), saelens_reference(t, "standard", x)[1])
    write_saelens(tmp_path, "standard", {**t, "scaling_factor": torch.full((D_SAE,), 2.0)}, version="4.0.0")
    with pytest.raises(InputError, match="scaling_factor"):
        load_sae(tmp_path)


def test_saelens_expected_average_only_in(tmp_path: Path, x: torch.Tensor) -> None:
    t = write_saelens(tmp_path, "jumprelu", normalize_activations="expected_average_only_in")
    with pytest.raises(InputError, match="norm_scaling_factor") as info:
        load_sae(tmp_path)
    assert "cfg.json" in str(info.value) and "expected_average_only_in" in str(info.value)
    s = 0.37
    acts, out = saelens_reference(t, "jumprelu", x * s)  # trained on x * s, reconstructs x * s
    sae = load_sae(tmp_path, norm_scaling_factor=s)
    assert sae.normalize_activations == "none"
    torch.testing.assert_close(sae.encode(x), acts)
    torch.testing.assert_close(sae(x), out / s)
    (tmp_path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": s}))
    torch.testing.assert_close(load_sae(tmp_path)(x), out / s)


def test_saelens_constant_norm_rescale(tmp_path: Path, x: torch.Tensor) -> None:
    t = write_saelens(tmp_path, "standard", normalize_activations="constant_norm_rescale")
    coeff = D_IN**0.5 / x.norm(dim=-1, keepdim=True)
    acts, out = saelens_reference(t, "standard", x * coeff)
    sae = load_sae(tmp_path)
    torch.testing.assert_close(sae.encode(x), acts)
    torch.testing.assert_close(sae(x), out / coeff)


def test_saelens_batchtopk_checkpoint_is_a_jumprelu(tmp_path: Path, x: torch.Tensor) -> None:
    t = saelens_tensors("standard")
    write_saelens(
        tmp_path,
        "batchtopk",
        {**t, "topk_threshold": torch.tensor(0.05, dtype=torch.float64)},
        k=6.0,
        rescale_acts_by_decoder_norm=True,
    )
    # SAELens's inference form: decoder norms folded into the encoder, then a JumpReLU with one threshold
    n = t["W_dec"].norm(dim=-1)
    folded = {
        "W_enc": t["W_enc"] * n,
        "b_enc": t["b_enc"] * n,
        "W_dec": t["W_dec"] / n[:, None],
        "b_dec": t["b_dec"],
        "threshold": torch.full((D_SAE,), 0.05),
    }
    acts, out = saelens_reference(folded, "jumprelu", x)
    sae = load_sae(tmp_path)
    assert sae.architecture == "jumprelu"
    torch.testing.assert_close(sae.encode(x), acts)
    torch.testing.assert_close(sae(x), out)


def test_saelens_statistics_and_dtypes(tmp_path: Path) -> None:
    write_saelens(
        tmp_path / "a", "standard", metadata={"l0": 12.5}, variance_explained=0.8, dtype="torch.bfloat16"
    )
    a = load_sae(tmp_path / "a")
    assert a.statistics == {"l0": 12.5, "explained_variance": 0.8} and a.dtype == torch.bfloat16
    assert a.metadata.statistic_sources["l0"] == "cfg.json: metadata.l0"
    assert load_sae(tmp_path / "a", dtype="float64").dtype == torch.float64
    write_saelens(tmp_path / "b", "standard")
    log_freq = torch.log10(torch.full((D_SAE,), 0.25) + 1e-10)
    save_file({"sparsity": log_freq}, str(tmp_path / "b" / "sparsity.safetensors"))
    assert load_sae(tmp_path / "b").statistics["l0"] == pytest.approx(0.25 * D_SAE, rel=1e-6)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown SAE format 'npz'"):
        load_sae(tmp_path, format="npz")
    with pytest.raises(InputError, match="sae_weights.safetensors"):
        load_sae(tmp_path)  # empty folder: the message lists what each format needs
    with pytest.raises(InputError, match="no such file or folder"):
        load_sae(tmp_path / "missing")

    write_saelens(tmp_path / "ok", "jumprelu")
    (tmp_path / "ok" / "sae_weights.safetensors").unlink()
    with pytest.raises(
        InputError, match="holds a saelens config but not its weights: missing file .*sae_weights"
    ):
        load_sae(tmp_path / "ok", format="saelens")
    with pytest.raises(InputError, match="missing file .*ok/sae_weights.safetensors'"):
        load_sae(tmp_path / "ok")

    t = saelens_tensors("jumprelu")
    del t["threshold"]
    write_saelens(tmp_path / "missing_tensor", "jumprelu", t)
    with pytest.raises(InputError, match="missing tensor\\(s\\) \\['threshold'\\]") as info:
        load_sae(tmp_path / "missing_tensor")
    assert "sae_weights.safetensors" in str(info.value)

    write_saelens(tmp_path / "extra", "standard", {**saelens_tensors("standard"), "mystery": torch.zeros(3)})
    with pytest.raises(InputError, match="unexpected tensor\\(s\\) \\['mystery'\\]"):
        load_sae(tmp_path / "extra")

    write_saelens(tmp_path / "shape", "standard", d_sae=32)
    with pytest.raises(ShapeError) as info:
        load_sae(tmp_path / "shape")
    message = str(info.value)
    assert "'W_enc'" in message and "(16, 64)" in message and "(16, 32)" in message and "d_sae=32" in message

    write_saelens(tmp_path / "arch", "standard")
    cfg = json.loads((tmp_path / "arch" / "cfg.json").read_text())
    (tmp_path / "arch" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "mystery_sae"}))
    with pytest.raises(InputError, match="architecture 'mystery_sae' is not supported"):
        load_sae(tmp_path / "arch")
    write_saelens(tmp_path / "norm", "standard", normalize_activations="whiten")
    with pytest.raises(InputError, match="normalize_activations 'whiten'"):
        load_sae(tmp_path / "norm")
    write_saelens(tmp_path / "whiten", "standard", normalize_activations="covariance_whitening")
    with pytest.raises(InputError, match="covariance_whitening.*does not store"):
        load_sae(tmp_path / "whiten")
    write_saelens(tmp_path / "dtype", "standard", dtype="int8")
    with pytest.raises(InputError, match="dtype 'int8'"):
        load_sae(tmp_path / "dtype")
    write_saelens(tmp_path / "nodin", "standard", d_in="sixteen")
    with pytest.raises(InputError, match="field 'd_in' is 'sixteen'"):
        load_sae(tmp_path / "nodin")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "cfg.json").write_text("{not json")
    save_file(saelens_tensors("standard"), str(tmp_path / "badjson" / "sae_weights.safetensors"))
    with pytest.raises(InputError, match="not readable JSON"):
        load_sae(tmp_path / "badjson")
    (tmp_path / "badweights").mkdir()
    write_saelens(tmp_path / "badweights", "standard")
    (tmp_path / "badweights" / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_sae(tmp_path / "badweights")
