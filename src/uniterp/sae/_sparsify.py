"""EleutherAI sparsify's saved format: ``cfg.json`` + ``sae.safetensors`` per hookpoint folder.

Facts of the format read here:

- One folder per hookpoint, named by the module path relative to the HF
  model's base model (``layers.10``, ``layers.10.mlp``, ``h.0.attn``); a run
  folder holds several, and a ``config.json`` with the training settings
  (``model`` is the model name when trained from the command line).
- ``cfg.json``: ``d_in``, ``k``, ``num_latents`` (0 means ``d_in *
  expansion_factor``), ``expansion_factor``, ``activation`` (``"topk"`` or
  ``"groupmax"``), ``transcode``, ``skip_connection``, and training-only fields
  (``normalize_decoder``, ``multi_topk``). Older files lack the newer fields;
  their defaults apply (``topk``, no transcoding, no skip).
- ``sae.safetensors``: ``encoder.weight (num_latents, d_in)``,
  ``encoder.bias (num_latents)``, ``W_dec (num_latents, d_in)``, ``b_dec (d_in)``,
  and ``W_skip (d_in, d_in)`` with a skip connection. The dtype is the
  tensors' own.
- Encoding: ``relu((x - b_dec) @ encoder.weight.T + encoder.bias)`` (a
  transcoder does not subtract ``b_dec``), then top-k (or the max of each of
  ``k`` groups). Decoding: ``latents @ W_dec + b_dec``, plus ``x @ W_skip.T``.
- An SAE reads the module's output (the first element of a tuple); a
  transcoder reads the module's input and predicts its output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .._errors import InputError
from ._base import SAEMetadata, SparseAutoencoder
from ._files import check_tensors, common_dtype, read_json, read_safetensors, require
from ._transcoder import Transcoder

CFG = "cfg.json"
WEIGHTS = "sae.safetensors"
RUN_CONFIG = "config.json"

_ACTIVATIONS = ("topk", "groupmax")
# Fields of experimental branches that change the computation; refused unless at their default.
_UNSUPPORTED = {"cross_layer": 0, "coalesce_topk": "none"}


def is_sparsify_folder(folder: Path) -> bool:
    return (folder / CFG).is_file() and (folder / WEIGHTS).is_file()


def read_hook_name(folder: Path) -> str:
    """The hookpoint: the folder's name."""
    return folder.name


def load_sparsify(
    folder: Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> SparseAutoencoder:
    """The sparse coder saved in ``folder`` by sparsify (see the module docstring)."""
    cfg_path = folder / CFG
    where = str(cfg_path)
    cfg = read_json(cfg_path)
    d_in = require(cfg, "d_in", int, where)
    k = require(cfg, "k", int, where)
    num_latents = cfg.get("num_latents", 0) or d_in * require(cfg, "expansion_factor", int, where)
    if not isinstance(num_latents, int):
        raise InputError(f"{where}: field 'num_latents' is {num_latents!r}, expected an int")
    activation = cfg.get("activation", "topk")
    if activation not in _ACTIVATIONS:
        raise InputError(
            f"{where}: activation {activation!r} is not supported; supported: {', '.join(_ACTIVATIONS)}"
        )
    for key, default in _UNSUPPORTED.items():
        if cfg.get(key, default) != default:
            raise InputError(f"{where}: {key}={cfg[key]!r} is not supported (only {default!r})")
    transcode = bool(cfg.get("transcode", False))
    skip = bool(cfg.get("skip_connection", False))

    weights_path = folder / WEIGHTS
    wwhere = str(weights_path)
    tensors = read_safetensors(weights_path)
    shapes = {
        "encoder.weight": (num_latents, d_in),
        "encoder.bias": (num_latents,),
        "W_dec": (num_latents, d_in),
        "b_dec": (d_in,),
    }
    if skip:
        shapes["W_skip"] = (d_in, d_in)
    because = f"{CFG} says d_in={d_in}, num_latents={num_latents}"
    check_tensors(tensors, shapes, wwhere, because)
    weights = {
        "W_enc": tensors["encoder.weight"].T,
        "b_enc": tensors["encoder.bias"],
        "W_dec": tensors["W_dec"],
        "b_dec": tensors["b_dec"],
    }
    if skip:
        weights["W_skip"] = tensors["W_skip"]

    metadata = SAEMetadata(
        format="sparsify",
        hook_name=folder.name,
        hook_name_out=folder.name if transcode else None,
        hook_io="in_and_out" if transcode else "out",
        hook_layer=_layer_of(folder.name),
        model_name=_run_model_name(folder.parent),
        config=cfg,
        path=str(folder),
    )
    cls = Transcoder if transcode else SparseAutoencoder
    return cls(
        d_in,
        num_latents,
        architecture=activation,
        k=k,
        apply_b_dec_to_input=not transcode,
        skip_connection=skip,
        weights=weights,
        dtype=dtype or common_dtype(tensors, wwhere),
        device=device,
        metadata=metadata,
    )


def save_sparsify(sae: SparseAutoencoder, folder: Path) -> Path:
    """Write ``cfg.json`` and ``sae.safetensors`` as sparsify writes them."""
    problems = []
    if sae.architecture not in _ACTIVATIONS:
        problems.append(f"architecture={sae.architecture!r} (sparsify has {', '.join(_ACTIVATIONS)})")
    if sae.apply_b_dec_to_input == sae.is_transcoder:
        problems.append(
            f"apply_b_dec_to_input={sae.apply_b_dec_to_input} (sparsify subtracts b_dec for SAEs, not for transcoders)"
        )
    if sae.d_out != sae.d_in:
        problems.append(f"d_out={sae.d_out} != d_in={sae.d_in}")
    if sae.normalize_activations != "none" or sae.reshape_activations != "none":
        problems.append("an input normalisation or head reshape")
    if sae.rescale_acts_by_decoder_norm:
        problems.append("rescale_acts_by_decoder_norm=True")
    if problems:
        raise InputError("this SAE cannot be written in sparsify's format: " + "; ".join(problems))
    skip = "W_skip" in sae._parameters
    original = sae.metadata.config if sae.metadata.format == "sparsify" else {}
    cfg: dict[str, Any] = {
        "activation": sae.architecture,
        "expansion_factor": original.get("expansion_factor", max(1, sae.d_sae // sae.d_in)),
        "normalize_decoder": original.get("normalize_decoder", True),
        "num_latents": sae.d_sae,
        "k": sae.k,
        "multi_topk": original.get("multi_topk", False),
        "skip_connection": skip,
        "transcode": sae.is_transcoder,
        "d_in": sae.d_in,
    }
    tensors = {
        "encoder.weight": sae.W_enc.detach().T,
        "encoder.bias": sae.b_enc.detach(),
        "W_dec": sae.W_dec.detach(),
        "b_dec": sae.b_dec.detach(),
    }
    if skip:
        tensors["W_skip"] = sae.W_skip.detach()
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: t.to("cpu").contiguous() for name, t in tensors.items()}, str(folder / WEIGHTS))
    (folder / CFG).write_text(json.dumps(cfg), encoding="utf-8")
    return folder


def _layer_of(hookpoint: str) -> int | None:
    """``layers.10`` / ``h.3.mlp`` -> 10 / 3: the first integer component of the module path."""
    for part in hookpoint.split("."):
        if part.isdigit():
            return int(part)
    return None


def _run_model_name(run_folder: Path) -> str | None:
    path = run_folder / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        model = json.loads(path.read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError):
        return None
    return model if isinstance(model, str) else None
