"""Values inside the attention and the MLP: where each one lives on a layer, or why it does not.

Two kinds of place:

- **module seams**, found like the residual values and checked by the same probe:
  ``head_outputs`` (the input of the attention's output projection, split per
  head), ``mlp_neurons`` (the input of the MLP's down projection), and on a sparse
  mixture of experts ``router_logits`` (the router's output) and
  ``expert_indices`` / ``expert_weights`` (the routing the experts module receives);
- **operations inside the attention forward**, found through nnsight's ``.source``
  by what they are, never by a fixed label: ``queries`` / ``keys`` / ``values``
  are the tensors the attention kernel receives (after rotary embeddings, q/k
  norms and the key/value cache), ``queries_pre_rotary`` / ``keys_pre_rotary``
  the inputs of the rotary embedding. Reading one instruments that attention
  forward (nnsight's source tracing), which costs a little on later traces too.

Per-architecture names come from the weight-layout table where a family has a
row there, else from the generic names in `uniterp._rules`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ._nnsight_compat import envoy_at, op_base, source_calls
from ._paths import join, module_at
from ._rules import (
    DOWN_PROJECTION_NAMES,
    EXPERTS_NAMES,
    KERNEL_CALLS,
    OUTPUT_PROJECTION_NAMES,
    ROTARY_CALLS,
    ROUTER_NAMES,
)
from ._sizes import Sizes

__all__ = ["INTERNAL_SITES", "InternalPaths", "kernel_locators", "resolve_internal_modules"]

#: Per-layer values inside the blocks, in forward order.
INTERNAL_SITES: tuple[str, ...] = (
    "queries_pre_rotary",
    "keys_pre_rotary",
    "queries",
    "keys",
    "values",
    "head_outputs",
    "router_logits",
    "expert_indices",
    "expert_weights",
    "mlp_neurons",
)
#: The ones found by operation (the rest are module seams).
KERNEL_SITES: tuple[str, ...] = ("queries_pre_rotary", "keys_pre_rotary", "queries", "keys", "values")


@dataclass
class InternalPaths:
    """Module seams of one layer: site -> (module path relative to the block, ``"input"``/``"output"``)."""

    modules: dict[str, tuple[str, str]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)


def _linear_like(module: Any) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 2


def _child(parent: torch.nn.Module, names: tuple[str, ...], preferred: str | None) -> str | None:
    children = dict(parent.named_children())
    for name in ((preferred,) if preferred else ()) + names:
        if name in children and _linear_like(children[name]):
            return name
    return None


def resolve_internal_modules(
    block: torch.nn.Module, modules: dict[str, str], model_type: str, config: Any, sizes: Sizes
) -> InternalPaths:
    """Where the module-seam values of one block live (relative to the block), or why not.

    Example::

        >>> resolve_internal_modules(model.model.layers[0], {"self_attn": "self_attn", "mlp": "mlp"},
        ...                          "llama", config, sizes).modules["head_outputs"]
        ('self_attn.o_proj', 'input')
    """
    from ._weight_layouts import attention_layout_for, mlp_layout_for

    found = InternalPaths()
    attention = modules.get("self_attn")
    if attention is None:
        found.reasons["head_outputs"] = "this layer has no softmax attention"
    else:
        row = _row(attention_layout_for, model_type, config)
        name = _child(block.get_submodule(attention), OUTPUT_PROJECTION_NAMES, getattr(row, "o", None))
        if name is None:
            found.reasons["head_outputs"] = (
                f"the attention ({type(block.get_submodule(attention)).__name__}) has no output projection "
                f"module (tried {list(OUTPUT_PROJECTION_NAMES)}): its heads are combined in code"
            )
        else:
            found.modules["head_outputs"] = (join(attention, name), "input")
    _resolve_mlp(block, modules.get("mlp"), model_type, config, found, mlp_layout_for)
    return found


def _row(lookup: Any, model_type: str, config: Any) -> Any:
    try:
        return lookup(model_type, config)
    except Exception:  # noqa: BLE001 - a row that does not fit this config is no row
        return None


def _resolve_mlp(
    block: torch.nn.Module, mlp: str | None, model_type: str, config: Any, found: InternalPaths, lookup: Any
) -> None:
    moe_reason = "this layer's MLP is not a sparse mixture of experts"
    row = _row(lookup, model_type, config)
    if mlp is None:
        if row is not None and row.on_block and module_at(block, row.out) is not None:
            found.modules["mlp_neurons"] = (row.out, "input")
        else:
            found.reasons["mlp_neurons"] = "the block has no single MLP module"
        for site in ("router_logits", "expert_indices", "expert_weights"):
            found.reasons[site] = moe_reason
        return
    module = block.get_submodule(mlp)
    children = dict(module.named_children())
    experts = next((n for n in EXPERTS_NAMES if n in children), None)
    if experts is not None:
        found.reasons["mlp_neurons"] = (
            f"a sparse mixture of experts ({type(module).__name__}) runs each expert on the tokens routed "
            "to it: there is no single (batch, seq, d_mlp) activation"
        )
        router = next((n for n in ROUTER_NAMES if n in children), None)
        if router is None:
            found.reasons["router_logits"] = f"no router module found (tried {list(ROUTER_NAMES)})"
        else:
            found.modules["router_logits"] = (join(mlp, router), "output")
        found.modules["expert_indices"] = (join(mlp, experts), "input")
        found.modules["expert_weights"] = (join(mlp, experts), "input")
        return
    for site in ("router_logits", "expert_indices", "expert_weights"):
        found.reasons[site] = moe_reason
    name = _child(
        module, DOWN_PROJECTION_NAMES, getattr(row, "out", None) if row and not row.on_block else None
    )
    if name is None:
        found.reasons["mlp_neurons"] = (
            f"the MLP ({type(module).__name__}) has no down projection module (tried {list(DOWN_PROJECTION_NAMES)})"
        )
    else:
        found.modules["mlp_neurons"] = (join(mlp, name), "input")


def kernel_locators(
    model: Any,
    layer: int,
    stack: str,
    attention: str | None,
    sizes: Sizes,
    cache: dict[type, Any],
) -> tuple[dict[str, Any], dict[str, str]]:
    """The operation-found values of one layer: ``(locators, reasons)``.

    The attention forward's source is parsed once per attention class (no forward
    runs and nothing is instrumented); a value is located only where exactly one
    call of the known kernel (or rotary) functions appears.
    """
    from ._layout import Locator

    if attention is None:
        reason = "this layer has no softmax attention"
        return {}, {site: reason for site in KERNEL_SITES}
    block = join(stack, str(layer))
    envoy = envoy_at(model, join(block, attention))
    from ._nnsight_compat import native_module

    kind = type(native_module(envoy))
    if kind not in cache:
        cache[kind] = _find_calls(envoy, kind.__name__)
    found = cache[kind]
    locators: dict[str, Locator] = {}
    reasons: dict[str, str] = {}
    path = join(block, attention)
    heads, dim = sizes.num_heads, sizes.head_dim
    for site, entry in found.items():
        if isinstance(entry, str):
            reasons[site] = entry
            continue
        label, key = entry
        # queries have the model's head count; keys and values may have fewer (grouped) and, in the
        # kernel, any head width (latent attention's keys are wider than its values); before the
        # rotary embedding every head must be whole (a partial rotary embedding is refused)
        n = heads if site.startswith("queries") else None
        width = dim if site.endswith("_pre_rotary") else None
        locators[site] = Locator(path, "input", key, op=(label,), expect=(None, n, None, width))
    return locators, reasons


def _find_calls(envoy: Any, kind: str) -> dict[str, Any]:
    """site -> (label, argument index) or a reason, for one attention class."""
    try:
        calls = source_calls(envoy)
    except Exception as error:  # noqa: BLE001 - no Python source to inspect
        reason = f"the attention forward ({kind}) has no inspectable source ({type(error).__name__})"
        return {site: reason for site in KERNEL_SITES}
    found: dict[str, Any] = {}
    kernel = [(c, KERNEL_CALLS[op_base(c)]) for c in calls if op_base(c) in KERNEL_CALLS]
    if len(kernel) == 1:
        label, first = kernel[0]
        for offset, site in enumerate(("queries", "keys", "values")):
            found[site] = (label, first + offset)
    else:
        reason = (
            f"the attention forward ({kind}) calls no attention kernel uniterp knows "
            f"({', '.join(KERNEL_CALLS)}); it computes attention inline"
            if not kernel
            else f"the attention forward ({kind}) calls the kernel in {len(kernel)} places "
            f"({', '.join(c for c, _ in kernel)}), and which one runs depends on the configuration"
        )
        for site in ("queries", "keys", "values"):
            found[site] = reason
    rotary = [(c, ROTARY_CALLS[op_base(c)]) for c in calls if op_base(c) in ROTARY_CALLS]
    if len(rotary) == 1:
        label, first = rotary[0]
        found["queries_pre_rotary"] = (label, first)
        found["keys_pre_rotary"] = (label, first + 1)
    else:
        reason = (
            "the model applies no rotary position embedding (queries and keys are not rotated)"
            if not rotary
            else f"the attention forward ({kind}) applies the rotary embedding in {len(rotary)} calls "
            "(to parts of each head separately), so there is no single pre-rotary query or key"
        )
        found["queries_pre_rotary"] = found["keys_pre_rotary"] = reason
    return found


def internal_locators(
    base: str, paths: InternalPaths, seen: dict[str, Any], want: Any, sizes: Sizes
) -> tuple[dict[str, Any], dict[str, str]]:
    """Locators of one layer's module-seam values from what the probe saw, and reasons where none fit."""
    from ._layout import Locator
    from ._layout_probe import _describe, _is_tensor

    locators: dict[str, Locator] = {}
    reasons: dict[str, str] = {}
    for site, (rel, io) in paths.modules.items():
        path = join(base, rel)
        record = seen.get(path)
        if record is None:
            reasons[site] = f"{path} never ran in a forward pass"
            continue
        if record.calls > 1:
            reasons[site] = f"{path} ran {record.calls} times in one forward pass"
            continue
        if site in ("expert_indices", "expert_weights"):
            index = 1 if site == "expert_indices" else 2
            args = record.args
            value = args[index] if len(args) > index else None
            kind = _tokens_like(value, want.batch, want.seq)
            floating = _is_tensor(value) and value[2]
            if kind is None or floating != (site == "expert_weights"):
                reasons[site] = (
                    f"the experts module {path} is not called as experts(hidden, indices, weights)"
                )
                continue
            locators[site] = Locator(path, "input", index, flat=kind == "flat")
            continue
        if io == "input":
            width = (sizes.num_heads or 0) * (sizes.head_dim or 0) if site == "head_outputs" else None
            key, kind = _first_input(record, want, width)
            if kind is None:
                reasons[site] = f"{path} receives {_describe(record.args)}, not (batch, seq, width) states"
                continue
            heads = sizes.num_heads if site == "head_outputs" else None
            locators[site] = Locator(path, "input", key, flat=kind == "flat", heads=heads)
            continue
        out = record.output
        key = None
        if isinstance(out, tuple) and not _is_tensor(out) and out:
            key, out = 0, out[0]
        kind = _tokens_like(out, want.batch, want.seq)
        if kind is None:
            reasons[site] = f"{path} returns {_describe(record.output)}, not (tokens, n_experts) logits"
            continue
        length = len(record.output) if key is not None else 0
        locators[site] = Locator(path, "output", key, flat=kind == "flat", tuple_len=length)
    return locators, reasons


def _tokens_like(m: Any, batch: int, seq: int, width: int | None = None) -> str | None:
    """``"full"`` for ``(batch, seq, w)``, ``"flat"`` for ``(batch * seq, w)`` (any ``w`` unless given)."""
    from ._layout_probe import _is_tensor

    if not _is_tensor(m):
        return None
    shape = m[1]
    if width is not None and (not shape or shape[-1] != width):
        return None
    if len(shape) == 3 and shape[:2] == (batch, seq):
        return "full"
    if len(shape) == 2 and shape[0] == batch * seq:
        return "flat"
    return None


def _first_input(record: Any, want: Any, width: int | None) -> tuple[int | str | None, str | None]:
    candidates: list[tuple[int | str, Any]] = list(enumerate(record.args))
    candidates += [(k, v) for k, v in record.kwargs.items()]
    for key, value in candidates:
        kind = _tokens_like(value, want.batch, want.seq, width)
        if kind is not None:
            return key, kind
    return None, None


def with_kernel_sites(model: Any, layout: Any, stack: str, sizes: Sizes) -> Any:
    """``layout`` with the operation-found values (queries, keys, values, pre-rotary) of every layer added.

    The labels are read without instrumenting anything; then one forward on fake
    tensors (nnsight's ``scan``) reads each operation's argument shapes, so a value
    whose operation receives something else (a partial rotary embedding gets part
    of each head) is refused here with the reason rather than when read; the
    attention forwards are left uninstrumented afterwards.
    """
    from dataclasses import replace

    from ._layout import FrozenDict

    cache: dict[type, Any] = {}
    found_all: list[dict[str, Any]] = []
    missing_all: list[dict[str, str]] = []
    for index in range(len(layout.layers)):
        found, missing = kernel_locators(
            model, index, stack, layout.modules[index].get("self_attn"), sizes, cache
        )
        found_all.append(found)
        missing_all.append(missing)
    _verify_shapes(model, found_all, missing_all)
    layers = tuple(FrozenDict({**old, **new}) for old, new in zip(layout.layers, found_all))
    reasons = tuple(FrozenDict({**old, **new}) for old, new in zip(layout.unavailable, missing_all))
    return replace(layout, layers=layers, unavailable=reasons)


def _verify_shapes(model: Any, found: list[dict[str, Any]], missing: list[dict[str, str]]) -> None:
    """Check every operation-found value's shape in one fake-tensor forward; move misfits to ``missing``."""
    from ._nnsight_compat import envoy_at, is_instrumented, uninstrument

    ops: list[tuple[int, tuple[str, ...], str]] = []
    for layer, locators in enumerate(found):
        for loc in sorted({(loc.op, loc.path) for loc in locators.values()}, key=lambda o: o[0]):
            ops.append((layer, *loc))
    if not ops:
        return
    envoys = {path: envoy_at(model, path) for _, _, path in ops}
    was = {path: is_instrumented(envoy) for path, envoy in envoys.items()}
    shapes: dict[tuple[int, tuple[str, ...]], list[Any]] = {}
    try:
        completed = _read_shapes(model, ops, envoys, shapes, fake=True)
        if not completed and model.dispatched:  # fake tensors cannot run it: the weights are loaded anyway
            shapes.clear()
            completed = _read_shapes(model, ops, envoys, shapes, fake=False)
    finally:
        for path, envoy in envoys.items():
            if not was[path]:
                uninstrument(envoy)
    for layer, locators in enumerate(found):
        for site in list(locators):
            loc = locators[site]
            if (layer, loc.op) not in shapes:
                if completed:  # the forward ran to its end without this operation on this layer
                    missing[layer][site] = (
                        f"{loc.path}.source.{'.'.join(loc.op)} does not run on this layer (the forward takes "
                        "another branch here, e.g. a layer without rotary embeddings)"
                    )
                    del locators[site]
                continue  # else the probe forward did not finish: the shape is checked when read
            args = shapes[layer, loc.op]
            shape = args[loc.key] if isinstance(loc.key, int) and loc.key < len(args) else None
            expect = loc.expect or ()
            if (
                shape is None
                or len(shape) != len(expect)
                or any(e is not None and e != d for e, d in zip(expect, shape))
            ):
                wanted = "(" + ", ".join("*" if e is None else str(e) for e in expect) + ")"
                hint = ""
                if shape and len(shape) == len(expect) and expect[-1] is not None and shape[-1] < expect[-1]:
                    hint = " (it receives part of each head: a partial rotary embedding)"
                missing[layer][site] = (
                    f"{loc.path}.source.{'.'.join(loc.op)} receives argument {loc.key} of shape {shape}, not "
                    f"{wanted}{hint}"
                )
                del locators[site]


def _read_shapes(
    model: Any,
    ops: list[tuple[int, tuple[str, ...], str]],
    envoys: dict[str, Any],
    shapes: dict[tuple[int, tuple[str, ...]], list[Any]],
    fake: bool,
) -> bool:
    """Fill ``shapes`` with each operation's argument shapes; whether the forward ran to its end.

    One invoke per operation: an operation that does not run on some layer (a layer
    without rotary embeddings) leaves only its own request unanswered, which nnsight
    reports after the forward as ``OutOfOrderError``; any other error means the
    forward itself did not finish.
    """
    import torch
    from nnsight.modeling.transformers import TransformersModel

    from ._nnsight_compat import OutOfOrderError, quiet_fake_tensor_logs, source_op
    from ._rules import PROBE_PROMPTS

    # the plain nnsight trace: the model is being bound, so uniterp's own trace() would bind it again
    tracing = model.scan() if fake else TransformersModel.trace(model)
    try:
        with quiet_fake_tensor_logs(), torch.no_grad():
            with tracing as tracer:
                for layer, op, path in ops:
                    with tracer.invoke(list(PROBE_PROMPTS)):
                        args, _ = source_op(envoys[path], op).inputs
                        shapes[layer, op] = [tuple(a.shape) if hasattr(a, "shape") else None for a in args]
    except OutOfOrderError:
        return True
    except Exception:  # noqa: BLE001 - the forward failed (no fake-tensor kernel, ...)
        return False
    return True
