"""What ``model.trace(...)`` / ``model.generate(...)`` accept, checked before anything runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ._errors import InputError
from ._nnsight_compat import pipeline_text_encoding

__all__ = ["check_token_ids", "check_trace_inputs", "text_as_encoding"]

_ACCEPTED = (
    "a prompt string, a list of prompt strings, a list of token ids, a list of lists of token ids, "
    "an integer tensor of token ids (seq,) or (batch, seq), or a tokenizer encoding (with input_ids)"
)


def check_trace_inputs(inputs: tuple[Any, ...]) -> None:
    """Refuse a trace input uniterp cannot run, with `InputError` (no input is fine: invokes follow).

    Example::

        >>> check_trace_inputs(("Hello",)); check_trace_inputs(([1, 2, 3],))
        >>> check_trace_inputs((None,))
        Traceback (most recent call last):
        ...
        uniterp._errors.InputError: trace(None): ...
    """
    if not inputs:
        return
    first = inputs[0]
    if isinstance(first, str):
        if not first:
            raise InputError("empty prompt: pass a non-empty string")
        return
    if isinstance(first, torch.Tensor):
        if (
            first.is_floating_point()
            or first.is_complex()
            or first.dtype == torch.bool
            or first.dim() not in (1, 2)
        ):
            raise InputError(
                f"trace() got a {first.dtype} tensor of shape {tuple(first.shape)}; token ids are an integer "
                "tensor of shape (seq,) or (batch, seq)"
            )
        return
    if isinstance(first, Mapping):
        if "input_ids" not in first and "inputs_embeds" not in first:
            raise InputError(f"trace() got a mapping with keys {sorted(first)}; an encoding needs input_ids")
        return
    if isinstance(first, (list, tuple)):
        _check_list(first)
        return
    raise InputError(f"trace({first!r}): expected {_ACCEPTED}; got {type(first).__name__}")


def _check_list(items: list[Any] | tuple[Any, ...]) -> None:
    if len(items) == 0:
        raise InputError("empty prompt list: pass at least one prompt")
    if all(isinstance(x, str) for x in items):
        if any(not x for x in items):
            raise InputError("a prompt in the list is an empty string")
        return
    if all(_is_id(x) for x in items):
        return
    if all(isinstance(x, (list, tuple)) and x and all(_is_id(y) for y in x) for x in items):
        return
    kinds = sorted({type(x).__name__ for x in items})
    raise InputError(f"trace() got a list of {', '.join(kinds)}; expected {_ACCEPTED}")


def _is_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_token_ids(inputs: tuple[Any, ...], vocab: int, model_type: str) -> None:
    """Refuse token ids outside ``[0, vocab)`` (the embedding would fail with an index error)."""
    if not inputs or not vocab:
        return
    first = inputs[0]
    ids: Any = None
    if isinstance(first, torch.Tensor):
        ids = first
    elif isinstance(first, Mapping):
        ids = first.get("input_ids")
    elif isinstance(first, (list, tuple)) and first and not isinstance(first[0], str):
        ids = first
    if ids is None:
        return
    if isinstance(ids, torch.Tensor):
        if ids.numel() == 0:
            return
        low, high = int(ids.min()), int(ids.max())
    else:
        rows = ids if ids and isinstance(ids[0], (list, tuple)) else [ids]
        rows = [row for row in rows if len(row)]
        if not rows:
            return
        if all(not isinstance(i, (list, tuple)) for row in rows for i in row[:1]):
            low, high = int(min(min(row) for row in rows)), int(max(max(row) for row in rows))
        else:  # deeper nesting
            flat = [int(i) for i in _flatten(ids)]
            low, high = min(flat), max(flat)
    bad = low if low < 0 else high
    if low < 0 or high >= vocab:
        raise InputError(
            f"token id {bad} is outside the vocabulary of {model_type} (valid: 0 to {vocab - 1})"
        )


def _flatten(ids: Any) -> list[int]:
    out: list[int] = []
    for x in ids:
        out.extend(_flatten(x) if isinstance(x, (list, tuple)) else [x])
    return out


#: Trace keywords that are forward arguments whichever way the prompts arrive (never
#: preprocessing options of the text-generation pipeline).
_FORWARD_KEYWORDS = frozenset({"use_cache", "logits_to_keep", "output_attentions", "output_hidden_states"})


def text_as_encoding(model: Any, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Text prompts of a local trace as the encoding nnsight would build from them, built directly.

    Example::

        >>> (encoding,) = text_as_encoding(model, (["Hello", "The cat sat"],), {})
        >>> encoding["input_ids"].shape, encoding["attention_mask"].shape     # (batch, seq), left-padded

    nnsight tokenizes text through the pipeline, which costs several times the
    tokenizer call itself; the model receives exactly the same tensors either way
    (`pipeline_text_encoding`). Anything else (token ids, keywords that could be
    preprocessing options, remote runs) is returned unchanged.
    """
    if (
        len(inputs) != 1
        or kwargs.get("remote")
        or any(key not in _FORWARD_KEYWORDS for key in kwargs if key != "remote")
    ):
        return inputs
    first = inputs[0]
    if isinstance(first, str):
        prompts = [first]
    elif isinstance(first, list) and first and all(isinstance(p, str) and p for p in first):
        prompts = first
    else:
        return inputs
    encoding = pipeline_text_encoding(model, prompts)
    return inputs if encoding is None else (encoding,)
