"""dictionary_learning's saved format: ``ae.pt`` (a state dict) + ``config.json``.

Facts of the format read here:

- ``config.json``: ``{"trainer": {...}, "buffer": {...}}``. ``trainer.dict_class``
  names the class; ``trainer.k`` (top-k classes), ``trainer.layer``,
  ``trainer.lm_name``, ``trainer.submodule_name``; ``buffer.io`` is ``"out"``,
  ``"in"`` or ``"in_and_out"`` (a transcoder).
- ``ae.pt``: the final state dict (the norm factor of ``normalize_activations``
  is already folded into the biases). A mid-training backup holds
  ``{"step", "ae", "optimizer", ...}`` instead and is refused.
- Classes, their tensors and computation (``x`` the input):

  - ``AutoEncoder``: ``bias``, ``encoder.weight (d_sae, d_in)``, ``encoder.bias``,
    ``decoder.weight (d_in, d_sae)``; ``relu(encoder(x - bias))``,
    ``decoder(f) + bias``. Its loader rescales a decoder whose columns are not
    unit norm (decoder columns divided by their norms, encoder rows and bias
    multiplied), which keeps the reconstruction and changes latent scales; so
    does this one.
  - ``AutoEncoderNew``: ``encoder.weight/bias``, ``decoder.weight/bias``;
    ``relu(encoder(x))``, ``decoder(f)``.
  - ``GatedAutoEncoder``: ``encoder.weight`` (no bias), ``decoder.weight``,
    ``decoder_bias``, ``r_mag``, ``gate_bias``, ``mag_bias``; input minus ``decoder_bias``.
  - ``JumpReluAutoEncoder``: ``W_enc (d_in, d_sae)``, ``b_enc``, ``W_dec``,
    ``b_dec``, ``threshold``; the input is not shifted.
  - ``AutoEncoderTopK``: ``encoder``, ``decoder.weight``, ``b_dec``, ``k``,
    ``threshold`` (scalar, unused by its default encode); per-token top-k of
    ``relu(encoder(x - b_dec))``.
  - ``BatchTopKSAE`` / ``MatryoshkaBatchTopKSAE``: batch top-k in training; at
    inference the default encode keeps ``relu(pre) > threshold`` with one
    scalar ``threshold``: a JumpReLU with that threshold for every latent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .._errors import InputError
from ._base import SAEMetadata, SparseAutoencoder
from ._files import check_tensors, common_dtype, read_json, read_safetensors, read_torch_tensors, require
from ._transcoder import Transcoder

CONFIG = "config.json"
WEIGHTS_PT = "ae.pt"
WEIGHTS_SAFETENSORS = "ae.safetensors"

_CLASSES = (
    "AutoEncoder",
    "AutoEncoderNew",
    "GatedAutoEncoder",
    "JumpReluAutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
)


def is_dictionary_learning_folder(folder: Path) -> bool:
    return (folder / CONFIG).is_file() and (
        (folder / WEIGHTS_PT).is_file() or (folder / WEIGHTS_SAFETENSORS).is_file()
    )


def read_hook_name(folder: Path) -> str | None:
    trainer = read_json(folder / CONFIG).get("trainer")
    name = trainer.get("submodule_name") if isinstance(trainer, dict) else None
    return name if isinstance(name, str) else None


def load_dictionary_learning(
    folder: Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> SparseAutoencoder:
    """The dictionary saved in ``folder`` by dictionary_learning (see the module docstring)."""
    cfg_path = folder / CONFIG
    where = str(cfg_path)
    config = read_json(cfg_path)
    trainer = require(config, "trainer", dict, where)
    dict_class = require(trainer, "dict_class", str, f"{where} (trainer)")
    if dict_class not in _CLASSES:
        raise InputError(
            f"{where}: trainer.dict_class {dict_class!r} is not supported; supported: {', '.join(_CLASSES)}"
        )
    buffer = config.get("buffer") if isinstance(config.get("buffer"), dict) else {}
    io = buffer.get("io", "out")
    if io not in ("in", "out", "in_and_out"):
        raise InputError(f"{where}: buffer.io {io!r} is not one of 'in', 'out', 'in_and_out'")

    if (folder / WEIGHTS_SAFETENSORS).is_file():
        weights_path = folder / WEIGHTS_SAFETENSORS
        tensors: dict[str, Any] = dict(read_safetensors(weights_path))
    else:
        weights_path = folder / WEIGHTS_PT
        tensors = read_torch_tensors(weights_path)
    wwhere = str(weights_path)
    if "ae" in tensors and "optimizer" in tensors:
        raise InputError(
            f"{wwhere}: this is a mid-training backup ({sorted(tensors)}), whose biases are still in the "
            "normalised scale; load the final ae.pt written at the end of training"
        )
    architecture, d_in, d_sae, k, weights, options = _convert(dict_class, tensors, trainer, wwhere, where)
    for name, size in (("activation_dim", d_in), ("dict_size", d_sae)):
        if name in trainer and trainer[name] != size:
            raise InputError(f"{where}: trainer.{name}={trainer[name]!r} but {wwhere} has {size}")

    metadata = SAEMetadata(
        format="dictionary_learning",
        hook_name=trainer.get("submodule_name") if isinstance(trainer.get("submodule_name"), str) else None,
        hook_io=io,
        hook_layer=trainer.get("layer") if isinstance(trainer.get("layer"), int) else None,
        model_name=trainer.get("lm_name") if isinstance(trainer.get("lm_name"), str) else None,
        config=config,
        path=str(folder),
    )
    transcoder = io == "in_and_out"
    if transcoder:
        metadata.hook_name_out = metadata.hook_name
    cls = Transcoder if transcoder else SparseAutoencoder
    sae = cls(
        d_in,
        d_sae,
        architecture=architecture,
        k=k,
        weights=weights,
        dtype=dtype or common_dtype(weights, wwhere),
        device=device,
        metadata=metadata,
        **options,
    )
    return sae


def _convert(
    dict_class: str, tensors: dict[str, Any], trainer: dict[str, Any], wwhere: str, where: str
) -> tuple[str, int, int, int | None, dict[str, torch.Tensor], dict[str, Any]]:
    """(architecture, d_in, d_sae, k, weights in SAELens names, options)."""
    if dict_class in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):
        d_in, d_sae = _shape_of(tensors, "W_enc", wwhere)
    else:
        d_sae, d_in = _shape_of(tensors, "encoder.weight", wwhere)
    because = f"{'W_enc' if dict_class in ('JumpReluAutoEncoder', 'MatryoshkaBatchTopKSAE') else 'encoder.weight'} gives d_in={d_in}, d_sae={d_sae}"
    linear = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "decoder.weight": (d_in, d_sae)}
    topk_buffers = {"k": (), "threshold": ()}

    if dict_class == "AutoEncoder":
        check_tensors(tensors, {**linear, "bias": (d_in,)}, wwhere, because)
        w_enc, b_enc, w_dec = _unit_decoder(
            tensors["encoder.weight"], tensors["encoder.bias"], tensors["decoder.weight"]
        )
        weights = {"W_enc": w_enc.T, "b_enc": b_enc, "W_dec": w_dec.T, "b_dec": tensors["bias"]}
        return "relu", d_in, d_sae, None, weights, {"apply_b_dec_to_input": True}
    if dict_class == "AutoEncoderNew":
        check_tensors(tensors, {**linear, "decoder.bias": (d_in,)}, wwhere, because)
        weights = {
            "W_enc": tensors["encoder.weight"].T,
            "b_enc": tensors["encoder.bias"],
            "W_dec": tensors["decoder.weight"].T,
            "b_dec": tensors["decoder.bias"],
        }
        return "relu", d_in, d_sae, None, weights, {"apply_b_dec_to_input": False}
    if dict_class == "GatedAutoEncoder":
        shapes = {
            "encoder.weight": (d_sae, d_in),
            "decoder.weight": (d_in, d_sae),
            "decoder_bias": (d_in,),
            "r_mag": (d_sae,),
            "gate_bias": (d_sae,),
            "mag_bias": (d_sae,),
        }
        check_tensors(tensors, shapes, wwhere, because)
        weights = {
            "W_enc": tensors["encoder.weight"].T,
            "W_dec": tensors["decoder.weight"].T,
            "b_dec": tensors["decoder_bias"],
            "b_gate": tensors["gate_bias"],
            "b_mag": tensors["mag_bias"],
            "r_mag": tensors["r_mag"],
        }
        return "gated", d_in, d_sae, None, weights, {"apply_b_dec_to_input": True}
    if dict_class == "JumpReluAutoEncoder":
        shapes = {
            "W_enc": (d_in, d_sae),
            "b_enc": (d_sae,),
            "W_dec": (d_sae, d_in),
            "b_dec": (d_in,),
            "threshold": (d_sae,),
        }
        check_tensors(tensors, shapes, wwhere, because)
        return "jumprelu", d_in, d_sae, None, dict(tensors), {"apply_b_dec_to_input": False}

    # the top-k family
    if dict_class == "MatryoshkaBatchTopKSAE":
        sizes = tensors.get("group_sizes")
        shapes = {
            "W_enc": (d_in, d_sae),
            "b_enc": (d_sae,),
            "W_dec": (d_sae, d_in),
            "b_dec": (d_in,),
            **topk_buffers,
        }
        shapes["group_sizes"] = tuple(sizes.shape) if isinstance(sizes, torch.Tensor) else (0,)
        check_tensors(tensors, shapes, wwhere, because, optional=("group_sizes",))
        weights = {name: tensors[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    else:
        check_tensors(tensors, {**linear, "b_dec": (d_in,), **topk_buffers}, wwhere, because)
        weights = {
            "W_enc": tensors["encoder.weight"].T,
            "b_enc": tensors["encoder.bias"],
            "W_dec": tensors["decoder.weight"].T,
            "b_dec": tensors["b_dec"],
        }
    k = int(tensors["k"])
    if "k" in trainer and trainer["k"] != k:
        raise InputError(f"{where}: trainer.k={trainer['k']!r} but {wwhere} stores k={k}")
    if dict_class == "AutoEncoderTopK":
        return "topk", d_in, d_sae, k, weights, {"apply_b_dec_to_input": True}
    threshold = tensors["threshold"].to(torch.float64)
    weights["threshold"] = threshold.expand(d_sae).clone()
    return "jumprelu", d_in, d_sae, None, weights, {"apply_b_dec_to_input": True}


def _shape_of(tensors: dict[str, Any], name: str, where: str) -> tuple[int, int]:
    tensor = tensors.get(name)
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 2:
        got = "missing" if tensor is None else f"shape {tuple(getattr(tensor, 'shape', ()))}"
        raise InputError(f"{where}: expected a 2-d tensor {name!r}; it is {got}. Found {sorted(tensors)}")
    return int(tensor.shape[0]), int(tensor.shape[1])


def _unit_decoder(
    w_enc: torch.Tensor, b_enc: torch.Tensor, w_dec: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``AutoEncoder.from_pretrained``'s default: unit-norm decoder columns, the norms moved into the encoder."""
    # dictionary_learning builds its modules in float32 and normalises there.
    work = torch.promote_types(w_dec.dtype, torch.float32)
    w_enc, b_enc, w_dec = w_enc.to(work), b_enc.to(work), w_dec.to(work)
    norms = torch.norm(w_dec, dim=0)
    if torch.allclose(norms, torch.ones_like(norms)):
        return w_enc, b_enc, w_dec
    return w_enc * norms[:, None], b_enc * norms, w_dec / norms
