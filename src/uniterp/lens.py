"""The logit lens: every layer's residual stream read through the unembedding.

Example::

    >>> from uniterp import StandardizedTransformer
    >>> from uniterp.lens import logit_lens
    >>> model = StandardizedTransformer("gpt2")
    >>> probs = logit_lens(model, ["The Eiffel Tower is in the city of", "1, 2, 3,"])
    >>> probs.shape                                  # (n_prompts, n_layers, vocab)
    torch.Size([2, 12, 50257])

All requested layers are read in one forward per batch, stacked, and projected
together on the model's device (final norm, unembedding and logit
post-processing, see `StandardizedTransformer.project_on_vocab`); only the
reduced result moves to the CPU. The forward stops right after the deepest
requested layer, so the model's own unembedding of every position never runs.

The small helpers at the bottom (prompt and layer normalisation, tokenisation
with left padding, remote registration) are shared with the other tools.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from ._errors import InputError
from ._fastpath import Read, fast_path_available, read_values
from ._positions import prompt_columns
from ._tooling import as_layer_list, as_position_list, as_prompt_list, encode_prompts, use_remote

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["TopTokens", "logit_lens"]

logger = logging.getLogger("uniterp")


class TopTokens(NamedTuple):
    """The ``k`` most probable tokens, most probable first (what ``top_k=`` returns).

    Example::

        >>> ids, probs = logit_lens(model, "The capital of France is", top_k=3)
        >>> model.tokenizer.convert_ids_to_tokens(ids[0, -1])   # last layer's top 3

    Attributes:
        token_ids: ``(..., k)`` long tensor of token ids.
        probs: ``(..., k)`` float tensor of their probabilities.
    """

    token_ids: torch.Tensor
    probs: torch.Tensor


def logit_lens(
    model: StandardizedTransformer,
    prompts: str | Sequence[str],
    *,
    layers: int | Sequence[int] | None = None,
    positions: int | Sequence[int] = -1,
    top_k: int | None = None,
    targets: Sequence[int] | torch.Tensor | None = None,
    return_inv_logits: bool = False,
    remote: bool | str = False,
    batch_size: int | None = None,
) -> torch.Tensor | TopTokens | tuple[Any, Any]:
    """Next-token probabilities read from every layer's residual stream.

    Example::

        >>> probs = logit_lens(model, ["The capital of France is", "Hello"])
        >>> probs.shape                                   # (n_prompts, n_layers, vocab)
        torch.Size([2, 12, 50257])
        >>> probs[:, -1]                                  # == model.next_token_probs
        >>> ids, p = logit_lens(model, "The capital of France is", top_k=5)
        >>> ids.shape                                     # (1, n_layers, 5)
        >>> paris = logit_lens(model, prompts, targets=[6342])   # (n_prompts, n_layers, 1)
        >>> grid = logit_lens(model, prompts, positions=[-3, -2, -1])
        >>> grid.shape                                    # (n_prompts, n_layers, 3, vocab)

    For layer ``l`` this is ``softmax(project_on_vocab(layers_output[l]))`` in
    float32, so the last layer equals ``model.next_token_probs`` (softcapping
    and logit scaling included). Prompts are left-padded into one batch; a
    prompt gives the same values alone and inside a batch.

    Args:
        model: The standardized model.
        prompts: One prompt or a list of prompts.
        layers: Layer indices (negative ones count from the end), in the order
            wanted along the layer dimension; default: every layer.
        positions: Token position(s) to read, within each prompt's own tokens:
            negative counts from the end (``-1``, the default, is the last
            token), non-negative from the first token (padding is skipped).
            An int gives ``(n_prompts, n_layers, ...)``; a sequence adds a
            positions dimension: ``(n_prompts, n_layers, n_positions, ...)``.
        top_k: Return only the ``k`` most probable tokens per layer (and
            position), as `TopTokens` ``(token_ids, probs)``, each
            ``(..., k)``.
        targets: Return only these tokens' probabilities: ``(n_targets,)``
            ids shared by every prompt, or ``(n_prompts, n_targets)`` ids per
            prompt. The result is ``(..., n_targets)``; the gather happens on
            the device, the full vocabulary never leaves it.
        return_inv_logits: Also return the *inverse* lens,
            ``softmax(-logits)``: the tokens a layer pushes down most get the
            highest values. The result is then a pair ``(lens, inverse)``, each
            in the form the other options ask for.
        remote: Passed to ``model.trace`` (``True`` for NDIF, ``"local"`` for
            nnsight's offline serialisation check); registers uniterp with
            nnsight for serialisation.
        batch_size: Prompts per forward; default: all in one. The float32
            probabilities of a whole batch, ``(batch, n_layers, n_positions,
            vocab)``, exist on the device during its forward: lower this for
            large grids.

    Returns:
        On the CPU, one of: a ``(n_prompts, n_layers[, n_positions], vocab)``
        float tensor (default); `TopTokens` with ``top_k``; a
        ``(n_prompts, n_layers[, n_positions], n_targets)`` tensor with
        ``targets``; a pair of those with ``return_inv_logits``.

    Raises:
        InputError: No prompts, an empty prompt, a position outside a prompt,
            a bad ``top_k``/``targets``, or both ``top_k`` and ``targets``.
        LayerIndexError: A layer index out of range.
    """
    prompt_list = as_prompt_list(prompts)
    layer_list = as_layer_list(model, layers, "logit_lens layers")
    single_position = isinstance(positions, int) and not isinstance(positions, bool)
    position_list = as_position_list(positions)
    if top_k is not None and targets is not None:
        raise InputError("logit_lens: pass top_k or targets, not both")
    vocab = model.vocab_size
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 < top_k <= vocab
    ):
        raise InputError(
            f"logit_lens: top_k must be an int in [1, {vocab}] (the vocabulary size); got {top_k!r}"
        )
    target_ids = _as_targets(targets, len(prompt_list), vocab)
    use_remote(remote)

    step = batch_size or len(prompt_list)
    if step < 1:
        raise InputError(f"logit_lens: batch_size must be at least 1; got {batch_size}")
    pieces: list[tuple[torch.Tensor, ...]] = []
    with torch.no_grad():
        for start in range(0, len(prompt_list), step):
            chunk = prompt_list[start : start + step]
            chunk_targets = None
            if target_ids is not None:
                chunk_targets = target_ids if target_ids.shape[0] == 1 else target_ids[start : start + step]
            pieces.append(
                _lens_batch(
                    model, chunk, layer_list, position_list, top_k, chunk_targets, return_inv_logits, remote
                )
            )
    parts = [torch.cat(column, dim=0) for column in zip(*pieces, strict=True)]
    if single_position:
        parts = [part.squeeze(2) for part in parts]
    if top_k is not None:
        results: list[Any] = [TopTokens(parts[0], parts[1])]
        if return_inv_logits:
            results.append(TopTokens(parts[2], parts[3]))
    else:
        results = list(parts)
    return (results[0], results[1]) if return_inv_logits else results[0]


def _lens_batch(
    model: StandardizedTransformer,
    prompts: list[str],
    layers: list[int],
    positions: list[int],
    top_k: int | None,
    targets: torch.Tensor | None,
    inverse: bool,
    remote: bool | str,
) -> tuple[torch.Tensor, ...]:
    """One forward: ``(batch, n_layers, n_positions, ...)`` results on the CPU."""
    encoding, lengths = encode_prompts(model, prompts)
    rows, cols = prompt_columns(lengths, positions, encoding["input_ids"].shape[1])
    order = sorted(set(layers))
    binding = model.binding
    locators = [binding.locator("layers_output", layer) for layer in order]
    if fast_path_available(model, locators, remote):
        # plain hooks (no interleaving): the same values and the same ops as the trace below

        def pick(hidden: torch.Tensor) -> torch.Tensor:
            return hidden[rows.to(hidden.device), cols.to(hidden.device)]

        values, _ = read_values(
            model, encoding, {layer: Read(loc, pick) for layer, loc in zip(order, locators)}
        )
        device = values[order[0]].device
        with torch.no_grad():
            logits = model.project_on_vocab(
                torch.stack([values[layer].to(device) for layer in layers], dim=1)
            )
            return reduce_logits(logits, top_k, targets, inverse)
    read: dict[int, torch.Tensor] = {}
    stacked: list[torch.Tensor] = []
    with model.trace(encoding, remote=remote) as tracer:
        for layer in order:
            hidden = model.layers_output[layer]
            read[layer] = hidden[rows.to(hidden.device), cols.to(hidden.device)]
        device = read[order[0]].device
        for layer in layers:
            stacked.append(read[layer].to(device))
        logits = model.project_on_vocab(torch.stack(stacked, dim=1))  # (batch, n_layers, n_pos, vocab)
        result = reduce_logits(logits, top_k, targets, inverse).save()
        tracer.stop()
    return result


def reduce_logits(
    logits: torch.Tensor, top_k: int | None, targets: torch.Tensor | None, inverse: bool
) -> tuple[torch.Tensor, ...]:
    """Softmax (float32) and the requested reduction, moved to the CPU.

    Args:
        logits: ``(batch, ..., vocab)`` on the device.
        top_k: Keep the ``k`` most probable tokens: two tensors (ids, probs).
        targets: ``(1 or batch, n_targets)`` ids: keep their probabilities only.
        inverse: Also return the same reduction of ``softmax(-logits)``.

    Returns:
        A tuple of CPU tensors: ``(probs,)``, ``(ids, probs)`` for top-k, and
        the inverse lens' ones appended when ``inverse``.
    """
    logits = logits.float()
    signs = (1.0, -1.0) if inverse else (1.0,)
    out: list[torch.Tensor] = []
    for sign in signs:
        probs = logits.softmax(dim=-1) if sign > 0 else (-logits).softmax(dim=-1)
        if top_k is not None:
            values, ids = probs.topk(top_k, dim=-1)
            out.extend((ids.cpu(), values.cpu()))
        elif targets is not None:
            index = targets.to(probs.device)
            index = index.view(index.shape[0], *([1] * (probs.ndim - 2)), index.shape[-1])
            index = index.expand(*probs.shape[:-1], index.shape[-1])
            out.append(probs.gather(-1, index).cpu())
        else:
            out.append(probs.cpu())
    return tuple(out)


def _as_targets(targets: Any, n_prompts: int, vocab: int) -> torch.Tensor | None:
    """``targets`` as a ``(1 or n_prompts, n_targets)`` long tensor, validated."""
    if targets is None:
        return None
    try:
        ids = torch.as_tensor(targets)
    except (TypeError, ValueError) as error:
        raise InputError(f"logit_lens: targets must be token ids (ints); got {targets!r}") from error
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
        raise InputError(f"logit_lens: targets must be integer token ids; got dtype {ids.dtype}")
    if ids.ndim == 1:
        ids = ids.unsqueeze(0)
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] not in (1, n_prompts):
        raise InputError(
            f"logit_lens: targets must have shape (n_targets,) or (n_prompts={n_prompts}, n_targets) "
            f"with n_targets >= 1; got shape {tuple(ids.shape)}"
        )
    if ((ids < 0) | (ids >= vocab)).any():
        raise InputError(
            f"logit_lens: target ids must be in [0, {vocab}) (the vocabulary); got {ids.tolist()}"
        )
    return ids.long()
