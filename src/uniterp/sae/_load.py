"""One entry point for loading and saving SAEs in any of the three formats, locally or from the Hub."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._errors import InputError
from . import _dictionary_learning, _saelens, _sparsify
from ._base import SparseAutoencoder
from ._files import parse_dtype, read_json
from ._hub import fetch, looks_like_repo_id

__all__ = ["FORMATS", "detect_format", "load_sae", "load_saes", "save_sae"]

FORMATS = ("saelens", "sparsify", "dictionary_learning")
"""Formats `load_sae` reads; `save_sae` writes the first two."""

_DETECT: dict[str, Callable[[Path], bool]] = {
    "saelens": _saelens.is_saelens_folder,
    "sparsify": _sparsify.is_sparsify_folder,
    "dictionary_learning": _dictionary_learning.is_dictionary_learning_folder,
}
_HOOK_NAME: dict[str, Callable[[Path], str | None]] = {
    "saelens": _saelens.read_hook_name,
    "sparsify": _sparsify.read_hook_name,
    "dictionary_learning": _dictionary_learning.read_hook_name,
}
_EXPECTED_FILES = (
    "SAELens: cfg.json + sae_weights.safetensors; sparsify: cfg.json + sae.safetensors; "
    "dictionary_learning: config.json + ae.pt (or ae.safetensors)"
)
_WEIGHTS_FILE = {
    "saelens": "sae_weights.safetensors",
    "sparsify": "sae.safetensors",
    "dictionary_learning": "ae.pt",
}
_MAX_DEPTH = 6


def detect_format(folder: str | os.PathLike[str]) -> str | None:
    """The format of the SAE saved directly in ``folder``, or None.

    Example::

        >>> detect_format("checkpoints/run/layers.10")
        'sparsify'
    """
    path = Path(folder)
    return next((name for name, test in _DETECT.items() if test(path)), None)


def load_sae(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    hook: str | None = None,
    subfolder: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    norm_scaling_factor: float | None = None,
    revision: str | None = None,
) -> SparseAutoencoder:
    """Load one SAE or transcoder from a local folder or a Hub repository.

    Example::

        >>> sae = load_sae("saes/blocks.8.hook_resid_pre")              # a SAELens folder
        >>> sae = load_sae("checkpoints/run", hook="layers.10")         # one hookpoint of a sparsify run
        >>> sae = load_sae("EleutherAI/sae-pythia-70m-32k", hook="layers.3")   # from the Hub, when online
        >>> sae.hook_name, sae.d_in, sae.d_sae, sae.architecture

    The format is detected from the files (`FORMATS`). A folder holding several
    SAEs (a sparsify run, a SAELens release, dictionary_learning trainers) needs
    ``hook``: a subfolder's relative path, its name, or the hook name its
    config gives. A path that is not a local folder but looks like ``org/name``
    is fetched with ``huggingface_hub.snapshot_download`` (configs first, then
    only the weights asked for); offline, that raises `InputError`.

    Args:
        path: A folder (or a file in it), or a Hub repository id.
        format: Force one of `FORMATS` instead of detecting it.
        hook: Which SAE of a folder holding several.
        subfolder: A folder inside ``path`` (or inside the Hub repository).
        device: Where to put the parameters.
        dtype: Parameter dtype (default: what the files say).
        norm_scaling_factor: For SAELens ``normalize_activations=
            "expected_average_only_in"`` SAEs whose folder does not store the
            factor: the input scale they were trained with; folded into the weights.
        revision: A Hub revision (branch, tag or commit).

    Returns:
        A `SparseAutoencoder` (a `Transcoder` for transcoders).
    """
    fmt = _check_format(format)
    root = _resolve(
        path, subfolder, revision, lambda r: [_choose(r, fmt, hook, str(path), json_only=True)[0]]
    )
    rel, folder, found = _choose(root, fmt, hook, str(path))
    return _load_folder(folder, found, device=device, dtype=dtype, norm_scaling_factor=norm_scaling_factor)


def load_saes(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    subfolder: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
) -> dict[str, SparseAutoencoder]:
    """Load every SAE under a folder (or Hub repository), keyed by subfolder.

    Example::

        >>> saes = load_saes("checkpoints/run")       # sparsify: {'layers.0': ..., 'layers.1': ...}
        >>> saes["layers.10"].hook_name
        'layers.10'

    Keys are the SAE folders' paths relative to ``path`` (``/``-separated), in
    natural order (``layers.2`` before ``layers.10``); a folder that is itself
    one SAE gives one entry keyed by its name.

    Args:
        path: A folder, or a Hub repository id.
        format: Only folders of this format.
        subfolder: A folder inside ``path``.
        device: Where to put the parameters.
        dtype: Parameter dtype.
        revision: A Hub revision.

    Returns:
        ``{relative folder: SparseAutoencoder}``.
    """
    fmt = _check_format(format)
    root = _resolve(path, subfolder, revision, lambda r: [rel for rel, _, _ in _find(r, fmt, json_only=True)])
    found = _find(root, fmt)
    if not found:
        raise InputError(_nothing_found(root, fmt, str(path)))
    return {
        (rel or root.name): _load_folder(folder, name, device=device, dtype=dtype, norm_scaling_factor=None)
        for rel, folder, name in found
    }


def save_sae(sae: SparseAutoencoder, folder: str | os.PathLike[str], *, format: str = "saelens") -> Path:
    """Save ``sae`` in the SAELens or sparsify format; `load_sae` (and that project) reads it back.

    Example::

        >>> save_sae(sae, "out/blocks.8.hook_resid_pre")                 # cfg.json + sae_weights.safetensors
        >>> save_sae(sae, "out/run/layers.10", format="sparsify")        # cfg.json + sae.safetensors
        >>> torch.equal(load_sae("out/run/layers.10").W_enc, sae.W_enc)
        True

    Tensors are written in the SAE's dtype, bit for bit. An SAE the target
    format cannot express (a groupmax SAE in SAELens, a gated SAE in sparsify)
    raises `InputError` saying what does not fit. For SAELens, configs carry
    ``metadata.sae_lens_version`` (the original's when it was a SAELens 6
    file, else ``"6.0.0"``, the layout written).

    Args:
        sae: The SAE or transcoder.
        folder: The folder to write (created if needed).
        format: ``"saelens"`` or ``"sparsify"``.

    Returns:
        The folder.
    """
    if not isinstance(sae, SparseAutoencoder):
        raise InputError(f"save_sae needs a SparseAutoencoder; got {type(sae).__name__}")
    savers = {"saelens": _saelens.save_saelens, "sparsify": _sparsify.save_sparsify}
    if format not in savers:
        raise InputError(f"save_sae writes format 'saelens' or 'sparsify'; got {format!r}")
    return savers[format](sae, Path(folder))


# --- resolution -----------------------------------------------------------------------------------


def _check_format(format: str | None) -> str | None:
    if format is not None and format not in FORMATS:
        raise InputError(f"unknown SAE format {format!r}; known formats: {', '.join(FORMATS)}")
    return format


def _resolve(
    path: Any, subfolder: str | None, revision: str | None, choose: Callable[[Path], list[str]]
) -> Path:
    """The local folder to read: ``path`` itself, or a Hub snapshot of it."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"path must be a folder path or a Hub repository id; got {type(path).__name__}")
    local = Path(path).expanduser()
    if local.exists():
        if local.is_file():
            local = local.parent
        if subfolder is not None:
            local = local / subfolder
            if not local.is_dir():
                raise InputError(f"no folder {subfolder!r} in {str(path)!r}")
        return local
    if isinstance(path, str) and looks_like_repo_id(path):
        root = fetch(path, revision=revision, subfolder=subfolder, choose=choose)
        return root / subfolder if subfolder is not None else root
    raise InputError(f"no such file or folder: {str(path)!r} (and it is not a Hub repository id 'org/name')")


def _find(root: Path, fmt: str | None, json_only: bool = False) -> list[tuple[str, Path, str]]:
    """``(relative path, folder, format)`` of every SAE folder under ``root``, in natural order."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        rel = here.relative_to(root).as_posix()
        rel = "" if rel == "." else rel
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if rel.count("/") + bool(rel) >= _MAX_DEPTH:
            dirnames[:] = []
        name = _config_format(here) if json_only else detect_format(here)
        if name is not None and (fmt is None or name == fmt):
            found.append((rel, here, name))
    return sorted(found, key=lambda item: _natural_key(item[0]))


def _choose(
    root: Path, fmt: str | None, hook: str | None, given: str, json_only: bool = False
) -> tuple[str, Path, str]:
    """The one SAE folder under ``root`` that ``hook`` picks."""
    found = _find(root, fmt, json_only)
    if not found:
        raise InputError(_nothing_found(root, fmt, given))
    if hook is None:
        if len(found) == 1:
            return found[0]
        raise InputError(f"{given!r} holds {len(found)} SAEs; pick one with hook=...: {_listing(found)}")
    matches = [item for item in found if hook in (item[0], Path(item[0]).name) or _hook_name(item) == hook]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise InputError(f"no SAE in {given!r} matches hook={hook!r}; available: {_listing(found)}")
    raise InputError(
        f"hook={hook!r} matches {len(matches)} SAEs in {given!r}: {_listing(matches)}; pass the subfolder path"
    )


def _load_folder(
    folder: Path,
    fmt: str,
    *,
    device: torch.device | str | None,
    dtype: torch.dtype | str | None,
    norm_scaling_factor: float | None,
) -> SparseAutoencoder:
    parsed = None if dtype is None else parse_dtype(dtype, "dtype argument")
    if fmt == "saelens":
        return _saelens.load_saelens(
            folder, dtype=parsed, device=device, norm_scaling_factor=norm_scaling_factor
        )
    if norm_scaling_factor is not None:
        raise InputError(f"norm_scaling_factor applies to SAELens SAEs only; {str(folder)!r} is {fmt}")
    if fmt == "sparsify":
        return _sparsify.load_sparsify(folder, dtype=parsed, device=device)
    return _dictionary_learning.load_dictionary_learning(folder, dtype=parsed, device=device)


def _nothing_found(root: Path, fmt: str | None, given: str) -> str:
    """Why no SAE folder was found: the weights file a folder with a config lacks, else what each format needs."""
    here = _config_format(root)
    if here is not None and fmt in (None, here):
        weights = _WEIGHTS_FILE[here]
        return f"{given!r} holds a {here} config but not its weights: missing file {str(root / weights)!r}"
    what = f"{fmt} SAE" if fmt else "SAE"
    return f"no {what} found in {given!r} (looked for {_EXPECTED_FILES})"


def _config_format(folder: Path) -> str | None:
    """The format of an SAE folder judged from its JSON alone (before its weights are fetched)."""
    if (folder / _saelens.CFG).is_file():
        try:
            cfg = read_json(folder / _saelens.CFG)
        except InputError:
            return None
        return "saelens" if "d_sae" in cfg or "metadata" in cfg else "sparsify"
    if (folder / _dictionary_learning.CONFIG).is_file():
        try:
            config = read_json(folder / _dictionary_learning.CONFIG)
        except InputError:
            return None
        return "dictionary_learning" if isinstance(config.get("trainer"), dict) else None
    return None


def _hook_name(item: tuple[str, Path, str]) -> str | None:
    try:
        return _HOOK_NAME[item[2]](item[1])
    except InputError:
        return None


def _listing(found: list[tuple[str, Path, str]]) -> str:
    names = [repr(rel or ".") for rel, _, _ in found]
    return ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")


def _natural_key(text: str) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]
