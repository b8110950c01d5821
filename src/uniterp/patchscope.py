"""Patchscopes: decode a hidden state by patching it into another prompt.

Example::

    >>> from uniterp.patchscope import patchscope_lens, repeat_prompt
    >>> probs = patchscope_lens(model, ["The Eiffel Tower is in the city of"])
    >>> probs.shape                                   # (n_sources, n_layers, vocab)
    torch.Size([1, 12, 50257])

The source prompts' last-token states are read at every layer in one forward;
then every (source, layer) pair becomes one row of a single batched forward of
the target prompt, in which the row's own layer is patched. When all rows patch
the same number of tokens from the end of their target (the usual case), the
target tokens before the patched one are run once and their key/value cache is
shared by every row, so a row costs only the tokens from the patched one on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from ._errors import InputError
from ._patching import _check_latents, _Patch, _patched_probs, _target_tokens
from ._tooling import as_layer_list, as_prompt_list, last_token_states, use_remote

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = [
    "TargetPrompt",
    "TargetPromptBatch",
    "it_repeat_prompt",
    "patch_object_attn_lens",
    "patchscope_generate",
    "patchscope_lens",
    "repeat_prompt",
]

logger = logging.getLogger("uniterp")

_DEFAULT_WORDS = ("king", "1135", "hello")


@dataclass(frozen=True)
class TargetPrompt:
    """A prompt and the token position a hidden state is patched into.

    Example::

        >>> TargetPrompt("cat -> cat\\n1135 -> 1135\\nhello -> hello\\n?", -1)

    Attributes:
        prompt: The target prompt.
        index_to_patch: Token position in the prompt: negative counts from the
            end (``-1`` is the last token), non-negative from the first token.
    """

    prompt: str
    index_to_patch: int = -1


@dataclass
class TargetPromptBatch:
    """Several target prompts: ``prompts`` and ``index_to_patch``, a ``(batch,)`` long tensor.

    Example::

        >>> batch = TargetPromptBatch.from_target_prompt(repeat_prompt(), 4)
        >>> len(batch), batch.index_to_patch
        (4, tensor([-1, -1, -1, -1]))
    """

    prompts: list[str]
    index_to_patch: torch.Tensor

    @classmethod
    def from_target_prompts(cls, prompts: Sequence[TargetPrompt]) -> TargetPromptBatch:
        """Batch a list of `TargetPrompt`.

        Example::

            >>> TargetPromptBatch.from_target_prompts([repeat_prompt(), TargetPrompt("a b c", 1)])
        """
        items = list(prompts)
        if not items:
            raise InputError("TargetPromptBatch: the list of target prompts is empty")
        for i, item in enumerate(items):
            if not isinstance(item, TargetPrompt):
                raise InputError(f"target prompt {i} is a {type(item).__name__}, expected a TargetPrompt")
        return cls(
            [p.prompt for p in items], torch.tensor([p.index_to_patch for p in items], dtype=torch.long)
        )

    @classmethod
    def from_target_prompt(cls, prompt: TargetPrompt, batch_size: int) -> TargetPromptBatch:
        """``prompt`` repeated ``batch_size`` times.

        Example::

            >>> TargetPromptBatch.from_target_prompt(repeat_prompt(), 8).prompts[7]
        """
        return cls.from_target_prompts([prompt] * batch_size)

    @classmethod
    def auto(cls, target: Any, batch_size: int) -> TargetPromptBatch:
        """A batch of ``batch_size`` from a `TargetPrompt`, a list of them, a batch or a string.

        A single prompt (or a list or batch of one) is repeated; otherwise its
        length must be ``batch_size``.

        Example::

            >>> len(TargetPromptBatch.auto(repeat_prompt(), 3))
            3
        """
        if isinstance(target, str):
            target = TargetPrompt(target, -1)
        if isinstance(target, TargetPrompt):
            return cls.from_target_prompt(target, batch_size)
        batch = target if isinstance(target, TargetPromptBatch) else cls.from_target_prompts(target)
        if len(batch) == 1 and batch_size != 1:
            return cls(batch.prompts * batch_size, batch.index_to_patch.repeat(batch_size))
        if len(batch) != batch_size:
            raise InputError(
                f"got {len(batch)} target prompts for {batch_size} sources; pass one, or one per source"
            )
        return batch

    def __len__(self) -> int:
        return len(self.prompts)


def repeat_prompt(
    words: Sequence[str] | None = None,
    rel: str = " ",
    sep: str = "\n",
    placeholder: str = "?",
) -> TargetPrompt:
    """The patchscopes identity prompt: a few words each followed by itself, then a placeholder.

    Example::

        >>> repeat_prompt()
        TargetPrompt(prompt='king king\\n1135 1135\\nhello hello\\n?', index_to_patch=-1)
        >>> repeat_prompt(["cat", "1135", "hello"], rel=" -> ").prompt   # the paper's prompt
        'cat -> cat\\n1135 -> 1135\\nhello -> hello\\n?'

    The prompt is ``sep.join(w + rel + w for w in words) + sep + placeholder``,
    patched at its last token (the placeholder's last token): the examples
    prime the model to repeat whatever that token's hidden state stands for.
    The defaults are nnterp's, so results match it.

    Args:
        words: The example words; default ``("king", "1135", "hello")``.
        rel: Between a word and its repetition.
        sep: Between the examples (and before the placeholder).
        placeholder: The text whose last token is patched.

    Returns:
        A `TargetPrompt` with ``index_to_patch=-1``.
    """
    items = list(_DEFAULT_WORDS if words is None else words)
    if not placeholder:
        raise InputError("repeat_prompt: the placeholder must be a non-empty string")
    return TargetPrompt(sep.join(w + rel + w for w in items) + sep + placeholder, -1)


_SYSTEM_TEXT = "You are a helpful assistant that repeats words exactly."
_INSTRUCTION_TEXT = "Each line repeats a word. Continue the pattern and complete the last line."
_NO_INSTRUCTION_TEXT = "Continue."


def it_repeat_prompt(
    tokenizer: Any,
    words: Sequence[str] | None = None,
    rel: str = " ",
    sep: str = "\n",
    placeholder: str = "?",
    complete_prompt: bool = True,
    add_user_instr: bool = True,
    use_system_prompt: bool = True,
) -> TargetPrompt:
    """`repeat_prompt` inside the tokenizer's chat template, for instruction-tuned models.

    Example::

        >>> target = it_repeat_prompt(model.tokenizer)
        >>> target.prompt.endswith("hello hello\\n?"), target.index_to_patch
        (True, -1)

    The conversation is: an optional system turn, a user turn, then the
    assistant's answer. With ``complete_prompt`` the answer *starts with* the
    repeat prompt and stays open, so the text ends with the placeholder (the
    patched token); otherwise the repeat prompt ends the user turn and the
    text ends with the template's generation prompt, whose last token is
    patched. A leading BOS written by the template is dropped when the
    tokenizer adds one itself, so it is not doubled.

    Args:
        tokenizer: The model's tokenizer; it needs a chat template.
        words: As in `repeat_prompt`.
        rel: As in `repeat_prompt`.
        sep: As in `repeat_prompt`.
        placeholder: As in `repeat_prompt`.
        complete_prompt: Put the repeat prompt at the start of the answer.
        add_user_instr: The user turn explains the task; otherwise it only
            says "Continue." (or holds the repeat prompt).
        use_system_prompt: Add a short system turn (turn it off for templates
            that refuse a system role).

    Returns:
        A `TargetPrompt` patched at its last token (``index_to_patch=-1``).

    Raises:
        InputError: The tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"it_repeat_prompt: the tokenizer ({type(tokenizer).__name__}) has no chat template; "
            "use repeat_prompt() for base models, or set tokenizer.chat_template"
        )
    body = repeat_prompt(words, rel, sep, placeholder).prompt
    chat: list[dict[str, str]] = []
    if use_system_prompt:
        chat.append({"role": "system", "content": _SYSTEM_TEXT})
    user = _INSTRUCTION_TEXT if add_user_instr else _NO_INSTRUCTION_TEXT
    if not complete_prompt:
        user = f"{_INSTRUCTION_TEXT}\n\n{body}" if add_user_instr else body
    chat.append({"role": "user", "content": user})
    if complete_prompt:
        chat.append({"role": "assistant", "content": body})
        text = tokenizer.apply_chat_template(chat, tokenize=False, continue_final_message=True)
    else:
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        probe = tokenizer("a")["input_ids"]
        if probe and probe[0] == tokenizer.bos_token_id:
            text = text[len(bos) :]
    return TargetPrompt(text, -1)


# -- the tools -----------------------------------------------------------------------


def patchscope_lens(
    model: StandardizedTransformer,
    source_prompts: str | Sequence[str] | None = None,
    target_patch_prompts: TargetPrompt | Sequence[TargetPrompt] | TargetPromptBatch | None = None,
    layers: int | Sequence[int] | None = None,
    latents: torch.Tensor | None = None,
    remote: bool | str = False,
    *,
    max_batch_size: int = 64,
    prefix_cache: bool = True,
) -> torch.Tensor:
    """Decode each source's last-token state at each layer through a target prompt.

    Example::

        >>> probs = patchscope_lens(model, ["Paris", "The Eiffel Tower"])   # (2, n_layers, vocab)
        >>> probs = patchscope_lens(model, "Paris", repeat_prompt(["cat", "dog"], rel=" -> "),
        ...                         layers=[3, 6])                          # (1, 2, vocab)
        >>> probs = patchscope_lens(model, latents=h)   # h: (n_layers, hidden) or (n, n_layers, hidden)

    For source ``s`` and layer ``l``: ``layers_output[l]`` at the source's last
    token replaces ``layers_output[l]`` of the target prompt at
    ``index_to_patch`` (same layer), and the target's next-token
    probabilities are read. All sources are read in one forward; all
    (source, layer) pairs then run as rows of one batched forward (split into
    chunks of ``max_batch_size`` rows), each row patching only its own layer.

    Args:
        model: The standardized model.
        source_prompts: Prompts whose last-token states are decoded.
        target_patch_prompts: A `TargetPrompt` (used for every source), one
            per source, or a `TargetPromptBatch`; default `repeat_prompt()`.
        layers: Layers to read and patch, in the order wanted; default: all.
        latents: Instead of ``source_prompts``: ``(n_sources, n_layers, hidden)``
            states (``(n_layers, hidden)`` for one source), ``latents[:, j]``
            patched at ``layers[j]``.
        remote: Passed to ``model.trace`` (``"local"``: nnsight's offline
            serialisation check). Remote runs patch full target prompts (the
            shared prefix cache would have to travel between requests).
        max_batch_size: Rows per forward.
        prefix_cache: Run the target tokens before the patched one once and
            share their key/value cache across rows (exact up to float
            rounding); ``False`` runs every row in full.

    Returns:
        ``(n_sources, n_layers, vocab)`` float32 probabilities on the CPU.

    Raises:
        InputError: Neither or both of ``source_prompts`` and ``latents``, no
            prompts, a target count that is neither one nor one per source,
            or ``index_to_patch`` outside a target prompt.
        ShapeError: ``latents`` of the wrong shape.
        LayerIndexError: A layer index out of range.
    """
    if (source_prompts is None) == (latents is None):
        raise InputError("patchscope_lens: pass exactly one of source_prompts or latents")
    layer_list = as_layer_list(model, layers, "patchscope_lens layers")
    use_remote(remote)
    if latents is None:
        sources = as_prompt_list(source_prompts, "source_prompts")
        states = last_token_states(model, sources, layer_list, "layers_output", remote)
    else:
        states = _check_latents(model, latents, len(layer_list))
    n_sources, n_layers = states.shape[0], len(layer_list)
    batch = TargetPromptBatch.auto(
        repeat_prompt() if target_patch_prompts is None else target_patch_prompts, n_sources
    )
    targets, patch_pos, target_of_source = _target_tokens(model, batch)
    # row r = s * n_layers + j: source s patched at layers[j]
    row_target = torch.tensor(target_of_source, dtype=torch.long).repeat_interleave(n_layers)
    patches = []
    for j, layer in enumerate(layer_list):
        rows = torch.arange(n_sources) * n_layers + j
        patches.append(_Patch(layer, rows, states[:, j]))
    probs = _patched_probs(
        model, targets, patch_pos, row_target, patches, "layers_output", remote, max_batch_size, prefix_cache
    )
    return probs.view(n_sources, n_layers, -1)


def patchscope_generate(
    model: StandardizedTransformer,
    prompts: str | Sequence[str],
    target_patch_prompt: TargetPrompt,
    max_length: int = 50,
    layers: int | Sequence[int] | None = None,
    remote: bool | str = False,
    *,
    max_batch_size: int = 32,
    **generate_kwargs: Any,
) -> dict[int, torch.Tensor]:
    """Generate from the target prompt with each prompt's state patched in, per layer.

    Example::

        >>> out = patchscope_generate(model, ["Paris"], repeat_prompt(), max_length=5, layers=[7, 2])
        >>> list(out)                                    # {layer: (n_prompts, seq)}
        [7, 2]
        >>> model.tokenizer.batch_decode(out[7][:, -5:])  # the 5 generated tokens

    For each layer ``l``: the prompt's last-token ``layers_output[l]`` replaces
    the target's ``layers_output[l]`` at ``index_to_patch`` on the first
    generation step (the prompt pass; later steps see it through the cache),
    then up to ``max_length`` new tokens are generated. All (prompt, layer)
    pairs run as rows of one batched ``model.generate`` per chunk of about
    ``max_batch_size`` rows.

    Args:
        model: The standardized model.
        prompts: Prompts whose last-token states are decoded.
        target_patch_prompt: The `TargetPrompt` generated from.
        max_length: Maximum number of new tokens (``max_new_tokens``).
        layers: Layers to patch (any order); default: all.
        remote: Passed to ``model.generate``.
        max_batch_size: Rows per ``generate`` call.
        **generate_kwargs: Passed to ``generate`` (e.g. ``do_sample=False``).

    Returns:
        ``{layer: ids}``, ``ids`` a ``(n_prompts, seq)`` long tensor on the CPU
        holding the target prompt followed by the generated tokens (rows that
        stop early are padded with the pad token).

    Raises:
        InputError: No prompts, ``index_to_patch`` outside the target prompt,
            or ``max_length < 1``.
        LayerIndexError: A layer index out of range.
    """
    sources = as_prompt_list(prompts, "prompts")
    layer_list = list(dict.fromkeys(as_layer_list(model, layers, "patchscope_generate layers")))
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise InputError(f"patchscope_generate: max_length must be a positive int; got {max_length!r}")
    if max_batch_size < 1:
        raise InputError(f"max_batch_size must be at least 1; got {max_batch_size}")
    use_remote(remote)
    target = TargetPromptBatch.auto(target_patch_prompt, 1)
    targets, patch_pos, _ = _target_tokens(model, target)
    ids, pos = targets[0], patch_pos[0]
    states = last_token_states(model, sources, layer_list, "layers_output", remote)
    n = len(sources)
    pad = model.tokenizer.pad_token_id
    pad = pad if pad is not None else (model.tokenizer.eos_token_id or 0)
    pieces: dict[int, list[torch.Tensor]] = {layer: [] for layer in layer_list}
    # rows (layer j, prompt s), layer-major; a chunk holds whole layers where they fit
    row_layer = torch.arange(len(layer_list)).repeat_interleave(n)
    row_source = torch.arange(n).repeat(len(layer_list))
    step = (max_batch_size // n) * n if n <= max_batch_size else max_batch_size
    with torch.no_grad():
        for start in range(0, len(row_layer), step):
            stop = min(start + step, len(row_layer))
            plan = []
            for j in sorted(set(row_layer[start:stop].tolist()), key=lambda j: layer_list[j]):
                rows = torch.nonzero(row_layer[start:stop] == j).flatten()
                plan.append(_Patch(layer_list[j], rows, states[row_source[start:stop][rows], j]))
            encoding = {
                "input_ids": torch.tensor([ids] * (stop - start), dtype=torch.long),
                "attention_mask": torch.ones((stop - start, len(ids)), dtype=torch.long),
            }
            with model.generate(
                encoding, max_new_tokens=max_length, remote=remote, **generate_kwargs
            ) as tracer:
                for patch in plan:
                    hidden = model.layers_output[patch.layer].clone()
                    hidden[patch.rows.to(hidden.device), pos] = patch.latents.to(hidden.device, hidden.dtype)
                    model.layers_output[patch.layer] = hidden
                generated = tracer.result.cpu().save()
            for patch in plan:
                pieces[patch.layer].append(generated[patch.rows])
    return {layer: _cat_right_padded(parts, pad) for layer, parts in pieces.items()}


def _cat_right_padded(parts: list[torch.Tensor], pad: int) -> torch.Tensor:
    width = max(part.shape[1] for part in parts)
    padded = [torch.nn.functional.pad(part, (0, width - part.shape[1]), value=pad) for part in parts]
    return torch.cat(padded, dim=0)


def patch_object_attn_lens(
    model: StandardizedTransformer,
    source_prompts: str | Sequence[str],
    target_prompts: str | Sequence[str],
    attn_idx_patch: int,
    num_patches: int = 5,
    *,
    site: Literal["attentions_input", "attentions_output"] = "attentions_input",
    remote: bool | str = False,
    max_batch_size: int = 64,
    prefix_cache: bool = True,
) -> torch.Tensor:
    """Make the attention see each source's last token in place of one target token, over a window of layers.

    Example::

        >>> probs = patch_object_attn_lens(model, ["Paris"], ["The Eiffel Tower is in the city of"],
        ...                                attn_idx_patch=2, num_patches=3)
        >>> probs.shape                                  # (n_targets, n_layers, vocab)

    For each start layer ``l`` (every layer of the model): in layers ``l`` to
    ``min(l + num_patches, n_layers) - 1``, the value ``site`` of the target at
    token ``attn_idx_patch`` is replaced by the source's value at its last
    token, same layer; the result is the target's next-token probabilities.
    With the default ``site="attentions_input"`` (nnterp's choice) the
    attention's normed input is patched, so the keys and values the later
    tokens attend to at that position come from the source, while the
    residual stream and the MLP at that position keep the target's own
    token. ``site="attentions_output"`` patches the attention's contribution
    at that position instead. All ``(target, start layer)`` pairs run as rows
    of one batched forward (chunks of ``max_batch_size`` rows).

    Args:
        model: The standardized model.
        source_prompts: One source prompt, or one per target.
        target_prompts: The prompts whose next token is predicted.
        attn_idx_patch: Token position in each target (negative from the end,
            non-negative from the first token).
        num_patches: How many consecutive layers each row patches.
        site: ``"attentions_input"`` or ``"attentions_output"``.
        remote: Passed to ``model.trace``.
        max_batch_size: Rows per forward.
        prefix_cache: Share the targets' tokens before the patched one across
            rows through the key/value cache (see `patchscope_lens`).

    Returns:
        ``(n_targets, n_layers, vocab)`` float32 probabilities on the CPU.

    Raises:
        InputError: No prompts, a source count that is neither one nor one per
            target, ``attn_idx_patch`` outside a target, ``num_patches < 1`` or
            an unknown ``site``.
    """
    if site not in ("attentions_input", "attentions_output"):
        raise InputError(
            f"patch_object_attn_lens: site must be 'attentions_input' or 'attentions_output'; got {site!r}"
        )
    if isinstance(num_patches, bool) or not isinstance(num_patches, int) or num_patches < 1:
        raise InputError(f"patch_object_attn_lens: num_patches must be a positive int; got {num_patches!r}")
    if isinstance(attn_idx_patch, bool) or not isinstance(attn_idx_patch, int):
        raise InputError(f"patch_object_attn_lens: attn_idx_patch must be an int; got {attn_idx_patch!r}")
    sources = as_prompt_list(source_prompts, "source_prompts")
    target_list = as_prompt_list(target_prompts, "target_prompts")
    if len(sources) not in (1, len(target_list)):
        raise InputError(
            f"patch_object_attn_lens: got {len(sources)} source prompts for {len(target_list)} targets; "
            "pass one, or one per target"
        )
    use_remote(remote)
    n_layers, n_targets = model.num_layers, len(target_list)
    batch = TargetPromptBatch(target_list, torch.full((n_targets,), attn_idx_patch, dtype=torch.long))
    targets, patch_pos, target_index = _target_tokens(model, batch)
    states = last_token_states(model, sources, list(range(n_layers)), site, remote)
    source_of = torch.arange(n_targets) if len(sources) > 1 else torch.zeros(n_targets, dtype=torch.long)
    # row r = t * n_layers + l: target t, window starting at layer l
    row_target = torch.tensor(target_index, dtype=torch.long).repeat_interleave(n_layers)
    row_start = torch.arange(n_layers).repeat(n_targets)
    row_source = source_of.repeat_interleave(n_layers)
    patches = []
    for layer in range(n_layers):
        rows = torch.nonzero((row_start <= layer) & (row_start > layer - num_patches)).flatten()
        patches.append(_Patch(layer, rows, states[row_source[rows].to(states.device), layer]))
    probs = _patched_probs(
        model, targets, patch_pos, row_target, patches, site, remote, max_batch_size, prefix_cache
    )
    return probs.view(n_targets, n_layers, -1)
