"""Prompts with target tokens, and their probabilities over many prompts.

Example::

    >>> from uniterp.prompts import Prompt, run_prompts
    >>> prompts = [
    ...     Prompt.from_strings("The capital of France is", {"fr": "Paris", "de": "Berlin"},
    ...                         model.tokenizer),
    ...     Prompt.from_strings("The capital of Germany is", {"fr": "Paris", "de": "Berlin"},
    ...                         model.tokenizer),
    ... ]
    >>> results = run_prompts(model, prompts)          # {"fr": (2, 1), "de": (2, 1)}
    >>> results = run_prompts(model, prompts, get_probs_func=logit_lens)   # (2, n_layers)
    >>> df = results_to_dataframe(results, prompts)    # needs pandas (the ``display`` extra)

A target word is tracked through the first token of both ``"word"`` and
``" word"`` (`get_first_tokens`): whichever way the model would start writing it.
"""

from __future__ import annotations

import inspect
import logging
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ._errors import InputError, ShapeError
from ._tooling import use_remote

if TYPE_CHECKING:
    import pandas

    from ._model import StandardizedTransformer

__all__ = ["Prompt", "PromptResults", "get_first_tokens", "results_to_dataframe", "run_prompts"]

logger = logging.getLogger("uniterp")

#: Word-boundary markers that tokenizers show in place of a space.
_SPACE_MARKERS = "▁"

#: Category used when targets are given as a bare string or list.
DEFAULT_CATEGORY = "target"


def _visible(text: str) -> str:
    """``text`` without whitespace or SentencePiece space markers."""
    return "".join(ch for ch in text if not ch.isspace() and ch not in _SPACE_MARKERS)


def _first_word_token(tokenizer: Any, text: str, word: str) -> int | None:
    """Id of the first token of ``text`` that carries characters of ``word``.

    Special tokens are not added; tokens that decode to nothing visible (a lone
    space, a bare ``"▁"``) are skipped. The choice is checked by decoding the
    ids up to it: what they spell must start the word.
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    target = _visible(word)
    for position, token_id in enumerate(ids):
        piece = _visible(tokenizer.decode([token_id]))
        if not piece:
            continue
        spelled = _visible(tokenizer.decode(ids[: position + 1])).replace("\ufffd", "")
        if not target.startswith(spelled):
            logger.debug(
                "uniterp: first token %r of %r decodes to %r, which does not start the word "
                "(normalizing tokenizer?); using it anyway",
                token_id,
                text,
                spelled,
            )
        return int(token_id)
    return None


def get_first_tokens(words: str | Sequence[str], tokenizer: Any) -> list[int]:
    """First token ids of each word written as ``"word"`` and as ``" word"``.

    Example::

        >>> ids = get_first_tokens(["Paris", "London"], tok)      # GPT-2's tokenizer
        >>> [tok.decode([i]) for i in ids]
        ['Paris', ' Paris', 'London', ' London']

    Right for byte-level BPE (GPT-2 style, with or without ``add_prefix_space``)
    and SentencePiece-style tokenizers: no BOS is added, and when ``" word"``
    encodes to a lone space/``"▁"`` token followed by the word, the token that
    carries the word's first characters is taken. Leading spaces of a word are
    ignored (``" Paris"`` is treated as ``"Paris"``).

    Args:
        words: One word or a list of words.
        tokenizer: A HuggingFace tokenizer.

    Returns:
        Token ids, deduplicated, in order of first appearance (at most two per word).

    Raises:
        InputError: A word is empty or tokenizes to nothing visible.
    """
    if isinstance(words, str):
        words = [words]
    tokens: list[int] = []
    for word in words:
        if not isinstance(word, str):
            raise InputError(f"get_first_tokens: expected strings, got {type(word).__name__} ({word!r})")
        base = word.lstrip()
        if not _visible(base):
            raise InputError(f"target word {word!r} is empty or only whitespace; it has no first token")
        found = False
        for variant in (base, " " + base):
            token = _first_word_token(tokenizer, variant, base)
            if token is None:
                continue
            found = True
            if token not in tokens:
                tokens.append(token)
        if not found:
            raise InputError(f"target word {word!r} tokenizes to nothing with {type(tokenizer).__name__}")
    return tokens


def _normalize_targets(
    targets: str | Sequence[str] | Mapping[str, str | Sequence[str]],
) -> dict[str, list[str]]:
    if isinstance(targets, str):
        return {DEFAULT_CATEGORY: [targets]}
    if isinstance(targets, Mapping):
        result: dict[str, list[str]] = {}
        for category, value in targets.items():
            strings = [value] if isinstance(value, str) else list(value)
            if not strings:
                raise InputError(f"target category {category!r} has no strings")
            result[str(category)] = strings
        if not result:
            raise InputError("targets: an empty dict; give at least one category")
        return result
    strings = list(targets)
    if not strings:
        raise InputError("targets: an empty list; give at least one target string")
    return {DEFAULT_CATEGORY: strings}


@dataclass
class Prompt:
    """A prompt and the target tokens to track after it, by category.

    Example::

        >>> p = Prompt.from_strings("The capital of France is", {"city": ["Paris", "Lyon"]},
        ...                         model.tokenizer)
        >>> p.target_strings
        {'city': ['Paris', 'Lyon']}
        >>> p.target_tokens          # first tokens of "Paris", " Paris", "Lyon", " Lyon"
        {'city': [...]}

    Attributes:
        prompt: The prompt text (a non-empty string; token ids are refused).
        target_tokens: Category → token ids whose probabilities are summed.
        target_strings: Category → the strings the ids came from.

    Raises:
        InputError: ``prompt`` is not a non-empty string, or ``target_tokens``
            is not a dict of category name → list of int token ids.
    """

    prompt: str
    target_tokens: dict[str, list[int]]
    target_strings: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_prompt_text(self.prompt, "Prompt.prompt")
        if not isinstance(self.target_tokens, Mapping):
            raise InputError(
                f"Prompt.target_tokens must be a dict of category -> list of token ids, got "
                f"{type(self.target_tokens).__name__} ({self.target_tokens!r}); build prompts with "
                "Prompt.from_strings(text, targets, tokenizer)"
            )
        for category, ids in self.target_tokens.items():
            if not isinstance(category, str):
                raise InputError(f"Prompt.target_tokens: category {category!r} is not a string")
            if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, torch.Tensor)):
                raise InputError(
                    f"Prompt.target_tokens[{category!r}] must be a list of token ids, got "
                    f"{type(ids).__name__} ({ids!r}); for strings use Prompt.from_strings"
                )
            bad = [t for t in ids if isinstance(t, bool) or not _is_integer(t)]
            if bad:
                raise InputError(
                    f"Prompt.target_tokens[{category!r}] holds {bad!r}, which are not int token ids; "
                    "for strings use Prompt.from_strings"
                )
        if self.target_strings is None:
            self.target_strings = {}
        elif not isinstance(self.target_strings, Mapping):
            raise InputError(
                f"Prompt.target_strings must be a dict of category -> strings, got "
                f"{type(self.target_strings).__name__}"
            )

    @classmethod
    def from_strings(
        cls,
        prompt: str,
        targets: str | Sequence[str] | Mapping[str, str | Sequence[str]],
        tokenizer: Any,
    ) -> Prompt:
        """Build a `Prompt` whose target tokens are the first tokens of the target strings.

        Example::

            >>> Prompt.from_strings("1 2 3", "4", tok).target_strings
            {'target': ['4']}

        Args:
            prompt: The prompt text.
            targets: A string, a list of strings (category ``"target"``), or a
                dict mapping a category to a string or a list of strings.
            tokenizer: Tokenizer used by `get_first_tokens`.

        Raises:
            InputError: Empty prompt or targets, or a target that tokenizes to nothing.
        """
        _check_prompt_text(prompt, "Prompt.from_strings: the prompt")
        strings = _normalize_targets(targets)
        tokens = {category: get_first_tokens(words, tokenizer) for category, words in strings.items()}
        return cls(prompt=prompt, target_tokens=tokens, target_strings=strings)

    @property
    def categories(self) -> list[str]:
        """The target categories, in order."""
        return list(self.target_tokens)

    def get_target_probs(self, probs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sum of each category's target-token probabilities.

        Example::

            >>> p.get_target_probs(probs)      # probs: (vocab,) or (n_layers, vocab)
            {'city': tensor(...)}

        Args:
            probs: ``(..., vocab)`` probabilities for this prompt.

        Returns:
            Category → ``(...)`` tensor.
        """
        result: dict[str, torch.Tensor] = {}
        for category, ids in self.target_tokens.items():
            index = torch.as_tensor(sorted(set(ids)), dtype=torch.long, device=probs.device)
            result[category] = probs.index_select(-1, index).sum(-1)
        return result


class PromptResults(dict):  # type: ignore[type-arg] - dict[str, torch.Tensor]
    """What `run_prompts` returns: category → ``(n_prompts, n_columns)`` tensor, and what the columns are.

    Example::

        >>> results = run_prompts(model, prompts)                  # next-token probabilities
        >>> results["fr"].shape, results.per_layer                 # ((n_prompts, 1), False)
        >>> results = run_prompts(model, prompts, get_probs_func=logit_lens)
        >>> results.per_layer, results.layers                      # (True, [0, 1, ..., n_layers - 1])

    A plain ``dict`` in every other respect.

    Attributes:
        per_layer: Whether the columns are layers. ``False`` for the model's
            own next-token probabilities (one column, no layer).
        layers: The layer number of each column when ``per_layer`` and known,
            else ``None``.
    """

    per_layer: bool = False
    layers: list[int] | None = None


def _check_prompt_text(prompt: Any, what: str) -> None:
    """A prompt is text: a token id or a list of ids would be run as something else."""
    if not isinstance(prompt, str):
        raise InputError(
            f"{what} must be a string, got {type(prompt).__name__} ({prompt!r}); token ids are not "
            "accepted as prompts: decode them first (tokenizer.decode(ids))"
        )
    if not prompt:
        raise InputError(f"{what} is an empty string; give the prompt text")


def _is_integer(value: Any) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _categories(prompts: Sequence[Prompt]) -> list[str]:
    seen: list[str] = []
    for prompt in prompts:
        for category in prompt.target_tokens:
            if category not in seen:
                seen.append(category)
    return seen


def _is_token_id(value: Any, vocab: int) -> bool:
    if isinstance(value, bool):
        return False
    try:
        number = operator.index(value)  # int, numpy or 0-d torch integers
    except TypeError:
        return False
    return 0 <= number < vocab


def _check_token_ids(prompts: Sequence[Prompt], vocab: int) -> None:
    for i, prompt in enumerate(prompts):
        for category, ids in prompt.target_tokens.items():
            if not ids:
                raise InputError(
                    f"prompt {i} ({prompt.prompt!r}): category {category!r} has no target tokens"
                )
            bad = [t for t in ids if not _is_token_id(t, vocab)]
            if bad:
                raise InputError(
                    f"prompt {i} ({prompt.prompt!r}): target tokens {bad} of category {category!r} are not "
                    f"ids in [0, {vocab}) (the model's vocabulary)"
                )


def _target_index(batch: Sequence[Prompt], categories: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch, n_categories, k)`` token ids and a 0/1 mask of the real ones."""
    per_prompt: list[list[list[int]]] = []
    width = 1
    for prompt in batch:
        rows = []
        for category in categories:
            ids = list(dict.fromkeys(int(i) for i in prompt.target_tokens.get(category, [])))
            rows.append(ids)
            width = max(width, len(ids))
        per_prompt.append(rows)
    index = torch.zeros(len(batch), len(categories), width, dtype=torch.long)
    mask = torch.zeros(len(batch), len(categories), width)
    for b, rows in enumerate(per_prompt):
        for c, ids in enumerate(rows):
            index[b, c, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            mask[b, c, : len(ids)] = 1.0
    return index, mask


def _sum_targets(probs: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(batch, n_layers, vocab)`` probabilities → ``(batch, n_layers, n_categories)`` sums."""
    batch, n_layers, _ = probs.shape
    _, n_cat, width = index.shape
    flat = index.to(probs.device).view(batch, 1, n_cat * width).expand(batch, n_layers, n_cat * width)
    picked = probs.gather(2, flat).view(batch, n_layers, n_cat, width)
    return (picked * mask.to(device=probs.device, dtype=probs.dtype)[:, None]).sum(-1)


@torch.no_grad()
def _next_token_target_sums(
    model: StandardizedTransformer, texts: list[str], index: torch.Tensor, mask: torch.Tensor, remote: Any
) -> torch.Tensor:
    """One trace: ``(batch, 1, n_categories)`` target sums of the next-token probabilities."""
    with model.trace(texts, remote=remote):
        probs = model.next_token_probs
        sums = _sum_targets(probs[:, None, :], index, mask).cpu().save()
    return sums


def _accepts_keyword(func: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return True
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def progress_bar(tqdm: bool | Callable[..., Any] | None, total: int, desc: str) -> Any:
    """A progress bar over ``total`` batches, shared by the tools.

    ``None`` (the tools' default): tqdm.auto's bar when there is more than one
    batch, none for a single batch; ``True``: always a bar; ``False``: never;
    a tqdm-like class: ``tqdm(total=..., desc=...)``.
    """
    if callable(tqdm):
        return tqdm(total=total, desc=desc)
    from tqdm.auto import tqdm as auto_tqdm

    show = total > 1 if tqdm is None else bool(tqdm)
    return auto_tqdm(total=total, desc=desc, disable=not show)


def run_prompts(
    model: StandardizedTransformer,
    prompts: Sequence[Prompt],
    batch_size: int = 32,
    get_probs_func: Callable[..., torch.Tensor] | None = None,
    func_kwargs: Mapping[str, Any] | None = None,
    remote: bool | str = False,
    tqdm: bool | Callable[..., Any] | None = None,
) -> PromptResults:
    """Probability of each target category after each prompt.

    Example::

        >>> results = run_prompts(model, prompts, batch_size=16)
        >>> results["fr"].shape                                   # (n_prompts, 1)
        >>> results = run_prompts(model, prompts, get_probs_func=logit_lens,
        ...                       func_kwargs={"layers": [0, 4, 8]})
        >>> results["fr"].shape                                   # (n_prompts, 3)

    A category's probability is the sum of the probabilities of its target
    tokens (each counted once). By default the probabilities are the model's
    next-token probabilities, read in one trace per batch, and only the sums
    leave the device.

    Args:
        model: The model.
        prompts: `Prompt` objects.
        batch_size: Prompts per forward pass (left-padded).
        get_probs_func: Optional ``f(model, prompts: list[str], **func_kwargs)``
            returning ``(n_prompts, n_layers, vocab)`` (or ``(n_prompts, vocab)``)
            probabilities, e.g. `uniterp.logit_lens` or `uniterp.patchscope_lens`.
        func_kwargs: Keyword arguments for ``get_probs_func``. When ``remote`` is
            set and ``func_kwargs`` has no ``remote``, ``remote=remote`` is added
            (a ``get_probs_func`` without a ``remote`` parameter is refused).
        remote: Passed to nnsight (``True`` for NDIF, ``"local"`` to exercise the
            serialisation path offline).
        tqdm: ``None`` (default): a progress bar when there is more than one
            batch; ``True``: always; ``False``: never; or a tqdm-like class.

    Returns:
        A `PromptResults` (a dict): category → ``(n_prompts, n_layers)`` float
        tensor on CPU (``(n_prompts, 1)`` for next-token probabilities); ``NaN``
        where a prompt has no targets in that category. Its ``per_layer`` and
        ``layers`` say what the columns are: layers when ``get_probs_func``
        returns a layer dimension (numbered from ``func_kwargs["layers"]``, or
        ``0..n_layers-1`` when there is one column per layer of the model).

    Raises:
        InputError: No prompts, a bad ``batch_size``, a non-`Prompt` item, a
            prompt that is not a non-empty string, or ``remote`` with a ``get_probs_func`` that cannot take ``remote=``.
        ShapeError: ``get_probs_func`` returned the wrong shape.
    """
    prompts = list(prompts)
    if not prompts:
        raise InputError("run_prompts: empty prompt list; pass at least one Prompt")
    for i, item in enumerate(prompts):
        if not isinstance(item, Prompt):
            raise InputError(
                f"run_prompts: expected Prompt objects (see Prompt.from_strings), got {type(item).__name__}"
            )
        _check_prompt_text(item.prompt, f"run_prompts: prompts[{i}].prompt")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"run_prompts: batch_size must be a positive int, got {batch_size!r}")
    use_remote(remote)
    kwargs = dict(func_kwargs or {})
    if get_probs_func is not None and remote and "remote" not in kwargs:
        if not _accepts_keyword(get_probs_func, "remote"):
            raise InputError(
                f"run_prompts(remote={remote!r}): get_probs_func {getattr(get_probs_func, '__name__', '?')} "
                "takes no remote= argument, so it cannot run remotely; give it one or run locally"
            )
        kwargs["remote"] = remote
    categories = _categories(prompts)
    _check_token_ids(prompts, model.vocab_size)
    chunks: list[torch.Tensor] = []
    per_layer = False
    n_batches = (len(prompts) + batch_size - 1) // batch_size
    with progress_bar(tqdm, n_batches, "run_prompts") as bar:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            texts = [p.prompt for p in batch]
            index, mask = _target_index(batch, categories)
            if get_probs_func is None:
                sums = _next_token_target_sums(model, texts, index, mask, remote)
            else:
                with torch.no_grad():
                    probs = get_probs_func(model, texts, **kwargs)
                if not isinstance(probs, torch.Tensor):
                    raise ShapeError(f"get_probs_func returned {type(probs).__name__}, expected a tensor")
                per_layer = probs.ndim == 3
                if probs.ndim == 2:
                    probs = probs[:, None, :]
                if probs.ndim != 3 or probs.shape[0] != len(batch):
                    raise ShapeError(
                        f"get_probs_func returned shape {tuple(probs.shape)} for {len(batch)} prompts; "
                        "expected (n_prompts, n_layers, vocab) or (n_prompts, vocab)"
                    )
                sums = _sum_targets(probs, index, mask).cpu()
            missing = mask.sum(-1) == 0  # (batch, n_categories)
            sums = sums.float()
            sums[missing[:, None, :].expand_as(sums)] = float("nan")
            chunks.append(sums)
            bar.update(1)
    stacked = torch.cat(chunks, dim=0)  # (n_prompts, n_layers, n_categories)
    results = PromptResults(
        {category: stacked[:, :, c].contiguous() for c, category in enumerate(categories)}
    )
    results.per_layer = per_layer
    if per_layer:
        results.layers = _column_layers(model, kwargs.get("layers"), stacked.shape[1])
    return results


def _column_layers(model: StandardizedTransformer, layers: Any, n_columns: int) -> list[int] | None:
    """Layer numbers of ``n_columns`` per-layer results, when they can be known."""
    if layers is None:
        return list(range(n_columns)) if n_columns == model.num_layers else None
    try:
        from ._tooling import as_layer_list

        numbers = as_layer_list(model, layers)
    except (TypeError, ValueError, IndexError):
        return None
    return numbers if len(numbers) == n_columns else None


def results_to_dataframe(
    results: Mapping[str, torch.Tensor],
    prompts: Sequence[Prompt] | Sequence[str],
    layers: Sequence[int] | None = None,
) -> pandas.DataFrame:
    """`run_prompts` results as a long (tidy) pandas DataFrame.

    Example::

        >>> df = results_to_dataframe(run_prompts(model, prompts), prompts)
        >>> df.columns.tolist()                 # next-token probabilities: no layer
        ['prompt_index', 'prompt', 'category', 'probability']
        >>> df = results_to_dataframe(run_prompts(model, prompts, get_probs_func=logit_lens), prompts)
        >>> df.columns.tolist()
        ['prompt_index', 'prompt', 'category', 'layer', 'probability']

    Needs pandas (``pip install uniterp[display]``). Labels are never made
    up: a ``layer`` column appears only when the columns of ``results`` are
    layers and their numbers are known (from `PromptResults`, or ``layers=``).

    Args:
        results: Category → ``(n_prompts, n_columns)`` tensor (or ``(n_prompts,)``),
            as `run_prompts` returns it.
        prompts: The prompts (`Prompt` objects or strings), in the same order.
        layers: Layer numbers of the columns, e.g. the ``layers=`` given to
            `logit_lens`. Needed for a plain dict whose values have more than
            one column; overrides what `PromptResults` records.

    Returns:
        One row per (prompt, category[, layer]) with columns ``prompt_index``,
        ``prompt``, ``category``, ``layer`` (only for per-layer results) and
        ``probability``.

    Raises:
        InputError: Sizes do not match, or the columns' layer numbers are
            unknown (pass ``layers=``).
    """
    try:
        import pandas as pd
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("results_to_dataframe needs pandas: pip install 'uniterp[display]'") from error
    texts = [p.prompt if isinstance(p, Prompt) else str(p) for p in prompts]
    tables: dict[str, torch.Tensor] = {}
    for category, values in results.items():
        values = values.detach().float().cpu()
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2 or values.shape[0] != len(texts):
            raise InputError(
                f"results[{category!r}] has shape {tuple(values.shape)}; expected ({len(texts)}, n_layers) "
                f"for {len(texts)} prompts"
            )
        tables[category] = values
    widths = {values.shape[1] for values in tables.values()}
    if len(widths) > 1:
        raise InputError(f"the categories of results have different numbers of columns: {sorted(widths)}")
    width = widths.pop() if widths else 1
    labels = _layer_labels(results, layers, width)
    rows: list[tuple[Any, ...]] = []
    for category, values in tables.items():
        for i, text in enumerate(texts):
            if labels is None:
                rows.append((i, text, category, float(values[i, 0])))
            else:
                for j, layer in enumerate(labels):
                    rows.append((i, text, category, int(layer), float(values[i, j])))
    columns = ["prompt_index", "prompt", "category", "probability"]
    if labels is not None:
        columns.insert(3, "layer")
    return pd.DataFrame(rows, columns=columns)


def _layer_labels(
    results: Mapping[str, torch.Tensor], layers: Sequence[int] | None, width: int
) -> list[int] | None:
    """The layer number of each column, or ``None`` when the results have no layer dimension."""
    if layers is not None:
        labels = [int(x) for x in layers]
        if len(labels) != width:
            raise InputError(f"{len(labels)} layer labels for {width} result columns")
        return labels
    if isinstance(results, PromptResults):
        if not results.per_layer:
            return None
        if results.layers is not None:
            return list(results.layers)
        raise InputError(
            f"the {width} result columns are layers but their numbers are unknown (get_probs_func got no "
            "layers= and did not return one column per layer of the model); pass layers=[...]"
        )
    if width == 1:
        return None  # one column: the next-token probabilities, no layer to name
    raise InputError(
        f"results has {width} columns per prompt; pass layers=[...] to say which layer each column is "
        "(run_prompts' own results record it)"
    )
