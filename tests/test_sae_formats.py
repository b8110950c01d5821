"""SAEs written the way SAELens, sparsify and dictionary_learning write them (by hand, here), loaded
by uniterp and compared with each format's own math; round trips through `save_sae`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from uniterp import InputError, ShapeError
from uniterp.sae import SparseAutoencoder, Transcoder, load_sae, save_sae

D_IN, D_SAE, D_OUT = 16, 64, 12


def rand(*shape, seed: int, scale: float = 0.3) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 7, D_IN, generator=torch.Generator().manual_seed(99))


# --- SAELens: writer and reference ------------------------------------------------------------------

SAELENS_TENSORS = {
    "standard": ["W_enc", "b_enc", "W_dec", "b_dec"],
    "topk": ["W_enc", "b_enc", "W_dec", "b_dec"],
    "jumprelu": ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"],
    "gated": ["W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"],
    "transcoder": ["W_enc", "b_enc", "W_dec", "b_dec"],
    "skip_transcoder": ["W_enc", "b_enc", "W_dec", "b_dec", "W_skip"],
    "jumprelu_transcoder": ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"],
}


def saelens_tensors(architecture: str, d_in=D_IN, d_sae=D_SAE, d_out=D_IN) -> dict[str, torch.Tensor]:
    shapes = {
        "W_enc": (d_in, d_sae),
        "b_enc": (d_sae,),
        "W_dec": (d_sae, d_out),
        "b_dec": (d_out,),
        "threshold": (d_sae,),
        "b_gate": (d_sae,),
        "b_mag": (d_sae,),
        "r_mag": (d_sae,),
        "W_skip": (d_out, d_in),
    }
    out = {
        n: rand(*shapes[n], seed=i, scale=0.3 if n.startswith("W") else 0.1)
        for i, n in enumerate(SAELENS_TENSORS[architecture])
    }
    if "threshold" in out:
        out["threshold"] = out["threshold"].abs()
    return out


def write_saelens(
    folder: Path,
    architecture: str,
    tensors: dict | None = None,
    *,
    hook: str = "blocks.3.hook_resid_pre",
    version: str = "6.18.0",
    **fields,
) -> dict[str, torch.Tensor]:
    transcoder = "transcoder" in architecture
    d_out = D_OUT if transcoder else D_IN
    tensors = saelens_tensors(architecture, d_out=d_out) if tensors is None else tensors
    metadata = {
        "sae_lens_version": version,
        "sae_lens_training_version": version,
        "model_name": "gpt2",
        "hook_name": hook,
        "hook_head_index": None,
        "context_size": 128,
        "prepend_bos": True,
        "model_from_pretrained_kwargs": {},
    }
    cfg = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": not transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if architecture == "topk":
        cfg.update(k=6, rescale_acts_by_decoder_norm=False)
    if transcoder:
        cfg["d_out"] = d_out
        metadata["hook_name_out"] = "blocks.3.hook_mlp_out"
    cfg["architecture"] = architecture
    metadata.update(fields.pop("metadata", {}))
    cfg.update(fields)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return tensors


def saelens_reference(t: dict, architecture: str, x: torch.Tensor, apply_b_dec=True, k=6, rescale=False):
    """(latents, output) by SAELens's documented math."""
    h = x - t["b_dec"] if apply_b_dec and "transcoder" not in architecture else x
    if architecture == "gated":
        gate = ((h @ t["W_enc"] + t["b_gate"]) > 0).float()
        acts = gate * torch.relu(h @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"])
    else:
        pre = h @ t["W_enc"] + t["b_enc"]
        if rescale:
            pre = pre * t["W_dec"].norm(dim=-1)
        if architecture == "topk":
            values, indices = torch.topk(pre, k, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
        elif "jumprelu" in architecture:
            acts = torch.relu(pre) * (pre > t["threshold"]).float()
        else:
            acts = torch.relu(pre)
    f = acts / t["W_dec"].norm(dim=-1) if rescale else acts
    out = f @ t["W_dec"] + t["b_dec"]
    if architecture == "skip_transcoder":
        out = out + x @ t["W_skip"].T
    return acts, out


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu", "gated"])
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


@pytest.mark.parametrize("architecture", ["transcoder", "skip_transcoder", "jumprelu_transcoder"])
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


# --- sparsify ---------------------------------------------------------------------------------------


def write_sparsify(
    folder: Path, *, activation="topk", k=4, transcode=False, skip=False, old=False, dtype=torch.float32
):
    tensors = {
        "encoder.weight": rand(D_SAE, D_IN, seed=11),
        "encoder.bias": rand(D_SAE, seed=12, scale=0.1),
        "W_dec": rand(D_SAE, D_IN, seed=13),
        "b_dec": rand(D_IN, seed=14, scale=0.1),
    }
    if skip:
        tensors["W_skip"] = rand(D_IN, D_IN, seed=15)
    tensors = {n: v.to(dtype) for n, v in tensors.items()}
    if old:  # the first releases: no activation / transcode / skip fields, width from expansion_factor
        cfg = {
            "expansion_factor": D_SAE // D_IN,
            "normalize_decoder": True,
            "num_latents": 0,
            "k": k,
            "multi_topk": False,
            "d_in": D_IN,
        }
    else:
        cfg = {
            "activation": activation,
            "expansion_factor": 32,
            "normalize_decoder": True,
            "num_latents": D_SAE,
            "k": k,
            "multi_topk": False,
            "skip_connection": skip,
            "transcode": transcode,
            "d_in": D_IN,
        }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return tensors


def sparsify_reference(t: dict, x: torch.Tensor, activation="topk", k=4, transcode=False):
    flat = x.reshape(-1, D_IN)
    pre = torch.relu(
        F.linear(flat if transcode else flat - t["b_dec"], t["encoder.weight"], t["encoder.bias"])
    )
    if activation == "topk":
        values, indices = pre.topk(k, dim=-1, sorted=False)
    else:
        values, indices = pre.unflatten(-1, (k, -1)).max(dim=-1)
        indices = indices + torch.arange(0, D_SAE, D_SAE // k)
    out = F.embedding_bag(indices, t["W_dec"], per_sample_weights=values, mode="sum") + t["b_dec"]
    if "W_skip" in t:
        out = out + flat @ t["W_skip"].mT
    latents = torch.zeros_like(pre).scatter(-1, indices, values)
    return latents.reshape(*x.shape[:-1], D_SAE), out.reshape(*x.shape[:-1], D_IN)


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


# --- dictionary_learning ------------------------------------------------------------------------------


def dl_state(dict_class: str) -> dict[str, torch.Tensor]:
    if dict_class == "AutoEncoder":
        return {
            "bias": rand(D_IN, seed=1, scale=0.1),
            "encoder.weight": rand(D_SAE, D_IN, seed=2),
            "encoder.bias": rand(D_SAE, seed=3, scale=0.1),
            "decoder.weight": rand(D_IN, D_SAE, seed=4),
        }
    if dict_class == "AutoEncoderNew":
        return {
            "encoder.weight": rand(D_SAE, D_IN, seed=2),
            "encoder.bias": rand(D_SAE, seed=3, scale=0.1),
            "decoder.weight": rand(D_IN, D_SAE, seed=4),
            "decoder.bias": rand(D_IN, seed=5, scale=0.1),
        }
    if dict_class == "GatedAutoEncoder":
        return {
            "decoder_bias": rand(D_IN, seed=1, scale=0.1),
            "encoder.weight": rand(D_SAE, D_IN, seed=2),
            "r_mag": rand(D_SAE, seed=3, scale=0.1),
            "gate_bias": rand(D_SAE, seed=4, scale=0.1),
            "mag_bias": rand(D_SAE, seed=5, scale=0.1),
            "decoder.weight": rand(D_IN, D_SAE, seed=6),
        }
    if dict_class in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):
        state = {
            "W_enc": rand(D_IN, D_SAE, seed=2),
            "b_enc": rand(D_SAE, seed=3, scale=0.1),
            "W_dec": rand(D_SAE, D_IN, seed=4),
            "b_dec": rand(D_IN, seed=5, scale=0.1),
        }
        if dict_class == "JumpReluAutoEncoder":
            return {**state, "threshold": rand(D_SAE, seed=6, scale=0.1).abs()}
        return {
            **state,
            "k": torch.tensor(4, dtype=torch.int),
            "threshold": torch.tensor(0.04),
            "group_sizes": torch.tensor([16, 48]),
        }
    return {
        "k": torch.tensor(4, dtype=torch.int),
        "threshold": torch.tensor(0.04),
        "decoder.weight": rand(D_IN, D_SAE, seed=4),
        "encoder.weight": rand(D_SAE, D_IN, seed=2),
        "encoder.bias": rand(D_SAE, seed=3, scale=0.1),
        "b_dec": rand(D_IN, seed=5, scale=0.1),
    }


def write_dl(folder: Path, dict_class: str, io="out", state=None, safetensors=False) -> dict:
    state = dl_state(dict_class) if state is None else state
    trainer = {
        "trainer_class": "Trainer",
        "dict_class": dict_class,
        "activation_dim": D_IN,
        "dict_size": D_SAE,
        "layer": 3,
        "lm_name": "EleutherAI/pythia-70m-deduped",
        "submodule_name": "resid_post_layer_3",
        "seed": 0,
    }
    if "k" in state:
        trainer["k"] = 4
    folder.mkdir(parents=True, exist_ok=True)
    if safetensors:
        save_file(state, str(folder / "ae.safetensors"))
    else:
        torch.save(state, folder / "ae.pt")
    buffer = {"d_submodule": D_IN, "io": io, "n_ctxs": 30000, "ctx_len": 128}
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": buffer}, indent=4))
    return state


def dl_reference(dict_class: str, s: dict, x: torch.Tensor):
    """(latents, reconstruction) by dictionary_learning's classes' math (its default encode)."""
    if dict_class == "AutoEncoder":  # its from_pretrained normalises the decoder first
        enc_w, enc_b, dec_w = (
            s["encoder.weight"].clone(),
            s["encoder.bias"].clone(),
            s["decoder.weight"].clone(),
        )
        norms = torch.norm(dec_w, dim=0)
        if not torch.allclose(norms, torch.ones_like(norms)):
            dec_w /= norms
            enc_w *= norms[:, None]
            enc_b *= norms
        f = torch.relu(F.linear(x - s["bias"], enc_w, enc_b))
        return f, F.linear(f, dec_w) + s["bias"]
    if dict_class == "AutoEncoderNew":
        f = torch.relu(F.linear(x, s["encoder.weight"], s["encoder.bias"]))
        return f, F.linear(f, s["decoder.weight"], s["decoder.bias"])
    if dict_class == "GatedAutoEncoder":
        x_enc = F.linear(x - s["decoder_bias"], s["encoder.weight"])
        f = (x_enc + s["gate_bias"] > 0).float() * torch.relu(s["r_mag"].exp() * x_enc + s["mag_bias"])
        return f, F.linear(f, s["decoder.weight"]) + s["decoder_bias"]
    if dict_class == "JumpReluAutoEncoder":
        pre = x @ s["W_enc"] + s["b_enc"]
        f = torch.relu(pre * (pre > s["threshold"]))
        return f, f @ s["W_dec"] + s["b_dec"]
    if dict_class == "MatryoshkaBatchTopKSAE":
        post = torch.relu((x - s["b_dec"]) @ s["W_enc"] + s["b_enc"])
        f = post * (post > s["threshold"])
        return f, f @ s["W_dec"] + s["b_dec"]
    post = torch.relu(F.linear(x - s["b_dec"], s["encoder.weight"], s["encoder.bias"]))
    if dict_class == "AutoEncoderTopK":
        top = post.topk(int(s["k"]), sorted=False, dim=-1)
        f = torch.zeros_like(post).scatter_(-1, top.indices, top.values)
    else:  # BatchTopKSAE
        f = post * (post > s["threshold"])
    return f, F.linear(f, s["decoder.weight"]) + s["b_dec"]


DL_CLASSES = [
    "AutoEncoder",
    "AutoEncoderNew",
    "GatedAutoEncoder",
    "JumpReluAutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
]


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


# --- round trips --------------------------------------------------------------------------------------


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
    assert torch.equal(load_sae(tmp_path / "dl_as_saelens")(x), gated(x))


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


# --- errors --------------------------------------------------------------------------------------------


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
