"""Every use of a private nnsight, torch or transformers internal, in one place.

uniterp otherwise uses public APIs only. Each function below names the internal it
relies on; all were checked on the versions in `CHECKED_ON`, and
``tests/test_nnsight_compat.py`` exercises every one of them on a tiny model, so an
upgrade that changes one fails loudly there instead of silently elsewhere.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = [
    "CHECKED_ON",
    "OutOfOrderError",
    "cache_selectable",
    "drop_last_cache_tokens",
    "child_envoy",
    "current_mediator",
    "drop_standalone_envoy",
    "expert_gating",
    "envoy_at",
    "in_step_loop",
    "in_trace",
    "invoke_rows",
    "native_module",
    "op_base",
    "pipeline_text_encoding",
    "quiet_fake_tensor_logs",
    "refresh_envoys",
    "select_cache_rows",
    "is_instrumented",
    "source_calls",
    "source_compiled",
    "source_names",
    "source_op",
    "standalone_envoy",
    "stored_edits",
    "supply_position_ids",
    "tensor_version",
    "uninstrument",
]

#: The versions every internal below was checked against.
CHECKED_ON = {"nnsight": "0.8.1", "torch": "2.13.0", "transformers": "5.24.0"}

# nnsight 0.8.1: raised into an intervention that asks for a value the forward
# already ran past (and, by design, to end a generation loop that asked for a step
# the run did not make). uniterp's `OrderError` derives from it so that nnsight's
# own handling of the latter keeps working.
from nnsight.intervention.interleaver import OutOfOrderError  # noqa: E402


def native_module(envoy: Any) -> torch.nn.Module:
    """The torch module an nnsight envoy (or the model itself) wraps (``Envoy._module``)."""
    return envoy._module


def child_envoy(envoy: Any, name: str) -> Any:
    """The child envoy ``name`` of ``envoy``.

    nnsight mounts a submodule whose name collides with a value every envoy serves
    (BERT's ``output``) under ``Envoy.OVERLOAD_PREFIX + name``.
    """
    from nnsight.intervention.envoy import Envoy

    if not name.startswith("_") and inspect.isdatadescriptor(getattr(Envoy, name, None)):
        name = f"{Envoy.OVERLOAD_PREFIX}{name}"
    return getattr(envoy, name)


def envoy_at(root: Any, path: str) -> Any:
    """The envoy at native module ``path`` (dotted, ``""`` for ``root`` itself) under ``root``.

    Example::

        >>> envoy_at(model, "model.layers.0.self_attn")
    """
    envoy = root
    for part in path.split(".") if path else ():
        envoy = child_envoy(envoy, part)
    return envoy


def standalone_envoy(root: Any, module: torch.nn.Module, name: str) -> Any:
    """An envoy for ``module``, outside the model's module tree, served by ``root``'s traces.

    A module that is called from a hook in the forward pass (not a child of the
    model) becomes readable and writable at ``envoy.output`` like any module, as
    nnsight's own ``model.generator``: built with the model's ``interleaver`` and
    path ``{root.path}.{name}`` (nnsight 0.8's ``Envoy(module, path=, interleaver=,
    parent=)``). The model's modules are not touched. Undo with `drop_standalone_envoy`.
    """
    from nnsight.intervention.envoy import Envoy

    return Envoy(module, path=f"{root.path}.{name}", interleaver=root.interleaver, parent=root)


def drop_standalone_envoy(envoy: Any) -> None:
    """Forget an envoy made by `standalone_envoy` (its entry in ``Interleaver.envoys``, a weak mapping)."""
    envoys = getattr(envoy.interleaver, "envoys", None)
    key = id(envoy._module)
    if envoys is not None and envoys.get(key) is envoy:
        del envoys[key]


def refresh_envoys(root: Any) -> list[str]:
    """Re-point envoys whose module the model has since replaced; their paths.

    nnsight wraps the modules present at load. A model that swaps a submodule for a
    new one in its forward (BigBird replaces its block-sparse attention by full
    attention on short inputs) leaves the envoy on the old module, whose values
    never arrive. Uses ``Envoy._child_map`` and ``Envoy._update``; the envoy objects
    are kept, so paths cached elsewhere stay valid.
    """
    refreshed: list[str] = []
    for name, child in list(getattr(root, "_child_map", {}).items()):
        current = root._module._modules.get(name)
        if current is not None and current is not child._module:
            child._update(current)
            refreshed.append(child.path)
        else:
            refreshed += refresh_envoys(child)
    return refreshed


def current_mediator() -> Any | None:
    """The nnsight mediator of the running intervention code, or ``None`` outside one.

    nnsight 0.8 runs intervention code in a greenlet holding a weak reference to
    its mediator as ``.mediator``.
    """
    from greenlet import getcurrent

    ref = getattr(getcurrent(), "mediator", None)
    return ref() if ref is not None else None


def in_trace() -> bool:
    """Whether the caller runs as intervention code of an active trace."""
    from greenlet import getcurrent

    return getattr(getcurrent(), "mediator", None) is not None


def in_step_loop() -> bool:
    """Whether the running intervention is pinned to a step of a ``tracer.iter`` loop.

    nnsight ends such a loop that outran the generation by throwing
    ``OutOfOrderError`` into it and recognises the very same object coming back
    (``mediator.iteration`` is 0 outside a loop); it must not be replaced there.
    """
    mediator = current_mediator()
    return mediator is not None and getattr(mediator, "iteration", 0) != 0


def invoke_rows(leading: int, per_row: int = 1) -> tuple[int, int] | None:
    """This invoke's rows ``[start, stop)`` of a tensor shared whole by several invokes.

    nnsight narrows tensors whose leading dimension is the batch to each invoke's
    rows, but a tensor whose leading dimension is ``batch * per_row`` (bmm-style
    attention weights) or one captured outside nnsight reaches every invoke whole.
    Uses ``mediator.batch_group`` and ``interleaver.batcher`` (``.batching``,
    ``.total``). ``None`` when there is nothing to narrow.
    """
    mediator = current_mediator()
    group = getattr(mediator, "batch_group", None)
    batcher = getattr(getattr(mediator, "interleaver", None), "batcher", None)
    if group is None or batcher is None or not batcher.batching:
        return None
    if leading != batcher.total * per_row:
        return None  # narrowed already, or not batched
    start, size = group
    return start * per_row, (start + size) * per_row


_LABEL = re.compile(r"^(?P<base>.+)_(?P<index>\d+)$")


def op_base(label: str) -> str:
    """The operation name of a ``.source`` label without its counter: ``"nn_functional_softmax_0"`` ->
    ``"nn_functional_softmax"``.

    nnsight 0.8 labels each call ``{dotted name joined by _}_{n}`` and each
    assignment ``{target}_{n}``; the counter is not stable across versions, so
    uniterp matches operations by their base name and never hard-codes a label.
    """
    match = _LABEL.match(label)
    return match.group("base") if match else label


def source_names(envoy: Any) -> tuple[str, ...]:
    """The operation labels of the module's ``forward``, in source order (``envoy.source.names``)."""
    return tuple(envoy.source.names)


def source_compiled(envoy: Any) -> Any:
    """The labels, lines and text nnsight gives the module's ``forward``, WITHOUT instrumenting it.

    ``envoy.source`` instruments the module's forward permanently (every later
    trace then pays a small cost per operation). Structural location only needs the
    labels, so this compiles the forward the same way nnsight does (its decorators
    peeled, ``nnsight.intervention.source.compiled``, cached per code object) and
    leaves the module untouched. Returns nnsight's ``Compiled`` (``names``,
    ``lines``, ``source``).
    """
    from nnsight.intervention import source as nn_source

    module = native_module(envoy)
    state = module.__dict__.get(nn_source.STATE)
    body = state.original if state is not None else nn_source.module_body(module)
    if not (inspect.isfunction(body) or inspect.ismethod(body)) and callable(body):
        body = type(body).__call__
    function = body.__func__ if inspect.ismethod(body) else body
    inner, _ = nn_source.decorator_chain(function)
    return nn_source.compiled(inner)


def is_instrumented(envoy: Any) -> bool:
    """Whether the module's forward is source-instrumented (``State.sourced``)."""
    from nnsight.intervention import source as nn_source

    state = native_module(envoy).__dict__.get(nn_source.STATE)
    return bool(state is not None and state.sourced)


def uninstrument(envoy: Any) -> None:
    """Undo the source instrumentation of the module's forward (back to ``State.original``).

    For a probe that read operations once; nnsight re-instruments the module the
    next time ``.source`` is used.
    """
    from nnsight.intervention import source as nn_source

    state = native_module(envoy).__dict__.get(nn_source.STATE)
    if state is not None and state.sourced:
        state.body = state.original
        state.sourced = False


def source_calls(envoy: Any) -> tuple[str, ...]:
    """The labels of the module's forward that are function calls (not assignments), in source order.

    nnsight labels a call and an assignment to the same name alike
    (``attention_interface = ...`` and ``attention_interface(...)``); the compiled
    forward's source text and each label's line tell them apart. Does not
    instrument the module (`source_compiled`).
    """
    import ast

    compiled = source_compiled(envoy)
    calls: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(compiled.source)):
        if isinstance(node, ast.Call):
            parts: list[str] = []
            func: Any = node.func
            while True:
                if isinstance(func, ast.Attribute):
                    parts.append(func.attr)
                    func = func.value
                elif isinstance(func, ast.Subscript):
                    func = func.value
                elif isinstance(func, ast.Name):
                    parts.append(func.id)
                    break
                else:
                    break
            calls.add((node.lineno, "_".join(reversed(parts))))
    return tuple(label for label in compiled.names if (compiled.lines.get(label), op_base(label)) in calls)


def source_op(envoy: Any, path: tuple[str, ...]) -> Any:
    """The operation at ``path`` (labels, drilling into called functions) of ``envoy.source``."""
    source = envoy.source
    for name in path[:-1]:
        source = getattr(source, name).source
    return getattr(source, path[-1])


@contextmanager
def quiet_fake_tensor_logs() -> Iterator[None]:
    """Silence torch's error-level log of an op without a fake-tensor kernel (``torch._subclasses.fake_tensor``)."""
    fake_logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake_logger.level
    fake_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        fake_logger.setLevel(level)


def tensor_version(tensor: torch.Tensor) -> int:
    """torch's in-place modification counter of ``tensor`` (``Tensor._version``)."""
    return tensor._version


def cache_selectable(cache: Any) -> bool:
    """Whether a transformers cache can keep a subset of its batch rows.

    transformers 5 caches select rows with ``batch_select_indices``; a hybrid
    cache holds layers (linear attention, state space) that may not.
    """
    return hasattr(cache, "batch_select_indices") and all(
        hasattr(layer, "batch_select_indices") for layer in getattr(cache, "layers", ())
    )


def select_cache_rows(cache: Any, rows: torch.Tensor, from_layer: int = 0) -> None:
    """Keep only batch ``rows`` of ``cache``, in place (a CPU index works on any device).

    Layers before ``from_layer`` are left as they are (a forward that skips those
    layers never reads them). A plain ``DynamicLayer`` holding one row, selected
    for every row, gets a broadcast view of it instead of a copy
    (``DynamicLayer.keys`` / ``.values``; its ``update`` concatenates new tokens
    into a fresh tensor, so the view is never written); other layers select with
    their ``batch_select_indices``.
    """
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if layers is None:
        cache.batch_select_indices(rows)
        return
    single = bool((rows == 0).all())
    for index, layer in enumerate(layers):
        if index < from_layer:
            continue
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if (
            single
            and type(layer) is DynamicLayer
            and isinstance(keys, torch.Tensor)
            and isinstance(values, torch.Tensor)
            and keys.dim() == 4
            and keys.shape[0] == 1
            and values.shape[0] == 1
        ):
            layer.keys = keys.expand(len(rows), *keys.shape[1:])
            layer.values = values.expand(len(rows), *values.shape[1:])
        else:
            layer.batch_select_indices(rows)


def drop_last_cache_tokens(cache: Any, count: int) -> bool:
    """Remove the last ``count`` tokens from every layer of ``cache``, in place; ``False`` (untouched) unless
    every layer is a plain ``DynamicLayer`` (whose ``crop(-count)`` slices its keys and values).

    Sliding-window, linear-attention and state-space layers keep state that cannot
    be rolled back this way; such caches are left alone.
    """
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return False
    if count:
        for layer in layers:
            layer.crop(-count)
    return True


def expert_gating(experts: torch.nn.Module) -> str | None:
    """The name of a fused experts module's custom gating function, or ``None`` for ``act(gate) * up``.

    transformers 5 fused expert modules gate through ``_apply_gate``; the default
    is the function named ``_default_apply_gate`` (compared by name, not imported).
    """
    gate_fn = getattr(type(experts), "_apply_gate", None)
    if gate_fn is None:
        return "no _apply_gate"
    name = getattr(gate_fn, "__qualname__", "")
    return None if name == "_default_apply_gate" else str(name or gate_fn)


def pipeline_text_encoding(model: Any, prompts: list[str]) -> dict[str, torch.Tensor] | None:
    """The encoding nnsight's ``trace`` builds from text prompts, built directly; ``None`` where unsure.

    For text, nnsight 0.8.1 (``processing.preprocess_invoke``) splits the trace's
    keywords with the pipeline's ``_sanitize_parameters`` and runs the
    text-generation pipeline's ``preprocess`` on each prompt; with no
    preprocessing keyword that is ``tokenizer(prompt, return_tensors="pt")`` (the
    prefix a pipeline keeps for XLNet is not applied: nnsight passes only the
    parameters it split off the trace's keywords). ``processing.collate`` then
    pads the rows, each field of ``ROW_FIELDS`` with its value there (``None``:
    the pad token), on the tokenizer's padding side. Splitting the keywords costs
    several times the tokenizer call (about 0.15 ms a trace); this builds the
    same tensors from one batched tokenizer call. Call it only for keywords that
    are no preprocessing option (`uniterp._inputs.text_as_encoding` decides).
    Returns ``None`` (nnsight's route is then taken) when the pipeline is not
    the text-generation one, or a field has no known padding. Checked on nnsight
    0.8.1 / transformers 5.24.0: ``tests/test_nnsight_compat.py`` compares the
    tensors the model receives both ways.
    """
    from nnsight.modeling.processing import ROW_FIELDS, TARGET_FIELDS
    from transformers import TextGenerationPipeline

    pipe = getattr(model, "pipeline", None)
    tokenizer = getattr(model, "tokenizer", None)
    if pipe is None or tokenizer is None or type(pipe).preprocess is not TextGenerationPipeline.preprocess:
        return None
    fields = dict(tokenizer(list(prompts)))
    if not fields or any(key not in ROW_FIELDS or key in TARGET_FIELDS for key in fields):
        return None
    lengths = [len(row) for row in fields.get("input_ids", ())]
    if len(lengths) != len(prompts) or min(lengths, default=0) == 0:
        return None
    width = max(lengths)
    left = getattr(tokenizer, "padding_side", None) == "left"
    out: dict[str, torch.Tensor] = {}
    for key, rows in fields.items():
        fill = ROW_FIELDS[key]
        if fill is None:
            fill = getattr(tokenizer, "pad_token_id", None)
        if any(len(row) != n for row, n in zip(rows, lengths)) or (fill is None and len(set(lengths)) > 1):
            return None
        pad = [[fill] * (width - len(row)) for row in rows]
        padded = [p + list(row) if left else list(row) + p for p, row in zip(pad, rows)]
        out[key] = torch.tensor(padded, dtype=torch.long)
    return out


def stored_edits(model: Any) -> int:
    """How many interventions ``model.edit(inplace=True)`` stored on the model (``Envoy._edits``).

    nnsight replays them in every trace of the model; a forward run outside
    nnsight would miss them.
    """
    return len(getattr(model, "_edits", ()) or ())


def supply_position_ids(model: Any, encoding: dict[str, Any]) -> None:
    """Add the position ids nnsight gives a left-padded text batch, in place (``processing.supply_position_ids``).

    nnsight 0.8.1 counts each left-padded row from its first token (and leaves an
    unpadded batch, or one that already has ``position_ids``, alone); a forward
    run outside nnsight must do the same to compute the same values.
    """
    from nnsight.modeling.processing import supply_position_ids as supply

    supply(model, encoding)
