"""Metrics for gradients, patching and attribution: a function of the logits.

A metric is any callable ``metric(logits) -> value`` where ``logits`` are the
model's ``(n_prompts, seq, vocab)`` logits of one run (left-padded, so position
``-1`` is every prompt's last token) and ``value`` is a 0-d tensor or one value
per prompt ``(n_prompts,)``; per-prompt values are summed. The tools call it once
per run (once per patched index in a sweep), on exactly the prompts you passed,
in order.

Example::

    >>> from uniterp.metrics import logit_diff, last_token_metric
    >>> metric = logit_diff(model, " Paris", " Tokyo")            # last token: Paris - Tokyo
    >>> @last_token_metric
    ... def p_paris(last):                                         # last: (n_prompts, vocab)
    ...     return last.softmax(-1)[:, paris_id]

A metric built with `last_token_metric` (or `logit_diff`) reads only the last
position, so the tools compute the logits there only (the unembedding of the other
positions is skipped where the model's forward allows it): same values, less work.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._errors import InputError

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["LastTokenMetric", "last_token_metric", "logit_diff"]


class LastTokenMetric:
    """A metric that reads only the last position's logits.

    Example::

        >>> metric = LastTokenMetric(lambda last: last[:, 42] - last[:, 7])
        >>> metric(logits)                     # logits (n_prompts, seq, vocab) -> (n_prompts,)

    Args:
        fn: ``fn(last) -> value`` with ``last`` the ``(n_prompts, vocab)`` logits of
            each prompt's last token.
        name: A label for messages and results.
    """

    last_only = True

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str | None = None) -> None:
        if not callable(fn):
            raise InputError(f"a metric must be callable; got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "metric")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise InputError(f"metric {self.name!r} takes logits (n_prompts, seq, vocab); got {shape}")
        return self.fn(logits[:, -1, :])

    def __repr__(self) -> str:
        return f"LastTokenMetric({self.name})"


def last_token_metric(fn: Callable[[torch.Tensor], torch.Tensor]) -> LastTokenMetric:
    """Wrap ``fn(last_logits)`` as a metric of the logits that reads only the last token.

    Example::

        >>> @last_token_metric
        ... def paris_prob(last):                  # (n_prompts, vocab)
        ...     return last.float().softmax(-1)[:, paris_id]
        >>> gradients(model, prompts, paris_prob, ["layers_output.3"])
    """
    return LastTokenMetric(fn)


def _token_ids(model: StandardizedTransformer, tokens: Any, what: str) -> list[int]:
    """One token id per entry: an int, or a string that must tokenize to exactly one token."""
    items = tokens if isinstance(tokens, (list, tuple)) else [tokens]
    if not items:
        raise InputError(f"{what}: give at least one token")
    ids: list[int] = []
    for item in items:
        if isinstance(item, bool):
            raise InputError(f"{what}: {item!r} is not a token")
        if isinstance(item, int):
            ids.append(item)
            continue
        if not isinstance(item, str) or not item:
            raise InputError(f"{what}: {item!r} is neither a token id nor a non-empty string")
        encoded = model.tokenizer(item, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise InputError(
                f"{what}: {item!r} is {len(encoded)} tokens {encoded} for this tokenizer; a logit difference "
                "needs one token per answer (pass the first token's id, or an int)"
            )
        ids.append(int(encoded[0]))
    vocab = model.vocab_size
    for i in ids:
        if not 0 <= i < vocab:
            raise InputError(f"{what}: token id {i} is outside the vocabulary (0 to {vocab - 1})")
    return ids


def logit_diff(
    model: StandardizedTransformer,
    correct: str | int | Sequence[str | int],
    wrong: str | int | Sequence[str | int],
) -> LastTokenMetric:
    """The last token's logit of ``correct`` minus that of ``wrong``, per prompt.

    Example::

        >>> metric = logit_diff(model, " Paris", " Tokyo")
        >>> metric = logit_diff(model, [" Paris", " Tokyo"], [" Tokyo", " Paris"])   # one pair per prompt

    Args:
        model: The model (its tokenizer turns strings into ids).
        correct: One answer for every prompt, or one per prompt (strings of one
            token each, or token ids).
        wrong: The same for the competing answer.

    Returns:
        A `LastTokenMetric` giving ``(n_prompts,)`` float32 differences.
    """
    good = _token_ids(model, correct, "correct")
    bad = _token_ids(model, wrong, "wrong")
    if len(good) != len(bad) and 1 not in (len(good), len(bad)):
        raise InputError(
            f"correct has {len(good)} tokens and wrong has {len(bad)}; give one each or one per prompt"
        )

    def diff(last: torch.Tensor) -> torch.Tensor:
        n = last.shape[0]
        for what, ids in (("correct", good), ("wrong", bad)):
            if len(ids) not in (1, n):
                raise InputError(
                    f"logit_diff: {len(ids)} {what} tokens for {n} prompts; give one or one per prompt"
                )
        rows = torch.arange(n, device=last.device)
        g = torch.tensor(good * (n if len(good) == 1 else 1), device=last.device)
        b = torch.tensor(bad * (n if len(bad) == 1 else 1), device=last.device)
        return last[rows, g].float() - last[rows, b].float()

    return LastTokenMetric(diff, name="logit_diff")


# -- what the tools use ---------------------------------------------------------------------


def check_metric(metric: Any) -> Callable[[torch.Tensor], Any]:
    """``metric`` if it is callable, else `InputError`."""
    if not callable(metric):
        raise InputError(
            f"metric must be a callable of the logits (n_prompts, seq, vocab) returning a scalar or "
            f"(n_prompts,) values; got {type(metric).__name__}"
        )
    return metric


def last_only(metric: Any) -> bool:
    """Whether ``metric`` reads only the last position's logits."""
    return bool(getattr(metric, "last_only", False))


def logits_kwargs(model: StandardizedTransformer, metric: Any) -> dict[str, Any]:
    """Forward keywords that compute only the logits ``metric`` reads (``logits_to_keep=1``)."""
    if not last_only(metric):
        return {}
    from ._nnsight_compat import native_module

    params = inspect.signature(native_module(model).forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def metric_value(metric: Any, logits: torch.Tensor, n_prompts: int, need_grad: bool = False) -> torch.Tensor:
    """``metric(logits)`` as a 0-d float tensor (per-prompt values summed), or `InputError` saying what is wrong."""
    name = getattr(metric, "name", getattr(metric, "__name__", type(metric).__name__))
    value = metric(logits)
    if not isinstance(value, torch.Tensor):
        if isinstance(value, (int, float)) and not need_grad:
            return torch.tensor(float(value))
        raise InputError(
            f"metric {name!r} returned a {type(value).__name__}; it must return a tensor: a scalar or one value "
            f"per prompt ({n_prompts},)" + (" that depends on the logits (no .item())" if need_grad else "")
        )
    if value.dim() > 1 or (value.dim() == 1 and value.shape[0] not in (1, n_prompts)):
        raise InputError(
            f"metric {name!r} returned shape {tuple(value.shape)}; it must return a scalar or one value per "
            f"prompt ({n_prompts},)"
        )
    if not value.is_floating_point():
        raise InputError(
            f"metric {name!r} returned {value.dtype} values; it must return floating-point values"
        )
    if need_grad and not value.requires_grad:
        raise InputError(
            f"metric {name!r} does not depend differentiably on the logits (its value has no gradient); "
            "compute it with torch operations on the logits (no .item(), argmax or detach)"
        )
    return value.float().sum()
