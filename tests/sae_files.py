"""Tiny SAEs written the way SAELens, sparsify and dictionary_learning write them, and each
format's math, written out by hand from the formats' documentation and code (independent of uniterp)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

D_IN, D_SAE, D_OUT = 16, 64, 12


def rand(*shape, seed: int, scale: float = 0.3) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


SAELENS_TENSORS = {
    "standard": ["W_enc", "b_enc", "W_dec", "b_dec"],
    "topk": ["W_enc", "b_enc", "W_dec", "b_dec"],
    "abstopk": ["W_enc", "b_enc", "W_dec", "b_dec"],
    "jumprelu": ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"],
    "gated": ["W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"],
    "transcoder": ["W_enc", "b_enc", "W_dec", "b_dec"],
    "skip_transcoder": ["W_enc", "b_enc", "W_dec", "b_dec", "W_skip"],
    "jumprelu_transcoder": ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"],
    "jumprelu_skip_transcoder": ["W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip"],
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
    if architecture in ("topk", "abstopk"):
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
        elif architecture == "abstopk":
            indices = torch.topk(pre.abs(), k, dim=-1).indices
            acts = torch.zeros_like(pre).scatter(-1, indices, pre.gather(-1, indices))
        elif "jumprelu" in architecture:
            acts = torch.relu(pre) * (pre > t["threshold"]).float()
        else:
            acts = torch.relu(pre)
    f = acts / t["W_dec"].norm(dim=-1) if rescale else acts
    out = f @ t["W_dec"] + t["b_dec"]
    if "skip_transcoder" in architecture:
        out = out + x @ t["W_skip"].T
    return acts, out


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
