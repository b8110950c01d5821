"""Loading a model's parts: the name, the config, the tokenizer; quietly, with uniterp's errors."""

from __future__ import annotations

import copy
import difflib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ._errors import InputError

__all__ = ["load_config", "load_tokenizer", "quiet_progress", "resolve_source"]

logger = logging.getLogger("uniterp")


def resolve_source(model: Any) -> Any:
    """``model`` as transformers loads it: the embedded model's folder for ``"uniterp-tiny"``.

    A string that names no folder and looks like a path, or that is close to the
    embedded model's name, is refused with `InputError` here, before anything
    tries the Hub.

    Example::

        >>> resolve_source("uniterp-tiny").endswith("uniterp-tiny")
        True
    """
    if isinstance(model, torch.nn.Module):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise InputError(
            "StandardizedTransformer takes a Hub id, a local folder, 'uniterp-tiny' or a loaded "
            f"PreTrainedModel; got {type(model).__name__}"
        )
    from .tiny import TINY_MODEL_NAME, resolve_model_name

    name = os.fspath(model)
    if name == TINY_MODEL_NAME:
        return resolve_model_name(name)
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise InputError(
                f"the folder {name!r} holds no config.json: it is not a HuggingFace model folder"
            )
        return path
    if os.path.exists(path):
        raise InputError(f"{name!r} is a file; pass a model folder, a Hub id or {TINY_MODEL_NAME!r}")
    if difflib.get_close_matches(name, [TINY_MODEL_NAME], n=1, cutoff=0.75):
        raise InputError(f"no model named {name!r}: did you mean the embedded model {TINY_MODEL_NAME!r}?")
    if _looks_like_path(name):
        raise InputError(
            f"no model folder at {name!r} (the folder does not exist); pass an existing folder, a Hub id "
            f"(org/name), or {TINY_MODEL_NAME!r}"
        )
    return name


def _looks_like_path(name: str) -> bool:
    if name.startswith((".", "/", "~")) or "\\" in name or name.endswith("/"):
        return True
    return name.count("/") > 1


def load_config(model: Any, kwargs: dict[str, Any], trust_remote_code: bool) -> Any:
    """The model's config (from the module, ``config=``, or the folder/Hub id), or `InputError`."""
    if isinstance(model, torch.nn.Module):
        config = getattr(model, "config", None)
        if config is None:
            raise InputError(
                f"a loaded {type(model).__name__} has no .config; pass a transformers PreTrainedModel"
            )
        return config
    if kwargs.get("config") is not None:
        return kwargs["config"]
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            model, revision=kwargs.get("revision"), trust_remote_code=trust_remote_code
        )
    except OSError as error:
        from .tiny import TINY_MODEL_NAME

        offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True")
        hint = (
            " The Hub is offline here (HF_HUB_OFFLINE=1): use a local folder"
            if offline
            else " Check the name, your network and your Hub token, or use a local folder"
        )
        raise InputError(
            f"cannot load the config of {model!r}: {_first_line(error)}.{hint} or {TINY_MODEL_NAME!r}."
        ) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_tokenizer(model: Any, tokenizer: Any, kwargs: dict[str, Any], trust_remote_code: bool) -> Any:
    """The tokenizer uniterp uses: a copy of the one given (so its settings stay the caller's), or one loaded.

    nnsight sets the tokenizer's padding side and pad token for batching; working
    on a copy keeps a tokenizer the caller passed exactly as it was.
    """
    if tokenizer is not None:
        try:
            return copy.deepcopy(tokenizer)
        except Exception:  # noqa: BLE001 - an uncopyable tokenizer is used as given
            logger.info("uniterp: the tokenizer could not be copied; its padding side will be set to left")
            return tokenizer
    from transformers import AutoTokenizer

    source = model if isinstance(model, str) else getattr(model, "name_or_path", None)
    if not source:
        raise InputError(f"cannot find a tokenizer for a loaded {type(model).__name__}; pass tokenizer=...")
    try:
        return AutoTokenizer.from_pretrained(
            source, revision=kwargs.get("revision"), trust_remote_code=trust_remote_code
        )
    except Exception as error:  # noqa: BLE001 - re-raised with context
        raise InputError(
            f"could not load a tokenizer from {source!r} ({error}); pass tokenizer=..."
        ) from error


@contextmanager
def quiet_progress(show: bool = False) -> Iterator[None]:
    """transformers' progress bars (loading and writing weights) off inside, unless ``show``."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not show:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
