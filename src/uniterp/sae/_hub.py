"""Fetching saved SAEs from the Hugging Face Hub into the local cache, only what is needed.

A repository is read in two steps: its JSON files first (small) to find the
SAE folders in it, then the weights of the folders asked for.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import snapshot_download

from .._errors import InputError

_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")

ROOT_FILES = [
    "*.json",
    "sae_weights.safetensors",
    "sparsity.safetensors",
    "sae.safetensors",
    "ae.pt",
    "ae.safetensors",
]
"""What is fetched when the SAE sits at the top of the repository."""


def looks_like_repo_id(value: str) -> bool:
    """``"org/name"``: one slash, Hub-legal characters, no leading dot."""
    return bool(_REPO_ID.fullmatch(value)) and ".." not in value


def hub_offline() -> bool:
    """Whether the Hub is switched off (``HF_HUB_OFFLINE``), as huggingface_hub reads it."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(getattr(constants, "HF_HUB_OFFLINE", False)) or env in ("1", "ON", "YES", "TRUE")


def fetch(
    repo_id: str,
    *,
    revision: str | None,
    subfolder: str | None,
    choose: Callable[[Path], list[str]],
) -> Path:
    """Download what ``choose`` picks and return the local snapshot root.

    With ``subfolder``, that folder is fetched directly. Otherwise the JSON
    files come first and ``choose(root)`` returns the relative folders whose
    weights to fetch (``""`` for the repository's top level).
    """
    if hub_offline():
        raise InputError(
            f"{repo_id!r} is not a local folder, and the Hugging Face Hub is offline (HF_HUB_OFFLINE=1). "
            "Download the SAE first (huggingface-cli download ...) and pass its local folder, or go online"
        )
    if subfolder is not None:
        return Path(_download(repo_id, revision, [f"{subfolder.strip('/')}/*"]))
    root = Path(_download(repo_id, revision, ["*.json"]))
    folders = choose(root)
    patterns: list[str] = []
    for folder in folders:
        patterns += [f"{folder}/*"] if folder else ROOT_FILES
    return Path(_download(repo_id, revision, patterns))


def _download(repo_id: str, revision: str | None, allow_patterns: list[str]) -> str:
    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns)
    except Exception as exc:  # network, authentication, missing repository: all reported the same way
        raise InputError(
            f"could not download {allow_patterns} from the Hub repository {repo_id!r}: {type(exc).__name__}: {exc}"
        ) from exc
