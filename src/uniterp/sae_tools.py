"""Research tools on attached SAEs: top-activating latents, latent steering, attribution to the logits.

Example::

    >>> from uniterp.sae import load_sae
    >>> from uniterp.sae_tools import top_latents, steer_latents, latent_attribution
    >>> sae = load_sae("saes/blocks.3.hook_resid_post")
    >>> top = top_latents(model, sae, ["The Eiffel Tower is in Paris"], k=5)
    >>> top.to_dataframe().head()                  # prompt, position, token, rank, latent, activation
    >>> with steer_latents(model, sae, [1234], [8.0], mode="clamp"):
    ...     ids = model.generate("I think that", max_new_tokens=10)
    >>> attr = latent_attribution(model, sae, ["The capital of France is"], target=" Paris")
    >>> attr.top(5)                                # latents that push " Paris" up the most

Each tool takes an SAE (attached for the call when it is not attached already,
without the check) or the name of an attached one. The model needs the
`SAEAttachment` methods (``model.attach``); every tool also works on a model
without them through the functions of ``uniterp._sae_attach``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from ._errors import InputError
from ._nnsight_compat import in_trace
from ._sae_attach import (
    Attachment,
    LatentEdit,
    SAEAttachment,
    SAELatents,
    attach_sae,
    attachment,
    detach_sae,
    registry,
)
from ._sae_check import AttachReport
from ._tooling import as_prompt_list

if TYPE_CHECKING:
    import pandas

    from ._model import StandardizedTransformer
    from .sae import SparseAutoencoder

__all__ = [
    "AttachReport",
    "Attachment",
    "LatentAttribution",
    "SAEAttachment",
    "SAELatents",
    "TopLatents",
    "attach_sae",
    "detach_sae",
    "generate_with_latent_steering",
    "latent_attribution",
    "steer_latents",
    "top_latents",
]

# nnsight warns when a bounded generation loop asks for a step the run never made.
_CUT_SHORT = r".*was never reached: the loop asked for a step the run did not make"


@contextmanager
def _using(model: Any, sae: Any) -> Iterator[Attachment]:
    """The attachment of ``sae`` (an SAE or a name), attaching it without the check for the block if needed."""
    if isinstance(sae, str):
        yield attachment(model, sae)
        return
    found = next((a for a in registry(model).attachments.values() if a.sae is sae), None)
    if found is not None:
        yield found
        return
    taken = registry(model).attachments
    name = sae.hook_name if getattr(sae, "hook_name", None) and sae.hook_name not in taken else None
    name = name or f"sae_{id(sae):x}"
    attach_sae(model, sae, name=name, check=False)
    try:
        yield attachment(model, name)
    finally:
        detach_sae(model, name)


def _row_tokens(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> list[list[str]]:
    tokens: list[list[str]] = []
    for row, keep in zip(ids.tolist(), mask.bool().tolist(), strict=True):
        tokens.append(model.tokenizer.convert_ids_to_tokens([t for t, k in zip(row, keep, strict=True) if k]))
    return tokens


# -- top-activating latents ------------------------------------------------------------------


@dataclass(frozen=True)
class TopLatents:
    """The most active latents of an SAE, per token and per prompt.

    Example::

        >>> top = top_latents(model, sae, ["The Eiffel Tower"], k=3)
        >>> top.indices.shape, top.prompt_indices.shape       # (1, seq, 3), (1, 3)
        >>> top.to_dataframe()

    Attributes:
        prompts: The prompts.
        tokens: Each prompt's tokens (padding left out).
        values: ``(n_prompts, seq, k)`` activations of the top latents at each column
            of the left-padded batch (float32, CPU).
        indices: ``(n_prompts, seq, k)`` their latent indices.
        mask: ``(n_prompts, seq)`` True where a column holds a token (not padding).
        prompt_values: ``(n_prompts, k)`` each latent's largest activation over the
            prompt's tokens, for the ``k`` latents largest there.
        prompt_indices: ``(n_prompts, k)`` their indices.
    """

    prompts: list[str]
    tokens: list[list[str]]
    values: torch.Tensor
    indices: torch.Tensor
    mask: torch.Tensor
    prompt_values: torch.Tensor
    prompt_indices: torch.Tensor

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per (prompt, token, rank): ``prompt_index``, ``prompt``, ``position`` (within the
        prompt), ``token``, ``rank``, ``latent``, ``activation``. Needs pandas."""
        import pandas as pd

        rows: list[dict[str, Any]] = []
        for p, prompt in enumerate(self.prompts):
            columns = torch.nonzero(self.mask[p]).flatten().tolist()
            for position, column in enumerate(columns):
                for rank in range(self.indices.shape[-1]):
                    rows.append(
                        {
                            "prompt_index": p,
                            "prompt": prompt,
                            "position": position,
                            "token": self.tokens[p][position],
                            "rank": rank,
                            "latent": int(self.indices[p, column, rank]),
                            "activation": float(self.values[p, column, rank]),
                        }
                    )
        return pd.DataFrame(rows)


def top_latents(
    model: StandardizedTransformer,
    sae: SparseAutoencoder | str,
    prompts: str | Sequence[str],
    k: int = 10,
) -> TopLatents:
    """The ``k`` most active latents of ``sae`` at every token of ``prompts``, and per prompt.

    Example::

        >>> top = top_latents(model, sae, ["The Eiffel Tower is in Paris"], k=5)
        >>> top.prompt_indices[0]                  # the 5 latents most active anywhere in the prompt
        >>> top.to_dataframe().query("position == 3")

    One forward pass under ``torch.no_grad()`` (left-padded), stopped right after
    the SAE's site. The latents are those the attached SAE computes at its site
    (upstream SAEs and their edits included).

    Args:
        model: The model.
        sae: An SAE (attached for the call if it is not attached) or an attached SAE's name.
        prompts: One prompt or several.
        k: Latents to keep per token (``1 <= k <= d_sae``).

    Returns:
        A `TopLatents`.

    Raises:
        InputError: No prompts, ``k`` out of range, an unknown name.
    """
    texts = as_prompt_list(prompts)
    with _using(model, sae) as item:
        d_sae = item.sae.d_sae
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
            raise InputError(f"k must be an int in [1, d_sae={d_sae}]; got {k!r}")
        view = SAELatents(model)
        with torch.no_grad():
            with model.trace(texts) as tracer:
                ids = model.input_ids.save()
                mask = model.attention_mask.save()
                latents = view[item.name]
                top = latents.topk(k, dim=-1)
                values = top.values.float().cpu().save()
                indices = top.indices.cpu().save()
                padded = ~mask.bool()[..., None].to(latents.device)
                peak = latents.float().masked_fill(padded, float("-inf")).amax(dim=1).topk(k, dim=-1)
                prompt_values = peak.values.cpu().save()
                prompt_indices = peak.indices.cpu().save()
                tracer.stop()
    mask = mask.bool().cpu()
    return TopLatents(
        prompts=texts,
        tokens=_row_tokens(model, ids.cpu(), mask),
        values=values,
        indices=indices,
        mask=mask,
        prompt_values=prompt_values,
        prompt_indices=prompt_indices,
    )


# -- steering ---------------------------------------------------------------------------------


def _edit(
    sae: SparseAutoencoder,
    latents: int | Sequence[int],
    values: float | Sequence[float],
    mode: str,
    positions: int | Sequence[int] | None,
) -> LatentEdit:
    if mode not in ("add", "clamp"):
        raise InputError(f"mode must be 'add' or 'clamp'; got {mode!r}")
    indices = [latents] if isinstance(latents, int) else list(latents)
    if not indices or any(isinstance(i, bool) or not isinstance(i, int) for i in indices):
        raise InputError(f"latents must be an int or a non-empty list of ints; got {latents!r}")
    bad = [i for i in indices if not 0 <= i < sae.d_sae]
    if bad:
        raise InputError(f"latent indices {bad} are out of range for an SAE with d_sae={sae.d_sae}")
    amounts = [values] * len(indices) if isinstance(values, (int, float)) else list(values)
    if len(amounts) != len(indices) or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) for v in amounts
    ):
        raise InputError(f"values must be a number or one number per latent ({len(indices)}); got {values!r}")
    cols: tuple[int, ...] | None = None
    if positions is not None:
        listed = [positions] if isinstance(positions, int) else list(positions)
        if not listed or any(isinstance(p, bool) or not isinstance(p, int) for p in listed):
            raise InputError(f"positions must be an int or a non-empty list of ints; got {positions!r}")
        cols = tuple(listed)
    return LatentEdit(
        indices=torch.as_tensor(indices, dtype=torch.long),
        values=torch.as_tensor(amounts, dtype=torch.float32),
        mode=mode,  # type: ignore[arg-type]
        positions=cols,
    )


@contextmanager
def steer_latents(
    model: StandardizedTransformer,
    sae: SparseAutoencoder | str,
    latents: int | Sequence[int],
    values: float | Sequence[float],
    *,
    mode: Literal["add", "clamp"] = "add",
    positions: int | Sequence[int] | None = None,
) -> Iterator[None]:
    """Steer with SAE latents in every forward pass (traces, generation) inside the ``with`` block.

    Example::

        >>> with steer_latents(model, sae, [1234], 8.0):                   # add 8 * W_dec[1234]
        ...     with model.trace("I think that"):
        ...         probs = model.next_token_probs.save()
        >>> with steer_latents(model, sae, [1234, 99], [0.0, 5.0], mode="clamp", positions=[-1]):
        ...     ids = model.generate("I think that", max_new_tokens=10)

    - ``mode="add"``: adds ``sum_j values[j] * W_dec[latents[j]]`` to the value at the
      SAE's site (a transcoder's output site), after the splice; the SAE's own
      reconstruction is not involved, so this is plain steering along decoder rows.
    - ``mode="clamp"``: sets the latents to ``values`` and writes the change in the
      SAE's reconstruction into the model (reconstruction plus error term), exactly
      as editing ``model.sae_latents`` would.

    Positions are columns of each forward pass's tokens (negative from the end, so
    ``-1`` is every prompt's last token in a left-padded batch); during generation
    each step after the first sees only its new token, where only ``-1`` (and
    ``None``, all) applies. Edits made in a trace to ``model.sae_latents`` come
    before a clamp.

    Args:
        model: The model.
        sae: An SAE (attached for the block if it is not) or an attached SAE's name.
        latents: Latent index or indices.
        values: One number for all, or one per latent.
        mode: ``"add"`` or ``"clamp"``.
        positions: Token columns to steer (default: all).

    Raises:
        InputError: A bad index, value, mode or position, or used inside a trace.
    """
    if in_trace():
        raise InputError(
            "steer_latents is a context manager around a trace or a generation; inside a trace edit "
            "model.sae_latents[name] directly"
        )
    with _using(model, sae) as item:
        edit = _edit(item.sae, latents, values, mode, positions)
        item.edits.append(edit)
        try:
            yield
        finally:
            item.edits.remove(edit)


def generate_with_latent_steering(
    model: StandardizedTransformer,
    prompt: str | Sequence[str],
    sae: SparseAutoencoder | str,
    latents: int | Sequence[int],
    values: float | Sequence[float],
    *,
    mode: Literal["add", "clamp"] = "add",
    positions: int | Sequence[int] | None = None,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """Generate with SAE-latent steering at every step (see `steer_latents`).

    Example::

        >>> ids = generate_with_latent_steering(model, "I think that", sae, [1234], 8.0, max_new_tokens=10)
        >>> model.tokenizer.batch_decode(ids)

    Args:
        model: The model.
        prompt: One prompt or several (left-padded into one batch).
        sae: An SAE or an attached SAE's name.
        latents: Latent index or indices.
        values: One number for all, or one per latent.
        mode: ``"add"`` or ``"clamp"``.
        positions: Token columns to steer (default: all).
        max_new_tokens: Tokens to generate.
        do_sample: Sample instead of greedy decoding.
        **generate_kwargs: Passed to HF ``generate``.

    Returns:
        ``(batch, seq)`` token ids on CPU: the (padded) prompt and the generated tokens.
    """
    texts = as_prompt_list(prompt, "prompt")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    with steer_latents(model, sae, latents, values, mode=mode, positions=positions):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_CUT_SHORT)
            with model.generate(
                max_new_tokens=max_new_tokens, do_sample=do_sample, **generate_kwargs
            ) as tracer:
                with tracer.invoke(texts):
                    pass
                with tracer.invoke():
                    ids = tracer.result.cpu().save()
    return ids


# -- attribution to the logits ---------------------------------------------------------------


@dataclass(frozen=True)
class LatentAttribution:
    """Gradient x activation of each latent for a metric of the logits.

    ``scores[b, t, j] = latents[b, t, j] * d metric / d latents[b, t, j]``: the
    first-order estimate of how much the metric drops when latent ``j`` at token
    ``t`` is set to zero.

    Attributes:
        prompts: The prompts.
        tokens: Each prompt's tokens (padding left out).
        targets: The target token of each prompt (``None`` with a custom metric).
        metric: The metric's value.
        latents: ``(n_prompts, seq, d_sae)`` the latents (float32, CPU).
        gradients: ``(n_prompts, seq, d_sae)`` the metric's gradient with respect to them.
        scores: ``(n_prompts, seq, d_sae)`` ``latents * gradients``.
        mask: ``(n_prompts, seq)`` True where a column holds a token.
    """

    prompts: list[str]
    tokens: list[list[str]]
    targets: list[int] | None
    metric: float
    latents: torch.Tensor
    gradients: torch.Tensor
    scores: torch.Tensor
    mask: torch.Tensor

    def top(self, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """Per prompt, the ``k`` latents with the largest attribution summed over its tokens.

        Returns:
            ``(values, indices)``, each ``(n_prompts, k)``.
        """
        total = (self.scores * self.mask[..., None]).sum(dim=1)
        top = total.topk(k, dim=-1)
        return top.values, top.indices

    def to_dataframe(self, k: int = 10) -> pandas.DataFrame:
        """The ``k`` top latents of each prompt: ``prompt_index``, ``prompt``, ``rank``, ``latent``,
        ``attribution``. Needs pandas."""
        import pandas as pd

        values, indices = self.top(k)
        rows = [
            {
                "prompt_index": p,
                "prompt": prompt,
                "rank": r,
                "latent": int(indices[p, r]),
                "attribution": float(values[p, r]),
            }
            for p, prompt in enumerate(self.prompts)
            for r in range(indices.shape[1])
        ]
        return pd.DataFrame(rows)


def _gradient(output: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    """``d output / d wrt`` by plain autograd (``output`` a scalar)."""
    if not output.requires_grad or not wrt.requires_grad:
        raise InputError(
            "the metric does not depend on the latents through autograd; compute it from the logits with "
            "differentiable torch operations"
        )
    (grad,) = torch.autograd.grad(output, wrt, allow_unused=True)
    return torch.zeros_like(wrt) if grad is None else grad


def _target_ids(model: Any, target: Any, n: int) -> list[int] | None:
    if target is None:
        return None
    listed = target if isinstance(target, (list, tuple)) else [target] * n
    if len(listed) != n:
        raise InputError(f"target has {len(listed)} entries for {n} prompts")
    ids: list[int] = []
    for t in listed:
        if isinstance(t, str):
            encoded = model.tokenizer(t, add_special_tokens=False)["input_ids"]
            if not encoded:
                raise InputError(f"the target {t!r} tokenizes to no tokens")
            ids.append(int(encoded[0]))
        elif isinstance(t, int) and not isinstance(t, bool) and 0 <= t < model.vocab_size:
            ids.append(t)
        else:
            raise InputError(f"a target is a token id in [0, {model.vocab_size}) or a string; got {t!r}")
    return ids


def latent_attribution(
    model: StandardizedTransformer,
    sae: SparseAutoencoder | str,
    prompts: str | Sequence[str],
    target: int | str | Sequence[int | str] | None = None,
    *,
    metric: Callable[[torch.Tensor], torch.Tensor] | None = None,
    position: int = -1,
) -> LatentAttribution:
    """Attribution of a logit (or any metric of the logits) to the latents of ``sae``.

    Example::

        >>> attr = latent_attribution(model, sae, ["The capital of France is"], target=" Paris")
        >>> values, latents = attr.top(5)
        >>> diff = lambda logits: (logits[:, -1, paris] - logits[:, -1, rome]).sum()
        >>> attr = latent_attribution(model, sae, prompts, metric=diff)

    One forward pass with gradients (left-padded) and one backward pass by torch
    autograd. The default metric is the sum over prompts of the logit of each
    prompt's target token at ``position`` (``target=None``: the token the model
    predicts there). The SAE's splice keeps the latents in the graph, so the
    gradient is that of the model with the SAE inside (its error term included).

    Args:
        model: The model.
        sae: An SAE (attached for the call if it is not) or an attached SAE's name.
        prompts: One prompt or several.
        target: A token id or string (its first token) for every prompt, or one per prompt.
        metric: A function of the logits ``(batch, seq, vocab)`` returning a scalar;
            replaces the default metric.
        position: The column of the logits the default metric reads (``-1``: each
            prompt's last token).

    Returns:
        A `LatentAttribution`.
    """
    texts = as_prompt_list(prompts)
    targets = _target_ids(model, target, len(texts))
    with _using(model, sae) as item:
        view = SAELatents(model)
        item.track_grad = True
        try:
            with torch.enable_grad():
                with model.trace(texts):
                    ids = model.input_ids.save()
                    mask = model.attention_mask.save()
                    latents = view[item.name].save()
                    logits = model.logits.save()
                if metric is None:
                    column = logits[:, position, :]
                    if targets is None:
                        targets = column.argmax(dim=-1).tolist()
                    chosen = torch.as_tensor(targets, device=column.device)
                    value = column.gather(-1, chosen[:, None]).sum()
                else:
                    value = metric(logits)
                    if not isinstance(value, torch.Tensor) or value.numel() != 1:
                        raise InputError("metric must return a scalar tensor computed from the logits")
                    value = value.reshape(())
                grads = _gradient(value, latents)
        finally:
            item.track_grad = False
    mask = mask.bool().cpu()
    lat = latents.detach().float().cpu()
    grad = grads.detach().float().cpu()
    return LatentAttribution(
        prompts=texts,
        tokens=_row_tokens(model, ids.cpu(), mask),
        targets=targets if metric is None else None,
        metric=float(value.detach()),
        latents=lat,
        gradients=grad,
        scores=lat * grad,
        mask=mask,
    )
