"""Tiny random models for tests and offline experiments.

Build a small random model of any causal-LM ``model_type`` transformers knows,
with a byte-level BPE tokenizer trained locally, save both to a folder and get
the path back, so code is exercised through the real loading path with no
network::

    >>> from uniterp.testing import tiny_model_path
    >>> path = tiny_model_path("llama")
    >>> model = StandardizedTransformer(path)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from ._tiny_configs import SMALL as _SMALL

__all__ = ["TINY_FAMILIES", "build_tiny_tokenizer", "perturb_norms", "tiny_config", "tiny_model_path"]

#: The families the test-suite exercises (one tiny model each).
TINY_FAMILIES: tuple[str, ...] = (
    "gpt2",
    "gpt_neox",
    "gptj",
    "opt",
    "bloom",
    "falcon",
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi",
    "phi3",
    "olmo",
    "olmo2",
    "stablelm",
    "starcoder2",
    "gpt_bigcode",
    "cohere",
    "granite",
    "codegen",
)

_SPECIAL = "<|endoftext|>"
_BUILD_VERSION = 3  # bump to rebuild cached tiny models
_CORPUS = (
    "The Eiffel Tower is in the city of Paris.",
    "The capital of France is Paris. The capital of Japan is Tokyo.",
    "hello world, the cat sat on the mat with a dog.",
    "cat -> cat\n1135 -> 1135\nhello -> hello\n",
    "one two three four five six seven eight nine ten",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z",
    "She said that he would come back tomorrow morning.",
)


def build_tiny_tokenizer(vocab_size: int = 384) -> Any:
    """Train a byte-level BPE tokenizer on a small built-in corpus.

    Example::

        >>> tok = build_tiny_tokenizer()
        >>> tok("hello world").input_ids  # doctest: +SKIP

    Args:
        vocab_size: Target vocabulary size (256 byte symbols plus merges).

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` whose bos/eos/pad/unk token is
        ``<|endoftext|>`` (id 0).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[_SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS) * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=_SPECIAL,
        eos_token=_SPECIAL,
        pad_token=_SPECIAL,
        unk_token=_SPECIAL,
    )


def tiny_config(model_type: str, **overrides: Any) -> Any:
    """A small configuration of ``model_type`` (few layers, width 64).

    Example::

        >>> cfg = tiny_config("llama", num_hidden_layers=2)
        >>> cfg.hidden_size
        64

    Args:
        model_type: A key of transformers' ``CONFIG_MAPPING`` (e.g. ``"llama"``).
        **overrides: Config attributes that win over the defaults chosen here.

    Returns:
        A ``transformers.PretrainedConfig`` instance.
    """
    from transformers import CONFIG_MAPPING
    from transformers.utils import logging as hf_logging

    from ._tiny_configs import config_keys, tiny_kwargs

    config_class = CONFIG_MAPPING[model_type]
    aliases = dict(getattr(config_class, "attribute_map", {}))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        known = config_keys(config_class) | set(aliases)
    finally:
        hf_logging.set_verbosity(verbosity)

    def canonical(key: str) -> str:
        return aliases.get(key, key)

    unknown = sorted(k for k in overrides if k not in known)
    if unknown:
        from ._errors import InputError

        raise InputError(
            f"{model_type} configs have no attribute(s) {unknown}; known size keys include "
            f"{sorted(k for k in known if k in _SMALL)}"
        )
    kwargs = tiny_kwargs(model_type)
    for key, value in overrides.items():
        key = canonical(key)
        if isinstance(value, dict) and isinstance(kwargs.get(key), dict):
            value = {**kwargs[key], **value}  # a nested (sub-)config: merged into the tiny one
        kwargs[key] = value
    kwargs.update(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return config_class(**kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


def perturb_norms(model: Any) -> None:
    """Give every norm non-trivial random weights and biases, in place.

    A freshly initialised norm has unit weights and zero biases, and such a norm is
    nearly idempotent on states that are already normalised: a check that applies
    the wrong norm, or one norm too many, would pass. Tiny models are built with
    perturbed norms so that every comparison is discriminating.

    Example::

        >>> model = AutoModelForCausalLM.from_config(tiny_config("llama"))
        >>> perturb_norms(model)
    """
    import torch

    from ._rules import NORM_CLASS

    with torch.no_grad():
        for module in model.modules():
            if not NORM_CLASS.search(type(module).__name__):
                continue
            for name, param in module.named_parameters(recurse=False):
                if not param.is_floating_point() or param.device.type == "meta":
                    continue
                scale = 0.5 if name.startswith("weight") else 0.1
                param.add_(torch.empty_like(param).uniform_(-scale, scale))


def _cache_root() -> Path:
    root = os.environ.get("UNITERP_TINY_CACHE")
    return Path(root) if root else Path(tempfile.gettempdir()) / "uniterp-tiny-models"


def tiny_model_path(
    model_type: str,
    directory: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    dtype: Any = None,
    **overrides: Any,
) -> str:
    """Build a tiny random ``model_type`` model, save it with a tokenizer, return the folder.

    The folder holds ``config.json``, safetensors weights and a tokenizer, exactly
    what ``from_pretrained`` expects. With no ``directory`` the model is cached
    under the temp folder (or ``$UNITERP_TINY_CACHE``) keyed by its arguments, so
    repeated calls are cheap.

    Example::

        >>> path = tiny_model_path("gpt2")
        >>> model = StandardizedTransformer(path)
        >>> model.num_layers
        3

    Args:
        model_type: A causal-LM ``model_type`` (e.g. ``"llama"``, ``"gpt2"``).
        directory: Where to save. Default: a cache folder.
        seed: Seed for the random weights.
        dtype: Optional ``torch.dtype`` to cast the weights to before saving.
        **overrides: Config attributes (see `tiny_config`).

    Returns:
        The folder path as a string.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from ._loading import quiet_progress

    config = tiny_config(model_type, **overrides)
    # keyed by the resolved config, so a change to the tiny-config data rebuilds
    key = hashlib.sha1(repr((config.to_json_string(), seed, str(dtype), _BUILD_VERSION)).encode())
    folder = (
        Path(directory) if directory is not None else _cache_root() / (f"{model_type}-{key.hexdigest()[:12]}")
    )
    if (folder / "config.json").exists() and directory is None:
        return str(folder)
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_config(config)
        perturb_norms(model)
        if dtype is not None:
            model = model.to(dtype)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent if folder.parent.exists() else None))
        try:
            with quiet_progress():
                model.save_pretrained(tmp)
            if model.config is not config:  # a causal LM that keeps only a sub-config (Mllama, Emu3)
                config.save_pretrained(tmp)
            build_tiny_tokenizer().save_pretrained(tmp)
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)  # a failed save leaves no half-written folder
            raise
    finally:
        hf_logging.set_verbosity(verbosity)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return str(folder)
