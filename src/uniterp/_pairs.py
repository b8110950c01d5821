"""Clean/corrupted prompt pairs for the patching and attribution tools.

Each clean prompt is paired with the corrupted prompt at the same index; the two
must tokenize to the same number of tokens, so a position means the same token
slot in both (left padding then puts the pair in the same columns). A position
axis further needs every pair to have the same length: position ``p`` is token
``p`` of every prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from ._errors import InputError
from ._tooling import as_prompt_list, pad_left, tokenize

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["Pairs", "check_mode", "encode_pairs", "positive_int"]

Mode = Literal["denoise", "noise"]


@dataclass
class Pairs:
    """Encoded pairs.

    Attributes:
        clean: ``input_ids`` and ``attention_mask`` of the clean prompts, ``(n, width)``.
        corrupted: The same for the corrupted prompts.
        lengths: Token count of each pair.
        tokens: The first clean prompt's tokens as text.
    """

    clean: dict[str, torch.Tensor]
    corrupted: dict[str, torch.Tensor]
    lengths: list[int]
    tokens: list[str]

    @property
    def n(self) -> int:
        """Number of pairs."""
        return len(self.lengths)

    @property
    def width(self) -> int:
        """Columns of the left-padded batch."""
        return int(self.clean["input_ids"].shape[1])

    def runs(self, mode: Mode) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(source, base)`` encodings: values come from the source run and are patched into the base run."""
        return (self.clean, self.corrupted) if mode == "denoise" else (self.corrupted, self.clean)

    def columns(self, positions: Sequence[int]) -> list[int]:
        """Columns of token ``positions`` (pairs of one length; negative counts from the end)."""
        n = self.lengths[0]
        return [self.width - n + (p % n) for p in positions]


def check_mode(mode: Any) -> Mode:
    """``mode`` if it is ``"denoise"`` or ``"noise"``, else `InputError`."""
    if mode not in ("denoise", "noise"):
        raise InputError(
            f"mode must be 'denoise' (clean values into the corrupted run) or 'noise' (corrupted values into "
            f"the clean run); got {mode!r}"
        )
    return mode


def positive_int(value: Any, name: str) -> int:
    """``value`` if it is a positive int, else `InputError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int; got {value!r}")
    return value


def encode_pairs(
    model: StandardizedTransformer,
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    *,
    one_length: bool,
) -> Pairs:
    """Left-padded encodings of the pairs, after checking their lengths.

    Raises:
        InputError: Empty prompts, different numbers of clean and corrupted prompts, a
            pair whose prompts tokenize to different lengths, or (``one_length``)
            pairs of different lengths.
    """
    clean_list = as_prompt_list(clean, "clean")
    corrupted_list = as_prompt_list(corrupted, "corrupted")
    if len(clean_list) != len(corrupted_list):
        raise InputError(
            f"{len(clean_list)} clean prompts and {len(corrupted_list)} corrupted prompts: give one corrupted "
            "prompt per clean prompt"
        )
    clean_ids, corrupted_ids = tokenize(model, clean_list), tokenize(model, corrupted_list)
    for i, (a, b) in enumerate(zip(clean_ids, corrupted_ids)):
        if len(a) != len(b):
            raise InputError(
                f"clean[{i}] {clean_list[i]!r} is {len(a)} tokens and corrupted[{i}] {corrupted_list[i]!r} is "
                f"{len(b)}: each pair must tokenize to the same length (reword one, or pad it with a token)"
            )
    lengths = [len(ids) for ids in clean_ids]
    if one_length and len(set(lengths)) > 1:
        raise InputError(
            f"a position axis needs every prompt to have the same number of tokens; the pairs have {lengths} "
            "(sweep each length on its own, or drop 'position' from over=)"
        )
    tokens = [model.tokenizer.decode([t]) for t in clean_ids[0]]
    return Pairs(pad_left(model, clean_ids), pad_left(model, corrupted_ids), lengths, tokens)
