"""``uniterp-tiny``: a small trained model shipped inside the package, loadable offline.

Example::

    >>> from uniterp import StandardizedTransformer
    >>> from uniterp.tiny import resolve_model_name
    >>> model = StandardizedTransformer(resolve_model_name("uniterp-tiny"))
    >>> from uniterp.lens import logit_lens
    >>> ids, probs = logit_lens(model, "The capital of France is", top_k=1)
    >>> model.tokenizer.decode(ids[0, -1])                 # the last layer's guess
    ' Paris'

What it is: a 6-layer Llama-layout model (RMSNorm, rotary positions, gated
SiLU MLP, grouped-query attention with 4 query and 2 key/value heads, width 128,
tied embeddings; 1.4 million parameters in float32, under 6 MB) with a
1,536-token byte-level BPE tokenizer, trained in minutes on a CPU by
``scripts/train_tiny.py``. Its corpus is generated: templated facts (capital,
language, currency and continent of 79 countries in three phrasings each, and
a few landmarks), copy lists (``cat -> cat``), simple sequences and filler
sentences. Besides next-token prediction it is taught to read its own
early-middle-layer states in the identity prompt of `uniterp.patchscope`, which
large models do without being taught.

It is a teaching and test model: it knows its facts in the phrasings it was
trained on, so the tools show meaningful output offline (" Paris" emerging
through the layers, the subject readable by a patchscope, a steering vector
that turns Japan's capital into Paris). It does not understand language beyond
its templates; outside them its output is noise, and its facts are simplified
(one language and one currency per country).

This module imports nothing heavy, so resolving a name is free.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TINY_MODEL_NAME", "resolve_model_name", "tiny_model_dir"]

#: The short name of the embedded model.
TINY_MODEL_NAME = "uniterp-tiny"


def tiny_model_dir() -> str:
    """The folder holding the embedded model (config, safetensors weights, tokenizer).

    Example::

        >>> tiny_model_dir()                                   # doctest: +SKIP
        '/.../site-packages/uniterp/models/uniterp-tiny'

    Returns:
        The folder path as a string.

    Raises:
        InputError: The folder is missing from this installation.
    """
    folder = Path(__file__).resolve().parent / "models" / TINY_MODEL_NAME
    if not (folder / "config.json").is_file():
        from ._errors import InputError

        raise InputError(
            f"the embedded model {TINY_MODEL_NAME!r} is missing from this installation (no {folder}); "
            "reinstall uniterp, or rebuild it with `python scripts/train_tiny.py` from a source checkout"
        )
    return str(folder)


def resolve_model_name(name: str) -> str:
    """The embedded model's folder for ``"uniterp-tiny"``; any other name unchanged.

    Example::

        >>> resolve_model_name("uniterp-tiny").endswith("uniterp-tiny")
        True
        >>> resolve_model_name("gpt2")
        'gpt2'

    Args:
        name: A Hub id, a local folder or ``"uniterp-tiny"``.

    Returns:
        A Hub id or a local folder path.
    """
    if isinstance(name, str) and name == TINY_MODEL_NAME:
        return tiny_model_dir()
    return name
