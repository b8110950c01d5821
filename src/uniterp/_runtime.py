"""What uniterp keeps per forward pass, with plain torch hooks on the bound modules.

Four things need a look at the forward from outside nnsight's interleaving:

- the ``(batch, seq)`` of the batch, to unflatten values a module sees as
  ``(batch * seq, hidden)`` (OPT's MLP), and its attention mask, to turn
  positions within prompts into columns (``steer(prompt_positions=...)``);
- the copies handed out where the model edits a value in place later: an
  in-place edit of such a copy would not reach the model, so it is refused at the
  end of the layer (`InPlaceEditError`) rather than dropped silently;
- the context limit of models with learned absolute positions, so an input that
  is too long is refused with uniterp's error instead of an index error deep in
  an embedding.

The hooks run in the model's own forward (locally; a remote run has none).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ._errors import InPlaceEditError, InputError
from ._nnsight_compat import tensor_version

if TYPE_CHECKING:
    from ._binding import Binding

__all__ = ["Runtime"]


class Runtime:
    """Per-forward state and the hooks that keep it, for one model.

    Example::

        >>> runtime = Runtime()
        >>> runtime.install(hf_model, binding)     # idempotent; re-installs after dispatch
    """

    def __init__(self) -> None:
        self.batch_shape: tuple[int, ...] | None = None
        #: the attention mask of the running forward (to turn positions within prompts into columns)
        self.mask: torch.Tensor | None = None
        self._copies: list[tuple[str, torch.Tensor, int]] = []
        self._handles: list[Any] = []
        self._hooked: torch.nn.Module | None = None

    def install(self, root: torch.nn.Module, binding: Binding) -> None:
        """Put the hooks the binding needs on ``root`` (once per root module)."""
        if self._hooked is root:
            return
        for handle in self._handles:
            handle.remove()
        self._handles = []
        layout, limit = binding.layout, binding.sizes.context_limit
        self._handles.append(root.register_forward_pre_hook(self._entering(binding, limit), with_kwargs=True))
        if layout.has_copies:
            for layer in root.get_submodule(binding.spec.layers):
                self._handles.append(layer.register_forward_hook(self._layer_done))
            self._handles.append(root.register_forward_hook(self._layer_done))
        self._hooked = root

    # -- the batch shape and the context limit ------------------------------------------------

    def _entering(self, binding: Binding, limit: int | None) -> Any:
        flat = binding.layout.has_flat_sites

        def hook(_module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            tokens = ids if isinstance(ids, torch.Tensor) else kwargs.get("inputs_embeds")
            if flat and isinstance(tokens, torch.Tensor):
                self.batch_shape = tuple(tokens.shape[:2])
            mask = kwargs.get("attention_mask")
            self.mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
            self._copies.clear()
            if limit is not None and isinstance(tokens, torch.Tensor):
                _check_length(binding.model_type, limit, tokens, kwargs)

        return hook

    # -- copies handed out ------------------------------------------------------------------------

    def watch(self, name: str, copy: torch.Tensor) -> None:
        """Remember a copy handed out as ``name``, to refuse in-place edits of it."""
        self._copies.append((name, copy, tensor_version(copy)))

    def release(self, name: str) -> None:
        """``name`` was assigned: edits of its copy reach the model through the assignment."""
        self._copies = [entry for entry in self._copies if entry[0] != name]

    def _layer_done(self, *_: Any) -> None:
        edited = [name for name, copy, version in self._copies if tensor_version(copy) != version]
        self._copies.clear()
        if edited:
            name = edited[0]
            raise InPlaceEditError(
                f"{name} was edited in place, but it is a copy: the model edits this value in place later "
                "in the forward pass, so uniterp hands out a copy and an in-place edit of it would not "
                f"reach the model. Assign the edited tensor back: `h = model.{name}; h[:, -1] = 0; "
                f"model.{name} = h` (or `model.{name} = edited`)."
            )


def _check_length(model_type: str, limit: int, tokens: torch.Tensor, kwargs: dict[str, Any]) -> None:
    """Refuse an input past the learned position table (the embedding would fail with an index error)."""
    positions = kwargs.get("position_ids")
    if isinstance(positions, torch.Tensor) and positions.numel():
        longest = int(positions.max()) + 1
    else:
        cache_position = kwargs.get("cache_position")
        longest = (
            int(cache_position.max()) + 1
            if isinstance(cache_position, torch.Tensor) and cache_position.numel()
            else int(tokens.shape[1])
        )
    if longest > limit:
        raise InputError(
            f"the input reaches position {longest} but {model_type} accepts at most {limit} tokens "
            f"(its learned position embeddings have {limit} rows); shorten the prompt or generate fewer tokens"
        )
