"""nnterp's ``interventions`` module on uniterp's tools: logit lens and patchscopes.

Example::

    >>> from uniterp.nnterp.interventions import logit_lens, patchscope_lens, TargetPrompt
    >>> probs = logit_lens(model, ["The capital of France is"])          # (1, n_layers, vocab)
    >>> probs = patchscope_lens(model, source_prompts=["Paris"],
    ...                         target_patch_prompts=TargetPrompt("cat -> cat\\n?", -1), layers=[3, 5])

Same names, arguments and result shapes as nnterp, computed by uniterp (one
forward per batch, validated values). ``latents`` keep nnterp's layout,
``(n_layers, n_sources, hidden)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import lens as _lens
from .. import patchscope as _patchscope
from .._errors import ShapeError
from ..patchscope import TargetPrompt, it_repeat_prompt
from ._compat import require_model

__all__ = [
    "TargetPrompt",
    "TargetPromptBatch",
    "it_repeat_prompt",
    "logit_lens",
    "patch_object_attn_lens",
    "patchscope_generate",
    "patchscope_lens",
    "repeat_prompt",
]


def logit_lens(
    nn_model: Any,
    prompts: str | Sequence[str],
    remote: bool | str = False,
    return_inv_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Next-token probabilities at the last token of each prompt, read from every layer.

    Example::

        >>> probs = logit_lens(model, ["The capital of France is", "The sun rises in the"])
        >>> probs.shape                                   # (n_prompts, n_layers, vocab)
        >>> probs, inverse = logit_lens(model, prompts, return_inv_logits=True)

    `uniterp.logit_lens` with nnterp's arguments; its ``layers=``, ``top_k=``,
    ``targets=`` and ``positions=`` options are in `uniterp.lens.logit_lens`.
    The inverse lens is ``softmax(-logits)``, which equals nnterp's
    ``softmax(lm_head(-ln_final(h)))`` when the unembedding has no bias.
    """
    model = require_model(nn_model, "logit_lens")
    return _lens.logit_lens(model, prompts, remote=remote, return_inv_logits=return_inv_logits)


def repeat_prompt(
    words: Sequence[str] | None = None,
    rel: str = " ",
    sep: str = "\n",
    placeholder: str = "?",
    index_to_patch: int = -1,
) -> TargetPrompt:
    """The patchscopes identity prompt, patched at ``index_to_patch`` (nnterp's extra argument).

    Example::

        >>> repeat_prompt(words=["car", "cross", "azdrfa"]).prompt
        'car car\\ncross cross\\nazdrfa azdrfa\\n?'
    """
    target = _patchscope.repeat_prompt(words, rel, sep, placeholder)
    return TargetPrompt(target.prompt, index_to_patch)


@dataclass
class TargetPromptBatch(_patchscope.TargetPromptBatch):
    """uniterp's `uniterp.TargetPromptBatch` with nnterp's ``from_prompts``, indexing and iteration.

    Example::

        >>> batch = TargetPromptBatch.from_prompts(["a b ?", "c d ?"], -1)
        >>> batch[0]
        TargetPrompt(prompt='a b ?', index_to_patch=-1)
    """

    @classmethod
    def from_prompts(
        cls, prompts: str | Sequence[str], index_to_patch: int | Sequence[int] | torch.Tensor
    ) -> TargetPromptBatch:
        """Batch prompts with one index for all, or one index each."""
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        indices = torch.as_tensor(index_to_patch, dtype=torch.long).flatten()
        if indices.numel() == 1:
            indices = indices.repeat(len(texts))
        if indices.numel() != len(texts):
            raise ShapeError(f"{indices.numel()} indices to patch for {len(texts)} prompts")
        return cls.from_target_prompts([TargetPrompt(t, int(i)) for t, i in zip(texts, indices)])

    def __getitem__(self, index: int) -> TargetPrompt:
        return TargetPrompt(self.prompts[index], int(self.index_to_patch[index]))

    def __iter__(self) -> Iterator[TargetPrompt]:
        for index in range(len(self)):
            yield self[index]


def patchscope_lens(
    nn_model: Any,
    source_prompts: str | Sequence[str] | None = None,
    target_patch_prompts: Any = None,
    layers: int | Sequence[int] | None = None,
    latents: torch.Tensor | Sequence[torch.Tensor] | None = None,
    remote: bool | str = False,
) -> torch.Tensor:
    """Each source's last-token state at each layer, patched into the target prompt(s).

    Example::

        >>> probs = patchscope_lens(model, source_prompts=["Paris is beautiful", "London is foggy"],
        ...                         target_patch_prompts=repeat_prompt(), layers=[3, 5, 7])
        >>> probs.shape                                   # (n_sources, n_layers, vocab)
        >>> probs = patchscope_lens(model, latents=torch.randn(3, 2, hidden),   # nnterp's layout:
        ...                         target_patch_prompts=repeat_prompt(), layers=[3, 5, 7])

    `uniterp.patchscope_lens` with nnterp's arguments. ``latents`` is
    ``(n_layers, n_sources, hidden)`` as in nnterp (uniterp's own function
    takes ``(n_sources, n_layers, hidden)``); ``latents[j]`` is patched at
    ``layers[j]``.

    Raises:
        ShapeError: ``latents`` is not ``(n_layers, n_sources, hidden)``.
    """
    model = require_model(nn_model, "patchscope_lens")
    states = None
    if latents is not None:
        states = torch.stack(list(latents)) if not isinstance(latents, torch.Tensor) else latents
        if states.ndim != 3:
            raise ShapeError(
                f"patchscope_lens: latents has shape {tuple(states.shape)}; nnterp's layout is "
                "(n_layers, n_sources, hidden)"
            )
        states = states.transpose(0, 1)  # uniterp: (n_sources, n_layers, hidden)
    return _patchscope.patchscope_lens(model, source_prompts, target_patch_prompts, layers, states, remote)


def patchscope_generate(
    nn_model: Any,
    prompts: str | Sequence[str],
    target_patch_prompt: TargetPrompt,
    max_length: int = 50,
    layers: int | Sequence[int] | None = None,
    remote: bool | str = False,
    max_batch_size: int = 32,
) -> dict[int, torch.Tensor]:
    """Generate from the target prompt with each prompt's state patched in: ``{layer: ids}``.

    Example::

        >>> out = patchscope_generate(model, ["Paris"], repeat_prompt(), max_length=5, layers=[2])
        >>> out[2].shape                                  # (n_prompts, target + generated tokens)
    """
    model = require_model(nn_model, "patchscope_generate")
    return _patchscope.patchscope_generate(
        model, prompts, target_patch_prompt, max_length, layers, remote, max_batch_size=max_batch_size
    )


def patch_object_attn_lens(
    nn_model: Any,
    source_prompts: str | Sequence[str],
    target_prompts: str | Sequence[str],
    attn_idx_patch: int,
    num_patches: int = 5,
) -> torch.Tensor:
    """Attention inputs at one target token replaced by the source's, over windows of layers.

    Example::

        >>> probs = patch_object_attn_lens(model, ["Paris"], ["The Eiffel Tower is in"], 2)
        >>> probs.shape                                   # (n_targets, n_layers, vocab)
    """
    model = require_model(nn_model, "patch_object_attn_lens")
    return _patchscope.patch_object_attn_lens(
        model, source_prompts, target_prompts, attn_idx_patch, num_patches
    )
