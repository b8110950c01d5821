"""The splice of an attached SAE or transcoder: torch hooks that encode, serve and write back.

One `Attachment` per attached SAE. Its hooks sit on the native module that hands
the SAE's value over (`uniterp._sae_sites`); in every forward pass they encode the
value and pass the latents through a small identity module that nnsight serves
(``model.sae_latents[name]``). When the latents come back edited (in place, or
replaced), the value is replaced by

    value - (decode(encode(value)) - decode(latents))

(`SparseAutoencoder.reconstruct_with_error`; a transcoder measures the error term
against its output site). When they come back unedited nothing is written: the
model's own tensor goes on, bit for bit. Standing edits (`LatentEdit`, set by the
steering tools) apply in every forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from ._aliases import normalize
from ._errors import InputError
from ._nnsight_compat import drop_standalone_envoy, native_module, standalone_envoy, tensor_version

if TYPE_CHECKING:
    from ._sae_check import AttachReport
    from ._sae_sites import SAESite
    from .sae import SparseAutoencoder

__all__ = ["Attachment", "LatentEdit", "registry"]

_REGISTRY = "_uniterp_sae_registry"


@dataclass(frozen=True, eq=False)
class LatentEdit:
    """A standing edit applied in every forward pass while it is set (steering).

    Attributes:
        indices: Latent indices, ``(k,)`` long.
        values: ``(k,)``: the value each latent is set to (``"clamp"``), or the factor
            of its decoder row added at the site (``"add"``).
        mode: ``"clamp"`` or ``"add"``.
        positions: Token columns of each forward pass (negative from the end), or
            ``None`` for all.
    """

    indices: torch.Tensor
    values: torch.Tensor
    mode: Literal["add", "clamp"]
    positions: tuple[int, ...] | None = None

    def columns(self, length: int) -> torch.Tensor | slice | None:
        """The columns of a forward pass of ``length`` tokens it applies to (``None``: none)."""
        if self.positions is None:
            return slice(None)
        cols = sorted({p % length for p in self.positions if -length <= p < length})
        return torch.as_tensor(cols, dtype=torch.long) if cols else None


class _Latents(nn.Module):
    """Identity: the latents pass through it so that nnsight serves them at ``.output``."""

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


class Attachment:
    """One SAE or transcoder attached to a model.

    Example::

        >>> model.attach(sae)
        >>> a = model.attachments["blocks.3.hook_resid_post"]
        >>> a.sae, a.site.label, a.report.verdict
        (SparseAutoencoder(...), 'layers_output.3', 'ok')

    Attributes:
        name: Its key in ``model.sae_latents``.
        sae: The SAE or transcoder.
        site: Where it reads (an SAE also writes there).
        site_out: Where a transcoder writes (``None`` for an SAE).
        report: What the check at attach time found.
        edits: Standing edits (`LatentEdit`), applied in every forward pass.
        track_grad: Keep the latents in the autograd graph even when unedited (for
            gradients with respect to them).
    """

    def __init__(
        self,
        model: Any,
        name: str,
        sae: SparseAutoencoder,
        site: SAESite,
        site_out: SAESite | None,
        report: AttachReport,
        slot: int,
    ) -> None:
        self.name = name
        self.sae = sae
        self.site = site
        self.site_out = site_out
        self.report = report
        self.edits: list[LatentEdit] = []
        self.track_grad = False
        self._model_type = model.model_type
        self._registry: _Registry = registry(model)
        self._module = _Latents()
        self.envoy = standalone_envoy(model, self._module, f"sae_latents_{slot}")
        self._pending: torch.Tensor | None = None
        self._handles: list[Any] = []
        root = native_module(model)
        plan = [(site, "splice")] if site_out is None else [(site, "read"), (site_out, "write")]
        for where, role in plan:
            module = root.get_submodule(where.loc.path)
            if where.kind == "normalized" or where.loc.io == "output":
                hook = self._after_hook(where, role)
                self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
            else:
                self._handles.append(
                    module.register_forward_pre_hook(self._before_hook(where, role), with_kwargs=True)
                )

    def __repr__(self) -> str:
        where = self.site.label if self.site_out is None else f"{self.site.label} -> {self.site_out.label}"
        return f"<Attachment {self.name!r}: {type(self.sae).__name__} at {where}>"

    def remove(self) -> None:
        """Take the hooks off and forget the latents' envoy."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        drop_standalone_envoy(self.envoy)

    # -- the hooks ------------------------------------------------------------------------------

    def _before_hook(self, site: SAESite, role: str) -> Any:
        key = site.loc.key

        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            native = args[key] if isinstance(key, int) else kwargs[key]
            new = self._native_step(site, role, native)
            if new is None:
                return None
            if isinstance(key, int):
                return args[:key] + (new,) + args[key + 1 :], kwargs
            return args, {**kwargs, key: new}

        return hook

    def _after_hook(self, site: SAESite, role: str) -> Any:
        key = site.loc.key

        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            if site.kind == "normalized":
                return self._normalized_step(module, site, role, _first_tensor(args, kwargs), output)
            native = output if key is None else output[key]
            new = self._native_step(site, role, native)
            if new is None:
                return None
            if key is None:
                return new
            items = list(output)
            items[key] = new
            return type(output)(items) if isinstance(output, tuple) else items

        return hook

    def _native_step(self, site: SAESite, role: str, native: torch.Tensor) -> torch.Tensor | None:
        standard, x = self._tokens(site, native)
        new = self._step(role, x)
        return None if new is None else self._to_native(site, native, standard, new)

    def _normalized_step(
        self, norm: nn.Module, site: SAESite, role: str, source: torch.Tensor, output: torch.Tensor
    ) -> torch.Tensor | None:
        normalized = normalize(norm, source, "normalized", self._model_type, site.ref.name)
        _, n = self._tokens(site, normalized)
        new = self._step(role, n)
        if new is None:
            return None
        gain = site.gain.float() if site.gain is not None else 1.0  # always set for a normalized site
        delta = gain * (new.float() - n.float())
        return output + self._to_native(site, normalized, delta, delta).to(output.dtype)

    def _tokens(self, site: SAESite, native: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, seq, width)`` as the model lays it out, and the part the SAE reads."""
        value = native
        if site.loc.flat:
            shape = self._registry.batch_shape
            if shape is None:  # pragma: no cover - the root hook runs first
                raise InputError(f"{site.label}: the batch shape of this forward pass is unknown")
            value = value.view(*shape, value.shape[-1])
        if site.loc.seq_first:
            value = value.transpose(0, 1)
        if site.head is not None and site.loc.heads and site.head_dim:
            return value, value.unflatten(-1, (site.loc.heads, site.head_dim))[..., site.head, :]
        return value, value

    def _to_native(
        self, site: SAESite, native: torch.Tensor, standard: torch.Tensor, new: torch.Tensor
    ) -> torch.Tensor:
        if site.head is not None and site.loc.heads and site.head_dim:
            full = standard.clone()
            full.unflatten(-1, (site.loc.heads, site.head_dim))[..., site.head, :] = new
            new = full
        if site.loc.seq_first:
            new = new.transpose(0, 1)
        if site.loc.flat:
            new = new.reshape(native.shape)
        return new

    def _step(self, role: str, x: torch.Tensor) -> torch.Tensor | None:
        """Encode, serve the latents, and splice them back (``None``: leave the model's value)."""
        if role == "read":
            self._pending = x
            return None
        source, target = (x, None) if role == "splice" else (self._pending, x)
        self._pending = None
        if source is None:
            return None
        sae = self.sae
        latents = sae.encode(source)
        tracking = self.track_grad and torch.is_grad_enabled()
        if tracking and not latents.requires_grad:
            latents.requires_grad_(True)
        version = tensor_version(latents)
        served = self._module(latents)
        edited = served is not latents or tensor_version(latents) != version
        if not (edited or tracking or self.edits):
            return None
        served = self._clamp(served)
        clean = sae.decode(sae.encode(source), x=source)
        if target is None:
            out = sae.reconstruct_with_error(served, source, clean_reconstruction=clean)
        else:
            out = sae.reconstruct_with_error(served, source, target=target, clean_reconstruction=clean)  # type: ignore[call-arg]
        return self._add(out)

    def _clamp(self, latents: torch.Tensor) -> torch.Tensor:
        clamps = [edit for edit in self.edits if edit.mode == "clamp"]
        if not clamps:
            return latents
        latents = latents.clone()
        for edit in clamps:
            cols = edit.columns(latents.shape[-2])
            if cols is None:
                continue
            idx = edit.indices.to(latents.device)
            values = edit.values.to(device=latents.device, dtype=latents.dtype)
            if isinstance(cols, slice):
                latents[..., idx] = values
            else:
                latents[:, cols.to(latents.device)[:, None], idx[None, :]] = values
        return latents

    def _add(self, out: torch.Tensor) -> torch.Tensor:
        adds = [edit for edit in self.edits if edit.mode == "add"]
        if not adds:
            return out
        out = out.clone()
        for edit in adds:
            cols = edit.columns(out.shape[-2])
            if cols is None:
                continue
            rows = self.sae.W_dec[edit.indices.to(self.sae.device)]
            direction = (edit.values.to(device=rows.device, dtype=rows.dtype)[:, None] * rows).sum(0)
            if not isinstance(cols, slice):
                cols = cols.to(out.device)
            out[:, cols, :] += direction.to(device=out.device, dtype=out.dtype)
        return out


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return kwargs["hidden_states"]
    return next(v for v in kwargs.values() if isinstance(v, torch.Tensor))


class _Registry:
    """The attachments of one model, and the hook that records the batch shape for flattened values."""

    def __init__(self) -> None:
        self.attachments: dict[str, Attachment] = {}
        self.slots = 0
        self.batch_shape: tuple[int, ...] | None = None
        self._root_handle: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        # Serialising the model happens for remote runs only; attachments are hooks on this
        # process's modules and would not run there, so a remote run is refused while any is attached.
        if self.attachments:
            names = ", ".join(repr(name) for name in self.attachments)
            raise InputError(
                f"SAEs are attached ({names}); they run as hooks in this process and would not run remotely. "
                "Detach them (model.detach()) for a remote trace"
            )
        return (_Registry, ())

    def watch_batch(self, root: nn.Module) -> None:
        if self._root_handle is not None:
            return

        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            tokens = ids if isinstance(ids, torch.Tensor) else kwargs.get("inputs_embeds")
            if isinstance(tokens, torch.Tensor):
                self.batch_shape = tuple(tokens.shape[:2])

        self._root_handle = root.register_forward_pre_hook(hook, with_kwargs=True)

    def unwatch_batch(self) -> None:
        if self._root_handle is not None and not any(
            site.loc.flat for a in self.attachments.values() for site in (a.site, a.site_out) if site
        ):
            self._root_handle.remove()
            self._root_handle = None


def registry(model: Any) -> _Registry:
    """The model's attachments (created on first use)."""
    found = vars(model).get(_REGISTRY)
    if found is None:
        found = _Registry()
        object.__setattr__(model, _REGISTRY, found)
    return found
