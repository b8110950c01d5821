"""Models with the SAE methods, and tiny SAEs and transcoders built or trained for them in plain torch."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM

from uniterp import StandardizedTransformer
from uniterp._aliases import read_ref
from uniterp._sae_attach import SAEAttachment
from uniterp.sae import SparseAutoencoder, Transcoder, fvu, l0, tensor_shapes
from uniterp.testing import tiny_model_path

Model = StandardizedTransformer
assert issubclass(Model, SAEAttachment)


_MODELS: dict[str, Model] = {}
_REFERENCES: dict[str, torch.nn.Module] = {}


def load(family: str) -> Model:
    """A tiny model of ``family`` (or the embedded ``"uniterp-tiny"``), cached; detach what you attach."""
    if family not in _MODELS:
        source = "uniterp-tiny" if family == "uniterp-tiny" else tiny_model_path(family)
        _MODELS[family] = Model(source)
    return _MODELS[family]


def reference(family: str) -> torch.nn.Module:
    """A plain HF copy of the same weights, with no uniterp or nnsight code on it."""
    if family not in _REFERENCES:
        from uniterp.tiny import tiny_model_dir

        path = tiny_model_dir() if family == "uniterp-tiny" else tiny_model_path(family)
        _REFERENCES[family] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return _REFERENCES[family]


def random_sae(
    d_in: int,
    d_sae: int = 96,
    hook: str | None = None,
    *,
    architecture: str = "relu",
    k: int | None = None,
    seed: int = 0,
    scale: float = 0.2,
    **options: Any,
) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    weights = {
        n: scale * torch.randn(s, generator=g) for n, s in tensor_shapes(architecture, d_in, d_sae).items()
    }
    if "threshold" in weights:
        weights["threshold"] = weights["threshold"].abs()
    sae = SparseAutoencoder(d_in, d_sae, architecture=architecture, k=k, weights=weights, **options)
    sae.metadata.hook_name = hook
    return sae


def random_transcoder(
    d_in: int,
    d_out: int,
    hook_in: str,
    hook_out: str | None,
    d_sae: int = 96,
    seed: int = 1,
    skip: bool = False,
) -> Transcoder:
    g = torch.Generator().manual_seed(seed)
    shapes = tensor_shapes("relu", d_in, d_sae, d_out=d_out, skip=skip)
    weights = {n: 0.2 * torch.randn(s, generator=g) for n, s in shapes.items()}
    tc = Transcoder(d_in, d_sae, d_out, weights=weights, skip_connection=skip)
    tc.metadata.hook_name = hook_in
    tc.metadata.hook_name_out = hook_out
    return tc


def site_tokens(model: StandardizedTransformer, name: str, prompts: list[str]) -> torch.Tensor:
    """The value ``name`` names at every counted token (not padding, not a row's first token): ``(n, d)``."""
    ref = model.sites.resolve(name)
    with torch.no_grad(), model.trace(prompts):
        mask = model.attention_mask.save()
        x = read_ref(model, ref).save()
    keep = mask.bool()
    keep &= ~((keep.long().cumsum(-1) == 1) & keep)
    return x[keep]


def train_topk(
    x: torch.Tensor,
    d_sae: int = 256,
    k: int = 8,
    steps: int = 300,
    seed: int = 0,
    target: torch.Tensor | None = None,
) -> SparseAutoencoder:
    """A TopK SAE (or, with ``target``, a transcoder) trained on ``x (n, d)`` with Adam; the FVU and L0 on
    the training tokens are declared in its statistics."""
    g = torch.Generator().manual_seed(seed)
    d_in = x.shape[1]
    y = x if target is None else target
    d_out = y.shape[1]
    w_dec = torch.randn(d_sae, d_out, generator=g)
    w_dec = 0.1 * w_dec / w_dec.norm(dim=1, keepdim=True)
    w_enc = 0.1 * torch.randn(d_in, d_sae, generator=g) / d_in**0.5 if target is not None else w_dec.T.clone()
    params = [w_enc.contiguous(), torch.zeros(d_sae), w_dec, y.mean(0).clone()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (256,), generator=g)
        xb, yb = x[idx], y[idx]
        pre = (xb - (params[3] if target is None else 0)) @ params[0] + params[1]
        v, i = pre.topk(k, dim=-1)
        latents = torch.zeros_like(pre).scatter(-1, i, v.relu())
        loss = ((latents @ params[2] + params[3] - yb) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = dict(zip(["W_enc", "b_enc", "W_dec", "b_dec"], (p.detach() for p in params), strict=True))
    if target is None:
        sae: SparseAutoencoder = SparseAutoencoder(d_in, d_sae, architecture="topk", k=k, weights=weights)
    else:
        sae = Transcoder(d_in, d_sae, d_out, architecture="topk", k=k, weights=weights)
    with torch.no_grad():
        sae.metadata.statistics = {"fvu": float(fvu(y, sae(x))), "l0": float(l0(sae.encode(x)))}
    return sae
