"""The one token-position model every tool uses.

Batches are left-padded, so each prompt ends at the last column. A *position* in
uniterp always counts within one prompt's own tokens: negative from its end
(``-1`` is the last token), non-negative from its first token (a BOS the
tokenizer adds is token 0), whatever the padding. A *column* is an index into the
padded batch; ``model.steer(token_positions=...)`` is the one place that takes
columns (negative columns equal negative positions under left padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._errors import InputError

__all__ = ["mask_columns", "prompt_columns"]


def prompt_columns(
    lengths: Sequence[int], positions: Sequence[int], width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices ``(n_prompts, n_positions)`` of ``positions`` in a left-padded batch of ``width``.

    Example::

        >>> rows, cols = prompt_columns([3, 5], [0, -1], width=5)
        >>> cols.tolist()                       # prompt 0 starts at column 2
        [[2, 4], [0, 4]]

    Raises:
        InputError: A position lies outside a prompt (the message names the prompt and the valid range).
    """
    cols = torch.empty((len(lengths), len(positions)), dtype=torch.long)
    for i, length in enumerate(lengths):
        for j, position in enumerate(positions):
            if not -length <= position < length:
                raise InputError(
                    f"position {position} is outside prompt {i}, which has {length} tokens "
                    f"(valid: {-length} to {length - 1})"
                )
            cols[i, j] = width - length + position % length
    rows = torch.arange(len(lengths)).unsqueeze(1).expand_as(cols)
    return rows, cols


def mask_columns(mask: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """Columns ``(batch, n_positions)`` of ``positions`` from a left-padded batch's attention mask.

    For code that only has the mask (inside a trace); the same positions as
    `prompt_columns`, checked on the mask's device.

    Example::

        >>> mask_columns(torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]), [0, -1]).tolist()
        [[2, 4], [0, 4]]

    Raises:
        InputError: A position lies outside a prompt.
    """
    lengths = mask.sum(dim=1).tolist()
    return prompt_columns(lengths, positions, mask.shape[1])[1].to(mask.device)
