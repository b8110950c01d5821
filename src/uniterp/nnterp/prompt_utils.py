"""nnterp's ``prompt_utils`` on uniterp: prompts with target tokens and their probabilities.

Example::

    >>> from uniterp.nnterp.prompt_utils import Prompt, run_prompts
    >>> prompt = Prompt.from_strings("The capital of France is",
    ...                              {"target": "Paris", "other": ["London", "Madrid"]}, model.tokenizer)
    >>> results = run_prompts(model, [prompt])                    # {"target": (1, 1), "other": (1, 1)}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import prompts as _prompts
from .._errors import InputError
from ._compat import require_model
from .nnsight_utils import compute_next_token_probs

__all__ = [
    "Prompt",
    "TokenizationError",
    "get_first_tokens",
    "next_token_probs_unsqueeze",
    "run_prompts",
]

_DEFAULT = object()


class TokenizationError(InputError):
    """A word has no first token with this tokenizer."""


def _tokenizer_of(llm_or_tokenizer: Any) -> Any:
    tokenizer = getattr(llm_or_tokenizer, "tokenizer", None)
    return tokenizer if tokenizer is not None else llm_or_tokenizer


def get_first_tokens(
    words: str | Sequence[str], llm_or_tokenizer: Any, use_hacky_implementation: bool = False
) -> list[int]:
    """The first token of each word written as ``"word"`` and as ``" word"``, deduplicated.

    Example::

        >>> get_first_tokens(["Paris", "London"], model)         # a model or a tokenizer

    `uniterp.get_first_tokens`: it finds the token carrying the word's first
    characters with any tokenizer, so ``use_hacky_implementation`` is accepted
    and not needed.

    Raises:
        TokenizationError: A word is empty or tokenizes to nothing.
    """
    try:
        return _prompts.get_first_tokens(words, _tokenizer_of(llm_or_tokenizer))
    except InputError as error:
        raise TokenizationError(str(error)) from error


@dataclass
class Prompt(_prompts.Prompt):
    """uniterp's `uniterp.Prompt` with nnterp's ``from_strings`` arguments and methods.

    Example::

        >>> p = Prompt.from_strings("The capital of France is", {"city": "Paris"}, model.tokenizer)
        >>> p.has_no_collisions()
        True
    """

    @classmethod
    def from_strings(  # type: ignore[override]
        cls,
        prompt: str,
        target_strings: str | Sequence[str] | Mapping[str, str | Sequence[str]],
        tokenizer: Any,
    ) -> Prompt:
        """A prompt whose targets are the first tokens of ``target_strings`` (a model works as ``tokenizer``)."""
        return super().from_strings(prompt, target_strings, _tokenizer_of(tokenizer))  # type: ignore[return-value]

    def has_no_collisions(self, ignore_targets: str | Sequence[str] | None = None) -> bool:
        """Whether no token is shared between categories (except ``ignore_targets``)."""
        ignored = {ignore_targets} if isinstance(ignore_targets, str) else set(ignore_targets or ())
        tokens = [t for name, ids in self.target_tokens.items() if name not in ignored for t in ids]
        return len(tokens) == len(set(tokens))

    def get_target_probs(self, probs: torch.Tensor, layer: int | None = None) -> dict[str, torch.Tensor]:
        """Each category's summed probability: ``(batch, n_layers, vocab)`` -> ``(batch, n_layers)`` on the CPU.

        With ``layer``, that layer's column only: ``(batch,)``. Other shapes
        reduce the last (vocabulary) dimension, as in uniterp.
        """
        result = {name: value.cpu() for name, value in super().get_target_probs(probs).items()}
        if layer is not None:
            result = {name: value[:, layer] for name, value in result.items()}
        return result

    @torch.no_grad()
    def run(self, nn_model: Any, get_probs: Callable[..., torch.Tensor]) -> dict[str, torch.Tensor]:
        """``get_target_probs(get_probs(nn_model, self.prompt))``."""
        return self.get_target_probs(get_probs(nn_model, self.prompt))


def next_token_probs_unsqueeze(
    nn_model: Any, prompt: str | Sequence[str], remote: bool | str = False, **_kwargs: Any
) -> torch.Tensor:
    """Next-token probabilities with a layer dimension of 1: ``(n_prompts, 1, vocab)``."""
    return compute_next_token_probs(nn_model, prompt, remote=remote).unsqueeze(1)


def run_prompts(
    nn_model: Any,
    prompts: Sequence[_prompts.Prompt],
    batch_size: int = 32,
    get_probs_func: Callable[..., torch.Tensor] | None = None,
    func_kwargs: Mapping[str, Any] | None = None,
    remote: bool | str = False,
    tqdm: Any = _DEFAULT,
) -> dict[str, torch.Tensor]:
    """Each category's probability after each prompt: ``{category: (n_prompts, n_layers)}``.

    Example::

        >>> results = run_prompts(model, prompts)                              # (n_prompts, 1)
        >>> results = run_prompts(model, prompts, get_probs_func=logit_lens)   # (n_prompts, n_layers)

    `uniterp.run_prompts`: ``tqdm=None`` hides the progress bar (nnterp's way),
    the default shows one when there is more than one batch. Prompts may have
    different categories (``NaN`` where a prompt has none).
    """
    model = require_model(nn_model, "run_prompts")
    bar: Any = None if tqdm is _DEFAULT else (False if tqdm is None else tqdm)
    return _prompts.run_prompts(
        model, prompts, batch_size, get_probs_func, func_kwargs, remote=remote, tqdm=bar
    )
