"""Reading standardized values with plain torch hooks, for bulk work that needs no interleaving.

A trace pays nnsight's fixed cost (about half a millisecond on a CPU, plus a few
microseconds for every module call and every value read) on each forward. Tools
that only *read* values over many batches (activation collection, the logit lens,
patchscope sources) run the forward themselves instead, with plain forward hooks on
the native modules the binding names, and get the very same tensors: the hooks sit
where nnsight's handoffs sit (a forward hook runs first, seeing what the module
returned; a pre-hook runs last, seeing what the module receives), each value is
unflattened, copied and re-laid out exactly as `uniterp._sites.read_value` does,
and the forward receives the encoding nnsight would build (its own position ids
for left-padded rows included).

The fast path is taken only where nothing needs nnsight: a local run, no trace
already running, no edits stored on the model with ``model.edit()``, and every
value a module's own input or output (values found inside a module's source, such
as queries or attention probabilities, need nnsight). ``tests/test_fastpath.py``
checks, bit for bit, that both paths give the same values on several families.

Example::

    >>> reads = {"h3": Read(model.binding.locator("layers_output", 3))}
    >>> values, _ = read_values(model, encoding, reads)   # forward stops after layer 3
    >>> values["h3"].shape                                   # (batch, seq, hidden)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ._layout import Locator, to_standard
from ._nnsight_compat import (
    in_trace,
    native_module,
    pipeline_text_encoding,
    stored_edits,
    supply_position_ids,
)
from ._paths import module_at

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["ENABLED", "Read", "fast_path_available", "forward_inputs", "read_values", "text_encoding"]


@dataclass(frozen=True)
class Read:
    """One value to read: where it is, and what to keep of it.

    Attributes:
        loc: The value's `Locator` (from ``model.binding``).
        pick: Applied to the standard-shaped value inside the hook (e.g. select the
            last token), so only what is kept stays alive; ``None`` keeps it whole.
    """

    loc: Locator
    pick: Callable[[torch.Tensor], torch.Tensor] | None = None


#: Set to ``False`` to send every read through nnsight (to compare the two paths, or to debug).
ENABLED = True


class _Stop(Exception):
    """Every value was read: the rest of the forward is not needed."""


def fast_path_available(model: StandardizedTransformer, locators: list[Locator], remote: Any = False) -> bool:
    """Whether plain hooks give these values exactly as a trace would (see the module docstring).

    Example::

        >>> fast_path_available(model, [model.binding.locator("layers_output", 0)])
        True
    """
    if not ENABLED or remote or in_trace() or stored_edits(model):
        return False
    return all(loc is not None and not loc.op and loc.expect is None for loc in locators)


def text_encoding(model: StandardizedTransformer, prompts: list[str]) -> dict[str, torch.Tensor] | None:
    """The encoding ``model.trace(prompts)`` runs on (see `pipeline_text_encoding`), or ``None``.

    Example::

        >>> text_encoding(model, ["Hello", "The cat sat"])["attention_mask"]   # (batch, seq), left-padded
    """
    model._prepare(False)
    return pipeline_text_encoding(model, prompts)


def forward_inputs(model: StandardizedTransformer, encoding: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``encoding`` as nnsight hands it to the forward: its position ids for left-padded rows, on the model's device."""
    inputs = dict(encoding)
    supply_position_ids(model, inputs)
    device = _input_device(native_module(model))
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _input_device(root: torch.nn.Module) -> torch.device:
    embeddings = root.get_input_embeddings() if hasattr(root, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    return next(root.parameters()).device


@torch.no_grad()
def read_values(
    model: StandardizedTransformer,
    encoding: Mapping[str, torch.Tensor],
    reads: Mapping[str, Read],
    *,
    keep_output: bool = False,
    **forward_kwargs: Any,
) -> tuple[dict[str, torch.Tensor], Any]:
    """Run one forward of ``encoding`` with plain hooks; return ``({key: value}, model output)``.

    Example::

        >>> values, out = read_values(model, enc, {"x": Read(loc)}, keep_output=True)

    Each value has its standard shape (``(batch, seq, hidden)`` for the residual
    stream), after ``pick``. The forward stops as soon as every value is read,
    unless ``keep_output`` (the model output is then returned; otherwise
    ``None``). A module called several times in one forward gives the value of
    its first call, as ``envoy.output`` does.

    Args:
        model: The model (dispatched here if it is not).
        encoding: ``input_ids`` and ``attention_mask`` ``(batch, seq)`` (left-padded).
        reads: Key -> `Read`.
        keep_output: Run the whole forward and return the model's output.
        **forward_kwargs: Passed to the forward (``use_cache``, ``past_key_values``, ...).
    """
    model._prepare(False)
    root = native_module(model)
    inputs = forward_inputs(model, encoding)
    tokens = inputs.get("input_ids", inputs.get("inputs_embeds"))
    batch_shape = tuple(tokens.shape[:2]) if isinstance(tokens, torch.Tensor) else None
    groups: dict[tuple[str, str], list[tuple[str, Read]]] = {}
    for key, read in reads.items():
        groups.setdefault((read.loc.path, read.loc.io), []).append((key, read))
    found: dict[str, torch.Tensor] = {}
    wanted = len(reads)

    def take(items: list[tuple[str, Read]], native: Callable[[Locator], torch.Tensor]) -> None:
        for key, read in items:
            if key in found:
                continue  # a later call of the same module
            value = native(read.loc)
            if read.loc.flat and batch_shape is not None:
                value = value.view(*batch_shape, value.shape[-1])
            if read.loc.clone:
                value = value.clone()
            value = to_standard(read.loc, value)
            found[key] = read.pick(value) if read.pick is not None else value
        if not keep_output and len(found) == wanted:
            raise _Stop

    def output_hook(items: list[tuple[str, Read]]) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            take(items, lambda loc: output if loc.key is None else output[loc.key])

        return hook

    def input_hook(items: list[tuple[str, Read]]) -> Any:
        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            take(items, lambda loc: args[loc.key] if isinstance(loc.key, int) else kwargs[loc.key])

        return hook

    handles = []
    try:
        for (path, io), items in groups.items():
            module = module_at(root, path)
            if io == "output":
                handles.append(module.register_forward_hook(output_hook(items), prepend=True))
            else:
                handles.append(module.register_forward_pre_hook(input_hook(items), with_kwargs=True))
        output = None
        try:
            output = root(**inputs, **forward_kwargs)
        except _Stop:
            pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [key for key in reads if key not in found]
    if missing:
        from ._errors import UnavailableError

        raise UnavailableError(
            model.model_type, missing[0], f"the forward never reached {reads[missing[0]].loc.path}"
        )
    return found, output
