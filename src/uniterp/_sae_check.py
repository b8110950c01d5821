"""The check run when an SAE is attached: FVU and L0 on live activations against the declared values.

An SAE on the wrong tensor usually still runs: the widths agree (every residual
value of a model has the same width) and nothing fails. What gives it away is the
reconstruction: an SAE reads activations of the distribution it was trained on
well, and others badly. So attaching runs the model on a few prompts, reads the
value at the site, and compares the SAE's fraction of variance unexplained (FVU)
and L0 there with what its files declare:

- **misplaced** when ``fvu > 1`` (worse than predicting the mean), or when the
  files declare an FVU (or an explained variance) and ``fvu > max(0.5, 3 * declared)``;
- **ok** otherwise. An L0 more than 4x off the declared one (either way) is noted.

Padding, special tokens and each prompt's first token (the position that often
carries an outsized norm, the "attention sink") are left out of the statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from ._aliases import read_ref
from ._errors import InputError
from ._nnsight_compat import native_module
from ._rules import SAE_CHECK_PROMPTS, TL_MODEL_ALIASES
from ._tooling import as_prompt_list

if TYPE_CHECKING:
    from ._model import StandardizedTransformer
    from ._sae_sites import SAESite
    from .sae import SparseAutoencoder

__all__ = [
    "FVU_CEILING",
    "FVU_FACTOR",
    "FVU_FLOOR",
    "L0_FACTOR",
    "AttachReport",
    "check_attachment",
    "read_site",
]

logger = logging.getLogger("uniterp")

#: An FVU above this is worse than predicting each dimension's mean: misplaced whatever was declared.
FVU_CEILING = 1.0
#: With a declared FVU, misplaced above ``max(FVU_FLOOR, FVU_FACTOR * declared)``.
FVU_FACTOR = 3.0
FVU_FLOOR = 0.5
#: An L0 this many times above or below the declared one is noted.
L0_FACTOR = 4.0

Verdict = Literal["ok", "misplaced", "unchecked"]


@dataclass(frozen=True)
class AttachReport:
    """What attaching an SAE found: its site, and its FVU and L0 there against the declared values.

    Example::

        >>> report = model.attach(sae)
        >>> report.verdict, round(report.fvu, 3), report.declared_fvu
        ('ok', 0.081, 0.07)
        >>> print(report)
        blocks.3.hook_resid_post -> layers_output.3: FVU 0.081 (declared 0.070), L0 31.2 (declared 32.0) on 96 tokens: ok

    Attributes:
        name: The key of ``model.sae_latents``.
        hook_name: The hook name the SAE was attached by (its own, or ``at=``).
        site: The standardized value it reads (and, for an SAE, writes).
        site_out: A transcoder's output value (``None`` for an SAE).
        fvu: Fraction of variance unexplained on the check prompts (``None`` if unchecked).
        l0: Mean number of active latents per token there.
        declared_fvu: The FVU the files declare (``1 - explained_variance`` where that is
            what they give), or ``None``.
        declared_l0: The L0 the files declare, or ``None``.
        n_tokens: Tokens the statistics are over.
        verdict: ``"ok"``, ``"misplaced"`` (probably on the wrong value; see the module
            docstring for the thresholds) or ``"unchecked"`` (``check=False``).
        notes: Why the verdict, and anything else worth knowing (L0 far off, another model's SAE).
    """

    name: str
    hook_name: str | None
    site: str
    site_out: str | None
    fvu: float | None
    l0: float | None
    declared_fvu: float | None
    declared_l0: float | None
    n_tokens: int
    verdict: Verdict
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """Whether the SAE does not look misplaced."""
        return self.verdict != "misplaced"

    def __str__(self) -> str:
        where = self.site if self.site_out is None else f"{self.site} -> {self.site_out}"
        head = f"{self.hook_name or self.name} -> {where}"
        if self.fvu is None:
            text = f"{head}: {self.verdict}"
        else:
            fvu = f"FVU {self.fvu:.3f}" + (
                f" (declared {self.declared_fvu:.3f})" if self.declared_fvu is not None else ""
            )
            l0 = f"L0 {self.l0:.1f}" + (
                f" (declared {self.declared_l0:.1f})" if self.declared_l0 is not None else ""
            )
            text = f"{head}: {fvu}, {l0} on {self.n_tokens} tokens: {self.verdict}"
        return text + "".join(f"; {note}" for note in self.notes)


def declared(sae: SparseAutoencoder) -> tuple[float | None, float | None]:
    """The FVU and L0 the SAE's files declare (``None`` where they do not)."""
    stats = sae.statistics
    fvu = stats.get("fvu")
    if fvu is None and "explained_variance" in stats:
        fvu = 1.0 - float(stats["explained_variance"])
    l0 = stats.get("l0")
    return (None if fvu is None else float(fvu)), (None if l0 is None else float(l0))


def read_site(model: StandardizedTransformer, site: SAESite) -> torch.Tensor:
    """The value at ``site`` as the SAE reads it, inside a trace: ``(batch, seq, width)``."""
    value = read_ref(model, site.ref)
    if site.ref.site == "head_outputs":  # (batch, seq, heads, head_dim)
        return value[..., site.head, :] if site.head is not None else value.flatten(-2)
    return value


def check_attachment(
    model: StandardizedTransformer,
    sae: SparseAutoencoder,
    name: str,
    hook_name: str | None,
    site: SAESite,
    site_out: SAESite | None,
    prompts: Sequence[str] | None,
) -> AttachReport:
    """Run the model on ``prompts`` and measure ``sae`` at ``site`` (see the module docstring)."""
    from .sae import evaluate_sae

    texts = as_prompt_list(list(prompts) if prompts is not None else list(SAE_CHECK_PROMPTS), "prompts")
    target: Any = None
    with torch.no_grad():
        with model.trace(texts):
            ids = model.input_ids.save()
            mask = model.attention_mask.save()
            x = read_site(model, site).save()
            if site_out is not None:
                target = read_site(model, site_out).save()
        keep = token_mask(model, ids, mask).to(x.device)
        count = int(keep.sum())
        if count < 2:
            raise InputError(
                f"the check prompts leave {count} token(s) once padding, special tokens and each prompt's first "
                "token are set aside; pass longer prompts (prompts=...) or check=False"
            )
        metrics = evaluate_sae(sae, x, target=target, mask=keep)
    fvu_declared, l0_declared = declared(sae)
    verdict, notes = judge(metrics.fvu, metrics.l0, fvu_declared, l0_declared)
    return AttachReport(
        name=name,
        hook_name=hook_name,
        site=site.label,
        site_out=None if site_out is None else site_out.label,
        fvu=metrics.fvu,
        l0=metrics.l0,
        declared_fvu=fvu_declared,
        declared_l0=l0_declared,
        n_tokens=count,
        verdict=verdict,
        notes=tuple(notes) + model_name_notes(model, sae),
    )


def unchecked_report(
    model: StandardizedTransformer,
    sae: SparseAutoencoder,
    name: str,
    hook_name: str | None,
    site: SAESite,
    site_out: SAESite | None,
) -> AttachReport:
    """The report of an attachment made with ``check=False``."""
    fvu_declared, l0_declared = declared(sae)
    return AttachReport(
        name=name,
        hook_name=hook_name,
        site=site.label,
        site_out=None if site_out is None else site_out.label,
        fvu=None,
        l0=None,
        declared_fvu=fvu_declared,
        declared_l0=l0_declared,
        n_tokens=0,
        verdict="unchecked",
        notes=model_name_notes(model, sae),
    )


def token_mask(model: StandardizedTransformer, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Tokens the statistics count: not padding, not a special token, not a row's first token."""
    real = mask.bool()
    first = (real.long().cumsum(dim=-1) == 1) & real
    special = list(getattr(model.tokenizer, "all_special_ids", []) or [])
    keep = real & ~first
    if special:
        keep &= ~torch.isin(ids, torch.as_tensor(special, dtype=ids.dtype, device=ids.device))
    return keep


def judge(
    fvu: float, l0: float, fvu_declared: float | None, l0_declared: float | None
) -> tuple[Verdict, list[str]]:
    """The verdict on measured FVU and L0 against the declared ones, and the notes explaining it."""
    notes: list[str] = []
    verdict: Verdict = "ok"
    if fvu > FVU_CEILING:
        verdict = "misplaced"
        notes.append(
            f"FVU {fvu:.3f} > {FVU_CEILING:g}: the SAE reconstructs this value worse than its mean does; it is "
            "probably attached to another value than it was trained on"
        )
    elif fvu_declared is not None and fvu > max(FVU_FLOOR, FVU_FACTOR * fvu_declared):
        verdict = "misplaced"
        notes.append(
            f"FVU {fvu:.3f} > max({FVU_FLOOR:g}, {FVU_FACTOR:g} x declared {fvu_declared:.3f}): probably attached "
            "to another value than it was trained on (another layer or site, or activations processed "
            "differently)"
        )
    elif fvu_declared is None:
        notes.append("no declared FVU to compare with")
    if (
        l0_declared is not None
        and l0_declared > 0
        and not (l0_declared / L0_FACTOR <= l0 <= l0_declared * L0_FACTOR)
    ):
        notes.append(f"L0 {l0:.1f} is more than {L0_FACTOR:g}x off the declared {l0_declared:.1f}")
    return verdict, notes


def model_name_notes(model: StandardizedTransformer, sae: SparseAutoencoder) -> tuple[str, ...]:
    """A note (and a logged warning) when the SAE declares another model than this one."""
    wanted = sae.model_name
    loaded = getattr(getattr(native_module(model), "config", None), "_name_or_path", None)
    if not wanted or not isinstance(loaded, str) or not loaded:
        return ()
    if canonical_model_name(wanted) == canonical_model_name(loaded):
        return ()
    note = f"the SAE was trained on {wanted!r}, this model is {loaded!r}"
    logger.warning("uniterp: %s", note)
    return (note,)


def canonical_model_name(name: str) -> str:
    """``"openai-community/gpt2"`` and TransformerLens's ``"gpt2-small"`` -> ``"gpt2"``."""
    short = name.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    return TL_MODEL_ALIASES.get(short, short)
