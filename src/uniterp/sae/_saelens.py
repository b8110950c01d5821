"""SAELens's saved format: ``cfg.json`` + ``sae_weights.safetensors`` in one folder.

Facts of the format read here (SAELens 6; older configs are translated the
way SAELens itself translates them):

- Tensors ``W_enc (d_in, d_sae)``, ``b_enc (d_sae)``, ``W_dec (d_sae, d_out)``,
  ``b_dec (d_out)``; JumpReLU adds ``threshold (d_sae)``; gated has ``b_gate``,
  ``b_mag``, ``r_mag`` and no ``b_enc``; ``skip_transcoder`` adds ``W_skip (d_out, d_in)``.
- ``cfg.json`` (6.x): ``d_in``, ``d_sae``, ``dtype``, ``device``,
  ``apply_b_dec_to_input``, ``normalize_activations``, ``reshape_activations``,
  ``architecture``, ``metadata`` (``hook_name``, ``model_name``,
  ``hook_head_index``, ``hook_name_out``, ``sae_lens_version``, ...), plus ``k``
  and ``rescale_acts_by_decoder_norm`` (topk) and ``d_out`` (transcoders).
- Before 6.0 the hook fields sit at the top level (``hook_point`` in the
  oldest), a TopK SAE is ``activation_fn: "topk"`` with
  ``activation_fn_kwargs.k``, and ``normalize_activations`` may be a bool.
- ``sparsity.safetensors`` (optional): ``sparsity``, the log10 firing frequency
  of each latent over training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .._errors import InputError, ShapeError
from ._architectures import tensor_shapes
from ._base import SAEMetadata, SparseAutoencoder
from ._files import check_tensors, dtype_name, parse_dtype, read_json, read_safetensors, require
from ._transcoder import Transcoder

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SPARSITY = "sparsity.safetensors"
SCALER = "activation_scaler.json"
SAVED_FORMAT_VERSION = "6.0.0"
"""Written as ``metadata.sae_lens_version`` when the SAE did not come from a SAELens 6 file:
SAELens reads configs without a version >= 6 as the older layout."""

# SAELens architecture -> (our architecture, transcoder, skip connection)
_ARCHITECTURES: dict[str, tuple[str, bool, bool]] = {
    "standard": ("relu", False, False),
    "jumprelu": ("jumprelu", False, False),
    "topk": ("topk", False, False),
    "abstopk": ("abstopk", False, False),
    "gated": ("gated", False, False),
    # training checkpoints of batch-topk SAEs: a JumpReLU with one threshold for all latents
    "batchtopk": ("jumprelu", False, False),
    "matryoshka_batchtopk": ("jumprelu", False, False),
    "transcoder": ("relu", True, False),
    "skip_transcoder": ("relu", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False),
    "jumprelu_skip_transcoder": ("jumprelu", True, True),
}
_STATISTICS = {
    "l0": ("l0", "expected_l0", "average_l0", "mean_l0"),
    "explained_variance": ("variance_explained", "explained_variance", "expected_var_explained"),
    "fvu": ("fvu",),
}


def is_saelens_folder(folder: Path) -> bool:
    return (folder / CFG).is_file() and (folder / WEIGHTS).is_file()


def read_hook_name(folder: Path) -> str | None:
    """The hook name in ``cfg.json``, without reading the weights."""
    fields, meta, _ = _normalized_config(read_json(folder / CFG), str(folder / CFG))
    return meta.get("hook_name")


def load_saelens(
    folder: Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    norm_scaling_factor: float | None = None,
) -> SparseAutoencoder:
    """The SAE or transcoder saved in ``folder`` by SAELens (see the module docstring)."""
    cfg_path = folder / CFG
    where = str(cfg_path)
    raw = read_json(cfg_path)
    fields, meta, saelens_architecture = _normalized_config(raw, where)
    if saelens_architecture not in _ARCHITECTURES:
        raise InputError(
            f"{where}: architecture {saelens_architecture!r} is not supported; supported: "
            f"{', '.join(_ARCHITECTURES)}"
        )
    architecture, transcoder, skip = _ARCHITECTURES[saelens_architecture]
    d_in = require(fields, "d_in", int, where)
    d_sae = require(fields, "d_sae", int, where)
    d_out = require(fields, "d_out", int, where) if transcoder else d_in
    file_dtype = parse_dtype(fields.get("dtype", "float32"), f"{where} field 'dtype'")

    weights_path = folder / WEIGHTS
    wwhere = str(weights_path)
    tensors = read_safetensors(weights_path)
    _drop_unit_scaling_factor(tensors, fields, wwhere)
    if saelens_architecture in ("batchtopk", "matryoshka_batchtopk") and "topk_threshold" in tensors:
        tensors["threshold"] = tensors.pop("topk_threshold").to(torch.float64).expand(d_sae).clone()
    because = f"{CFG} says d_in={d_in}, d_sae={d_sae}" + (f", d_out={d_out}" if transcoder else "")
    check_tensors(tensors, tensor_shapes(architecture, d_in, d_sae, d_out, skip), wwhere, because)

    options = _options(fields, meta, architecture, transcoder, where)
    scale = None
    if options["normalize_activations"] == "expected_average_only_in":
        scale = _input_scale(folder, norm_scaling_factor, where)
        options["normalize_activations"] = "none"
    metadata = SAEMetadata(
        format="saelens",
        hook_name=meta.get("hook_name"),
        hook_name_out=meta.get("hook_name_out"),
        hook_io=meta.get("hook_io") if meta.get("hook_io") in ("in", "out", "in_and_out") else None,
        hook_layer=_int_or_none(meta.get("hook_layer", fields.get("hook_layer"))),
        hook_head_index=_int_or_none(meta.get("hook_head_index")),
        model_name=meta.get("model_name"),
        config=raw,
        path=str(folder),
    )
    _declared_statistics(metadata, raw, folder, d_sae)
    cls = Transcoder if transcoder else SparseAutoencoder
    kwargs: dict[str, Any] = {"d_out": d_out} if transcoder else {}
    sae = cls(
        d_in,
        d_sae,
        architecture=architecture,
        skip_connection=skip,
        weights=tensors,
        dtype=dtype or file_dtype,
        device=device,
        metadata=metadata,
        **options,
        **kwargs,
    )
    if scale is not None:
        sae._fold_input_scale(scale)
    return sae


def save_saelens(sae: SparseAutoencoder, folder: Path) -> Path:
    """Write ``cfg.json`` and ``sae_weights.safetensors`` as SAELens 6 writes them."""
    architecture = _saelens_architecture(sae)
    meta = _metadata_to_write(sae)
    cfg: dict[str, Any] = {
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": dtype_name(sae.dtype),
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": sae.normalize_activations,
        "reshape_activations": sae.reshape_activations,
        "metadata": meta,
    }
    if architecture in ("topk", "abstopk"):
        cfg["k"] = sae.k
        cfg["rescale_acts_by_decoder_norm"] = sae.rescale_acts_by_decoder_norm
    if sae.is_transcoder:
        cfg["d_out"] = sae.d_out
    cfg["architecture"] = architecture
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().to("cpu").contiguous() for name, p in sae.named_parameters()}
    save_file(tensors, str(folder / WEIGHTS))
    (folder / CFG).write_text(json.dumps(cfg), encoding="utf-8")
    return folder


# --- config translation ---------------------------------------------------------------------------


def _normalized_config(raw: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(fields, metadata, SAELens architecture) with pre-6.0 configs translated."""
    meta = raw.get("metadata")
    version = raw.get("sae_lens_version") or (
        meta.get("sae_lens_version") if isinstance(meta, dict) else None
    )
    if _at_least_6(version):
        if not isinstance(meta, dict):
            raise InputError(
                f"{where}: field 'metadata' is {meta!r}, expected an object (SAELens >= 6 layout)"
            )
        return raw, meta, str(raw.get("architecture", "standard"))
    renames = {
        "hook_point": "hook_name",
        "hook_point_head_index": "hook_head_index",
        "hook_point_layer": "hook_layer",
    }
    fields = {renames.get(key, key): value for key, value in raw.items()}
    if "activation_fn_str" in fields:
        fields.setdefault("activation_fn", fields.pop("activation_fn_str"))
    architecture = str(fields.get("architecture", "standard"))
    activation = fields.get("activation_fn", "relu")
    kwargs = fields.get("activation_fn_kwargs") or {}
    if activation == "topk" and isinstance(kwargs, dict) and kwargs.get("k") is not None:
        architecture, fields["k"] = "topk", kwargs["k"]
    elif activation not in ("relu", None) and architecture == "standard":
        raise InputError(
            f"{where}: activation_fn {activation!r} is not supported (only 'relu' and 'topk' with "
            "activation_fn_kwargs.k)"
        )
    normalize = fields.get("normalize_activations")
    if isinstance(normalize, bool) or normalize is None:
        fields["normalize_activations"] = "expected_average_only_in" if normalize else "none"
    if "reshape_activations" not in fields:
        fields["reshape_activations"] = "hook_z" if "hook_z" in str(fields.get("hook_name", "")) else "none"
    return fields, fields, architecture


def _at_least_6(version: Any) -> bool:
    if not isinstance(version, str) or not version:
        return False
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version) >= Version("6.0.0rc0")
    except InvalidVersion:
        return False


def _options(
    fields: dict[str, Any], meta: dict[str, Any], architecture: str, transcoder: bool, where: str
) -> dict[str, Any]:
    apply_b_dec = (
        require(fields, "apply_b_dec_to_input", bool, where) if "apply_b_dec_to_input" in fields else True
    )
    normalize = fields.get("normalize_activations", "none")
    if normalize == "covariance_whitening":
        raise InputError(
            f"{where}: normalize_activations='covariance_whitening' needs the whitening mean and matrices "
            "estimated on the training data, which an SAE folder does not store (SAELens folds them into "
            "the weights when training ends, and the saved config then says 'none')"
        )
    known = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
    if normalize not in known:
        raise InputError(f"{where}: normalize_activations {normalize!r} is not one of {', '.join(known)}")
    reshape = fields.get("reshape_activations", "none")
    if reshape not in ("none", "hook_z"):
        raise InputError(f"{where}: reshape_activations {reshape!r} is not one of 'none', 'hook_z'")
    if transcoder:
        if apply_b_dec:
            raise InputError(
                f"{where}: apply_b_dec_to_input=true is not valid for a transcoder (SAELens refuses it too)"
            )
        if normalize != "none" or reshape != "none":
            raise InputError(
                f"{where}: a transcoder with normalize_activations={normalize!r}, reshape_activations="
                f"{reshape!r} is not supported (only 'none'): the output side of such a normalisation is undefined"
            )
    if fields.get("finetuning_scaling_factor") is True:
        raise InputError(
            f"{where}: finetuning_scaling_factor=true (a per-latent decoder scale of SAELens < 6) is not supported"
        )
    options: dict[str, Any] = {
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": normalize,
        "rescale_acts_by_decoder_norm": bool(fields.get("rescale_acts_by_decoder_norm", False)),
    }
    if not transcoder:
        options["reshape_activations"] = reshape
    if architecture in ("topk", "abstopk"):
        options["k"] = require(fields, "k", int, where)
    elif fields.get("architecture") in ("batchtopk", "matryoshka_batchtopk"):
        # Training checkpoints: batch-topk is applied on the decoder-norm-scaled pre-activations.
        options["rescale_acts_by_decoder_norm"] = bool(fields.get("rescale_acts_by_decoder_norm", True))
    return options


def _drop_unit_scaling_factor(tensors: dict[str, torch.Tensor], fields: dict[str, Any], where: str) -> None:
    """SAELens < 6 stored an all-ones ``scaling_factor``; it does nothing and is dropped (as SAELens does)."""
    factor = tensors.get("scaling_factor")
    if factor is None:
        return
    if bool(torch.all(factor == 1)):
        del tensors["scaling_factor"]
        return
    raise InputError(
        f"{where}: tensor 'scaling_factor' is not all ones (a per-latent finetuning scale of SAELens < 6); "
        "not supported"
    )


def _input_scale(folder: Path, given: float | None, where: str) -> float:
    if given is not None:
        if not isinstance(given, (int, float)) or isinstance(given, bool) or not given > 0:
            raise InputError(f"norm_scaling_factor must be a positive number; got {given!r}")
        return float(given)
    scaler = folder / SCALER
    if scaler.is_file():
        value = read_json(scaler).get("scaling_factor")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    raise InputError(
        f"{where}: normalize_activations='expected_average_only_in' means the SAE was trained on inputs "
        "multiplied by sqrt(d_in) / (mean norm over the training data), a factor this folder does not "
        f"store ({SCALER} absent or empty). Pass it: load_sae(path, norm_scaling_factor=...) "
        "(SAELens lists it as norm_scaling_factor in its pretrained_saes.yaml)"
    )


def _declared_statistics(metadata: SAEMetadata, raw: dict[str, Any], folder: Path, d_sae: int) -> None:
    places = [(raw, ""), (raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}, "metadata.")]
    for canonical, keys in _STATISTICS.items():
        for source, prefix in places:
            found = next((k for k in keys if _is_number(source.get(k))), None)
            if found is not None:
                metadata.statistics[canonical] = float(source[found])
                metadata.statistic_sources[canonical] = f"{CFG}: {prefix}{found}"
                break
    sparsity_path = folder / SPARSITY
    if "l0" not in metadata.statistics and sparsity_path.is_file():
        tensors = read_safetensors(sparsity_path)
        log_freq = tensors.get("sparsity")
        if log_freq is None or tuple(log_freq.shape) != (d_sae,):
            got = None if log_freq is None else tuple(log_freq.shape)
            raise ShapeError(f"{sparsity_path}: expected tensor 'sparsity' of shape ({d_sae},); got {got}")
        metadata.statistics["l0"] = float(torch.pow(10.0, log_freq.double()).sum())
        metadata.statistic_sources["l0"] = (
            f"{SPARSITY}: sum over latents of 10**sparsity (firing frequencies)"
        )


def _saelens_architecture(sae: SparseAutoencoder) -> str:
    skip = "W_skip" in sae._parameters
    if sae.is_transcoder:
        names = {
            ("relu", False): "transcoder",
            ("relu", True): "skip_transcoder",
            ("jumprelu", False): "jumprelu_transcoder",
            ("jumprelu", True): "jumprelu_skip_transcoder",
        }
        name = names.get((sae.architecture, skip))
        if name is None or sae.apply_b_dec_to_input:
            raise InputError(
                f"SAELens has no transcoder with architecture={sae.architecture!r}, skip connection={skip}, "
                f"apply_b_dec_to_input={sae.apply_b_dec_to_input} (it has relu and jumprelu "
                "transcoders, with or without a skip connection, all without apply_b_dec_to_input)"
            )
        return name
    names = {
        "relu": "standard",
        "jumprelu": "jumprelu",
        "topk": "topk",
        "abstopk": "abstopk",
        "gated": "gated",
    }
    if sae.architecture not in names or skip:
        raise InputError(
            f"SAELens has no SAE with architecture={sae.architecture!r}"
            + (" and a skip connection" if skip else "")
            + f"; it saves {', '.join(names)} (without skip connections)"
        )
    if sae.rescale_acts_by_decoder_norm and sae.architecture not in ("topk", "abstopk"):
        raise InputError(
            f"SAELens's {names[sae.architecture]!r} SAE has no rescale_acts_by_decoder_norm option (only topk, abstopk)"
        )
    return names[sae.architecture]


def _metadata_to_write(sae: SparseAutoencoder) -> dict[str, Any]:
    original = sae.metadata.config.get("metadata") if sae.metadata.format == "saelens" else None
    meta: dict[str, Any] = dict(original) if isinstance(original, dict) else {}
    if not _at_least_6(meta.get("sae_lens_version")):
        meta["sae_lens_version"] = SAVED_FORMAT_VERSION
    meta.setdefault("sae_lens_training_version", None)
    meta["model_name"] = sae.model_name
    meta["hook_name"] = sae.hook_name
    meta["hook_head_index"] = sae.metadata.hook_head_index
    if sae.is_transcoder:
        meta["hook_name_out"] = sae.hook_name_out
    # Kept for SAEs from formats that name modules (SAELens ignores keys it does not know).
    if sae.hook_layer is not None:
        meta["hook_layer"] = sae.hook_layer
    if sae.metadata.hook_io is not None:
        meta["hook_io"] = sae.metadata.hook_io
    return meta


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
