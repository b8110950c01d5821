"""Reading the files of saved SAEs, with errors that name the file, the field and the values."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._errors import InputError, ShapeError

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (the spelling the configs use)."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(value: Any, where: str) -> torch.dtype:
    """A dtype from a config string (``"float32"`` or ``"torch.float32"``) or a `torch.dtype`."""
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in _DTYPES:
        return _DTYPES[value.removeprefix("torch.")]
    raise InputError(f"{where}: dtype {value!r} is not one of {', '.join(_DTYPES)}")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or `InputError` naming the file."""
    if not path.is_file():
        raise InputError(f"missing file {str(path)!r}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{str(path)!r} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{str(path)!r} holds a JSON {type(data).__name__}, expected an object")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (on CPU), or `InputError` naming the file."""
    if not path.is_file():
        raise InputError(f"missing file {str(path)!r}")
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError on a damaged header
        raise InputError(f"{str(path)!r} is not a readable safetensors file: {exc}") from exc


def read_torch_tensors(path: Path) -> dict[str, Any]:
    """A ``torch.save``'d dict of tensors, read with ``weights_only=True`` (no code is run)."""
    if not path.is_file():
        raise InputError(f"missing file {str(path)!r}")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpickler refusal or a damaged file
        raise InputError(
            f"{str(path)!r} could not be read with torch.load(weights_only=True): {exc}. Only plain "
            "state dicts of tensors are read; no pickled code is run."
        ) from exc
    if not isinstance(data, Mapping):
        raise InputError(f"{str(path)!r} holds a {type(data).__name__}, expected a dict of tensors")
    return dict(data)


def require(config: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``config[key]``, checked to be of ``kind``, or `InputError` naming the file and field."""
    if key not in config:
        raise InputError(f"{where}: missing field {key!r}")
    value = config[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise InputError(f"{where}: field {key!r} is {value!r}, expected {_kind_name(kind)}")
    if not isinstance(value, kind):
        raise InputError(f"{where}: field {key!r} is {value!r}, expected {_kind_name(kind)}")
    return value


def check_tensors(
    tensors: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]],
    where: str,
    because: str,
    optional: tuple[str, ...] = (),
) -> None:
    """Every name in ``shapes`` present with that shape, and nothing else.

    ``because`` says where the expected shapes come from (``"cfg.json says
    d_in=512, d_sae=4096"``); it goes into the message.
    """
    missing = [name for name in shapes if name not in tensors and name not in optional]
    if missing:
        raise InputError(
            f"{where}: missing tensor(s) {missing}; found {sorted(tensors)}. Expected {dict(shapes)} ({because})"
        )
    extra = sorted(name for name in tensors if name not in shapes)
    if extra:
        raise InputError(
            f"{where}: unexpected tensor(s) {extra} for this architecture (expected {sorted(shapes)}); "
            "refusing to guess what they do"
        )
    for name, shape in shapes.items():
        if name not in tensors:
            continue
        tensor = tensors[name]
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"{where}: {name!r} is a {type(tensor).__name__}, expected a tensor")
        if tuple(tensor.shape) != tuple(shape):
            raise ShapeError(
                f"{where}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)} ({because})"
            )


def common_dtype(tensors: Mapping[str, torch.Tensor], where: str) -> torch.dtype:
    """The floating dtype of the weights (the first floating tensor's)."""
    for tensor in tensors.values():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            return tensor.dtype
    raise InputError(f"{where}: holds no floating-point tensor")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)
