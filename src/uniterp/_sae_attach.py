"""SAEs and transcoders attached to a model: their latents readable and writable inside a trace.

``model.attach(sae)`` translates the SAE's hook name for this model
(`uniterp._sae_sites`), checks it on live activations (`uniterp._sae_check`) and
puts its splice in the forward pass (`uniterp._sae_splice`): in every forward pass
the value at the site is encoded, and inside a trace ``model.sae_latents[name]``
reads the latents like any module output; assigning to it (or editing it in place)
replaces them, and the model continues with the reconstruction of the edited
latents plus the SAE's error term. Unedited, the model's own tensor goes on, so its
output is unchanged bit for bit. A transcoder reads its input site and writes its
output site the same way, with the error term measured against the real output there.

Where the latents come in the forward pass: for a value a module returns, right
after that value (read ``model.layers_output[3]`` before
``model.sae_latents["blocks.3.hook_resid_post"]``); for a value a module receives
(``head_outputs``, ``mlp_neurons``, ``residual_mid``), right before the module
receives it; for a transcoder, right after its output value.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from ._errors import CheckFailedError, InputError, ShapeError
from ._nnsight_compat import OutOfOrderError, in_trace, native_module
from ._sae_check import AttachReport, check_attachment, unchecked_report
from ._sae_sites import SAESite, sae_sites
from ._sae_splice import Attachment, LatentEdit, registry
from ._sites import conform, raise_order_error, require_trace

if TYPE_CHECKING:
    from ._model import StandardizedTransformer
    from .sae import SparseAutoencoder

__all__ = [
    "Attachment",
    "LatentEdit",
    "SAEAttachment",
    "SAELatents",
    "attach_sae",
    "attached_saes",
    "attachment",
    "attachments",
    "detach_sae",
    "registry",
]

logger = logging.getLogger("uniterp")


def attachments(model: Any) -> dict[str, Attachment]:
    """The model's attachments by name, in forward order (a copy)."""
    items = registry(model).attachments.values()
    return {a.name: a for a in sorted(items, key=lambda a: a.site.rank)}


def attachment(model: Any, name: Any) -> Attachment:
    """The attachment named ``name`` (or holding the SAE ``name``), or `InputError`."""
    found = registry(model).attachments
    if isinstance(name, str) and name in found:
        return found[name]
    for item in found.values():
        if item.sae is name:
            return item
    known = ", ".join(repr(n) for n in found) or "none"
    what = repr(name) if isinstance(name, str) else f"this {type(name).__name__}"
    raise InputError(
        f"no SAE is attached as {what}; attached: {known}. Attach it first: model.attach(sae) "
        "(or model.attach(sae, name=...))"
    )


def attach_sae(
    model: StandardizedTransformer,
    sae: SparseAutoencoder,
    *,
    name: str | None = None,
    at: str | None = None,
    at_out: str | None = None,
    check: bool = True,
    prompts: Sequence[str] | None = None,
    strict: bool = False,
) -> AttachReport:
    """Attach ``sae`` to ``model`` (see `SAEAttachment.attach`)."""
    from .sae import SparseAutoencoder

    if not isinstance(sae, SparseAutoencoder):
        raise InputError(
            f"attach takes a uniterp.sae.SparseAutoencoder or Transcoder (load one with uniterp.sae.load_sae); "
            f"got {type(sae).__name__}"
        )
    if in_trace():
        raise InputError(
            "attach SAEs before opening a trace (model.attach(sae), then `with model.trace(...)`)"
        )
    if name is not None and (not isinstance(name, str) or not name):
        raise InputError(f"name must be a non-empty string; got {name!r}")
    model.binding  # noqa: B018 - bind before reading the layout
    model.dispatch()
    site, site_out = sae_sites(model, sae, at, at_out)
    hook_name = at if at is not None else sae.hook_name
    key = name or hook_name or site.label
    reg = registry(model)
    if key in reg.attachments:
        raise InputError(
            f"an SAE is already attached as {key!r}; detach it first (model.detach({key!r})) or give this one "
            "another name (model.attach(sae, name=...))"
        )
    for other in reg.attachments.values():
        mine = [s for s in (site, site_out) if s is not None]
        theirs = [s for s in (other.site, other.site_out) if s is not None]
        clash = next((s for s in mine if any(s.key == t.key for t in theirs)), None)
        if clash is not None:
            raise InputError(
                f"{clash.label} already has the SAE {other.name!r} attached; one SAE per site: detach it first "
                f"(model.detach({other.name!r}))"
            )
    _check_device(model, sae, site)
    if check:
        report = check_attachment(model, sae, key, hook_name, site, site_out, prompts)
    else:
        report = unchecked_report(model, sae, key, hook_name, site, site_out)
    if report.verdict == "misplaced":
        logger.warning("uniterp: SAE %r is probably misplaced: %s", key, report)
        if strict:
            raise CheckFailedError(f"SAE {key!r} is probably misplaced: {report}")
    else:
        logger.info("uniterp: attached SAE %s", report)
    reg.slots += 1
    item = Attachment(model, key, sae, site, site_out, report, reg.slots)
    reg.attachments[key] = item
    if any(s is not None and s.loc.flat for s in (site, site_out)):
        reg.watch_batch(native_module(model))
    return report


def _check_device(model: Any, sae: SparseAutoencoder, site: SAESite) -> None:
    module = native_module(model).get_submodule(site.loc.path)
    param = next(module.parameters(), None)
    if param is None or param.device.type == "meta" or param.device == sae.device:
        return
    raise InputError(
        f"the SAE is on {sae.device} but {site.label} is computed on {param.device}; move it: "
        f"sae.to({str(param.device)!r})"
    )


def detach_sae(model: Any, name: Any = None) -> None:
    """Detach one SAE (by name or the SAE itself) or, with ``name=None``, all of them."""
    reg = registry(model)
    if in_trace():
        raise InputError("detach SAEs outside a trace")
    targets = list(reg.attachments.values()) if name is None else [attachment(model, name)]
    for item in targets:
        item.remove()
        del reg.attachments[item.name]
    reg.unwatch_batch()


@contextmanager
def attached_saes(
    model: Any,
    *saes: SparseAutoencoder,
    names: Sequence[str] | None = None,
    check: bool = True,
    prompts: Sequence[str] | None = None,
    strict: bool = False,
) -> Iterator[tuple[AttachReport, ...]]:
    """Attach ``saes`` for the duration of a ``with`` block (see `SAEAttachment.attached`)."""
    if not saes:
        raise InputError("attached() needs at least one SAE")
    if names is not None and len(names) != len(saes):
        raise InputError(f"names has {len(names)} entries for {len(saes)} SAEs")
    done: list[str] = []
    reports: list[AttachReport] = []
    try:
        for i, sae in enumerate(saes):
            report = attach_sae(
                model,
                sae,
                name=None if names is None else names[i],
                check=check,
                prompts=prompts,
                strict=strict,
            )
            done.append(report.name)
            reports.append(report)
        yield tuple(reports)
    finally:
        for key in reversed(done):
            if key in registry(model).attachments:
                detach_sae(model, key)


class SAELatents:
    """``model.sae_latents``: each attached SAE's latents, readable and writable inside a trace.

    Example::

        >>> model.attach(sae)                                      # sae.hook_name == "blocks.3.hook_resid_post"
        >>> with model.trace("The Eiffel Tower is in"):
        ...     latents = model.sae_latents["blocks.3.hook_resid_post"]      # (batch, seq, d_sae)
        ...     top = latents.topk(5, dim=-1).save()
        ...     latents[:, -1, 1234] = 0.0                           # ablate a latent at the last token
        ...     logits = model.logits.save()

    Editing the latents (in place, or by assigning a ``(batch, seq, d_sae)`` tensor)
    changes what the model computes downstream by the change in the SAE's
    reconstruction; unedited, the model runs exactly as without the SAE.
    """

    def __init__(self, model: Any) -> None:
        self._model = model

    def __getitem__(self, name: str) -> torch.Tensor:
        item = attachment(self._model, name)
        label = f"sae_latents[{item.name!r}]"
        require_trace(label)
        try:
            return item.envoy.output
        except OutOfOrderError as error:
            raise_order_error(label, error)

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        item = attachment(self._model, name)
        label = f"sae_latents[{item.name!r}]"
        require_trace(label)
        try:
            current = item.envoy.output
        except OutOfOrderError as error:
            raise_order_error(label, error)
        if isinstance(value, torch.Tensor) and value.shape != current.shape:
            raise ShapeError(
                f"{label} has shape {tuple(current.shape)} (batch, seq, d_sae={item.sae.d_sae}); the tensor "
                f"written has shape {tuple(value.shape)}. Write a tensor of exactly that shape."
            )
        item.envoy.output = conform(label, self._model.model_type, value, current)

    def __contains__(self, name: object) -> bool:
        return name in registry(self._model).attachments

    def __iter__(self) -> Iterator[str]:
        return iter(attachments(self._model))

    def __len__(self) -> int:
        return len(registry(self._model).attachments)

    def keys(self) -> list[str]:
        """Names of the attached SAEs, in forward order."""
        return list(attachments(self._model))

    def __repr__(self) -> str:
        return f"<sae_latents of {self._model.model_type}: {self.keys()}>"


class SAEAttachment:
    """Mixin for `StandardizedTransformer`: attach SAEs and transcoders, and read their latents in a trace.

    Example::

        >>> from uniterp.sae import load_sae
        >>> report = model.attach(load_sae("saes/blocks.3.hook_resid_post"))
        >>> report.verdict                                   # FVU and L0 checked on live activations
        'ok'
        >>> with model.trace("The Eiffel Tower is in"):
        ...     latents = model.sae_latents["blocks.3.hook_resid_post"]   # (batch, seq, d_sae)
        ...     latents[..., 1234] *= 2
        ...     logits = model.logits.save()
        >>> model.detach()
    """

    def attach(
        self,
        sae: SparseAutoencoder,
        *,
        name: str | None = None,
        at: str | None = None,
        at_out: str | None = None,
        check: bool = True,
        prompts: Sequence[str] | None = None,
        strict: bool = False,
    ) -> AttachReport:
        """Attach ``sae`` (an SAE or a transcoder) where its hook name says, after checking it there.

        Example::

            >>> report = model.attach(sae)                       # at sae.hook_name
            >>> report = model.attach(sae2, at="layers_output.5", name="mine", check=False)

        The hook name is translated for this model (TransformerLens names,
        module paths with the SAE's ``hook_io``, dictionary_learning's submodule
        names); a value the architecture does not have is refused with the reason.
        Unless ``check=False``, the model runs once on ``prompts`` to measure the
        SAE's FVU and L0 at the site against the values its files declare (see
        `AttachReport`); a probably misplaced SAE is logged as a warning.

        Args:
            sae: A `uniterp.sae.SparseAutoencoder` or `uniterp.sae.Transcoder`.
            name: The key of ``model.sae_latents`` (default: the hook name).
            at: Attach at this name instead of ``sae.hook_name`` (standardized,
                TransformerLens or native module path).
            at_out: A transcoder's output name instead of ``sae.hook_name_out``.
            check: Run the check (one forward pass on ``prompts``).
            prompts: Prompts of the check (default: eight built-in English prompts).
            strict: Raise `CheckFailedError` instead of warning when the check says misplaced.

        Returns:
            The `AttachReport` (also ``model.attachments[name].report``).

        Raises:
            InputError: Not an SAE, a hook name in no known scheme, a name or a site
                already taken, the SAE on another device, called inside a trace.
            UnavailableError: The site does not exist on this architecture.
            ShapeError: The SAE's ``d_in`` (a transcoder's ``d_out``) differs from the site's width.
            CheckFailedError: ``strict=True`` and the check says misplaced.
        """
        return attach_sae(
            self, sae, name=name, at=at, at_out=at_out, check=check, prompts=prompts, strict=strict
        )

    def attached(
        self,
        *saes: SparseAutoencoder,
        names: Sequence[str] | None = None,
        check: bool = True,
        prompts: Sequence[str] | None = None,
        strict: bool = False,
    ) -> Any:
        """Attach ``saes`` for the duration of a ``with`` block; yields their reports.

        Example::

            >>> with model.attached(sae_resid, transcoder) as reports:
            ...     with model.trace(prompt):
            ...         a = model.sae_latents[sae_resid.hook_name].save()
            ...         b = model.sae_latents[transcoder.hook_name].save()

        Args:
            *saes: SAEs and transcoders, each at its own hook name.
            names: One name per SAE (default: their hook names).
            check: Run the attach-time check for each.
            prompts: The check's prompts.
            strict: Raise instead of warning when a check says misplaced.
        """
        return attached_saes(self, *saes, names=names, check=check, prompts=prompts, strict=strict)

    def detach(self, sae: Any = None) -> None:
        """Detach one SAE (by name, or the SAE object) or, with no argument, all of them.

        Example::

            >>> model.detach("blocks.3.hook_resid_post")
            >>> model.detach()                                   # all
        """
        detach_sae(self, sae)

    @property
    def sae_latents(self) -> SAELatents:
        """Latents of the attached SAEs inside a trace, by name: ``(batch, seq, d_sae)``; see `SAELatents`."""
        return SAELatents(self)

    @property
    def attachments(self) -> dict[str, Attachment]:
        """The attached SAEs by name, in forward order (a copy; see `Attachment`)."""
        return attachments(self)
