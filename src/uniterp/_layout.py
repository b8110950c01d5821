"""Load-time structural probe: where each standardized value sits, layer by layer.

One forward on a two-prompt batch (under nnsight's ``scan``, i.e. fake tensors and
no weights, when the model allows it) with plain PyTorch hooks on every module a
standardized value comes from. From what the hooks see we fix, per layer, whether
a module returns a tensor or a tuple, which argument carries the hidden states,
and whether a value is flattened to ``(batch * seq, hidden)``; and we check every
value has the shape it should.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from ._errors import ArchitectureError
from ._spec import ArchitectureSpec

__all__ = ["LAYER_SITES", "Layout", "Locator", "probe_layout", "to_native", "to_standard"]

logger = logging.getLogger("uniterp")

#: Per-layer standardized values, in forward order.
LAYER_SITES: tuple[str, ...] = (
    "layers_input",
    "attentions_input",
    "attentions_output",
    "mlps_input",
    "mlps_output",
    "layers_output",
)

_PROBE_PROMPTS = ["The Eiffel Tower is in the city of", "hello world"]


@dataclass(frozen=True)
class Locator:
    """Where one value lives: a module, its input or output, and which element.

    Attributes:
        path: Native module path relative to the ``*ForCausalLM`` module.
        io: ``"input"`` or ``"output"``.
        key: For inputs, the positional index (int) or keyword name (str) of the
            hidden states; for outputs, the tuple index, or ``None`` for a tensor.
        flat: The module sees ``(batch * seq, hidden)`` instead of ``(batch, seq, hidden)``.
        tuple_len: Length of the output tuple (0 for a tensor output).
        tuple_nones: Indices of tuple elements that were ``None`` at probe time.
        clone: The model modifies this tensor in place later in the forward pass
            (Falcon adds the attention output into the MLP output), so a read
            takes a copy to keep the value as the module produced it.
        streams: How a value holding several residual streams per token is
            packed natively: ``"split"`` ``(batch, seq, n, hidden)``, ``"packed"``
            ``(batch, seq, n * hidden)`` or ``"leading"`` ``(n, batch, seq,
            hidden)``; it is always shown as ``(batch, seq, n, hidden)``.
        n_streams: Number of residual streams (1 without ``streams``).
        seq_first: The model keeps hidden states as ``(seq, batch, hidden)``
            (XLNet); they are shown as ``(batch, seq, hidden)``.
    """

    path: str
    io: Literal["input", "output"]
    key: int | str | None
    flat: bool = False
    tuple_len: int = 0
    tuple_nones: tuple[int, ...] = ()
    clone: bool = False
    streams: Literal["split", "packed", "leading"] | None = None
    n_streams: int = 1
    seq_first: bool = False


def to_standard(loc: Locator, value: torch.Tensor) -> torch.Tensor:
    """The native value at ``loc`` shown as ``(batch, seq, hidden)`` or ``(batch, seq, n_streams, hidden)`` (a view)."""
    if loc.seq_first:
        return value.transpose(0, 1)
    if loc.streams == "packed":
        return value.unflatten(-1, (loc.n_streams, -1))
    if loc.streams == "leading":
        return value.permute(1, 2, 0, 3)
    return value


def to_native(loc: Locator, value: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_standard`: a standard-shaped value in the native packing."""
    if loc.seq_first:
        return value.transpose(0, 1)
    if loc.streams == "packed":
        return value.flatten(-2)
    if loc.streams == "leading":
        return value.permute(2, 0, 1, 3)
    return value


@dataclass
class Layout:
    """The probe's findings for one model.

    Attributes:
        token_embeddings: Locator of the embedding output.
        layers: One dict per layer mapping a site name to its `Locator`.
        unavailable: One dict per layer mapping a site name to the reason it is
            unavailable there.
        modules: One dict per layer mapping ``self_attn``/``mlp`` to the native
            path (relative to the block) bound under that name.
        probed_with: ``"scan"`` (fake tensors, no weights) or ``"forward"``.
    """

    token_embeddings: Locator
    layers: list[dict[str, Locator]] = field(default_factory=list)
    unavailable: list[dict[str, str]] = field(default_factory=list)
    modules: list[dict[str, str]] = field(default_factory=list)
    probed_with: str = "scan"

    @property
    def has_flat_sites(self) -> bool:
        """Whether any value is flattened and needs the batch shape to unflatten."""
        return any(loc.flat for layer in self.layers for loc in layer.values())


@dataclass
class _Seen:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any
    calls: int = 1
    # (where, tensor, version at hook time): where is ("arg", i), ("kwarg", k) or ("out", i|None)
    live: list[tuple[tuple[str, Any], torch.Tensor, int]] = field(default_factory=list)

    def mutated(self, where: tuple[str, Any]) -> bool:
        """Whether the tensor at ``where`` was modified in place after the hook ran."""
        return any(w == where and t._version != v for w, t, v in self.live)


def _meta(x: Any) -> Any:
    """Replace tensors by ``("T", shape)`` so nothing fake outlives the probe."""
    if isinstance(x, torch.Tensor):
        return ("T", tuple(x.shape))
    if isinstance(x, (tuple, list)):
        return tuple(_meta(y) for y in x)
    if x is None:
        return None
    return type(x).__name__


def _is_tensor(m: Any) -> bool:
    return isinstance(m, tuple) and len(m) == 2 and m[0] == "T"


@dataclass(frozen=True)
class _Expect:
    """What a hidden-state tensor looks like in the probe batch."""

    batch: int
    seq: int
    hidden: int | None
    n_streams: int = 1
    seq_first: bool = False

    def __str__(self) -> str:
        text = f"(batch, seq, hidden) = ({self.batch}, {self.seq}, {self.hidden})"
        if self.seq_first:
            text = f"(seq, batch, hidden) = ({self.seq}, {self.batch}, {self.hidden})"
        if self.n_streams > 1:
            text += f" or with {self.n_streams} residual streams"
        return text


def _hidden_like(m: Any, want: _Expect) -> str | None:
    """How ``m`` holds hidden states (``"full"``, ``"flat"`` or a stream packing), else ``None``."""
    if not _is_tensor(m):
        return None
    shape, b, s, h, n = m[1], want.batch, want.seq, want.hidden, want.n_streams
    if want.seq_first:
        return (
            "seq_first" if len(shape) == 3 and shape[:2] == (s, b) and (h is None or shape[2] == h) else None
        )
    if len(shape) == 3 and shape[:2] == (b, s) and (h is None or shape[2] == h):
        return "full"
    if len(shape) == 2 and shape[0] == b * s and (h is None or shape[1] == h):
        return "flat"
    if n > 1 and h is not None:
        if shape == (b, s, n, h):
            return "split"
        if shape == (b, s, n * h):
            return "packed"
        if shape == (n, b, s, h):
            return "leading"
    return None


def _locator(path: str, io: Literal["input", "output"], key: Any, kind: str, want: _Expect) -> Locator:
    if kind == "seq_first":
        return Locator(path, io, key, seq_first=True)
    if kind in ("split", "packed", "leading"):
        return Locator(path, io, key, streams=kind, n_streams=want.n_streams)  # type: ignore[arg-type]
    return Locator(path, io, key, flat=kind == "flat")


def _find_input(seen: _Seen, want: _Expect) -> tuple[int | str, str] | None:
    if seen.args:
        kind = _hidden_like(seen.args[0], want)
        if kind:
            return 0, kind

    if "hidden_states" in seen.kwargs:
        kind = _hidden_like(seen.kwargs["hidden_states"], want)
        if kind:
            return "hidden_states", kind
    for index, arg in enumerate(seen.args):
        kind = _hidden_like(arg, want)
        if kind:
            return index, kind
    for name, arg in seen.kwargs.items():
        kind = _hidden_like(arg, want)
        if kind:
            return name, kind
    return None


def _describe(m: Any) -> str:
    if _is_tensor(m):
        return f"tensor{m[1]}"
    if isinstance(m, tuple):
        return "(" + ", ".join(_describe(x) for x in m) + ")"
    return str(m)


def _output_locator(path: str, seen: _Seen, want: _Expect) -> Locator | str:
    out = seen.output
    kind = _hidden_like(out, want)
    if kind:
        return _locator(path, "output", None, kind, want)
    if isinstance(out, tuple) and out and not _is_tensor(out):
        kind = _hidden_like(out[0], want)
        if kind:
            nones = tuple(i for i, x in enumerate(out) if x is None)
            return replace(_locator(path, "output", 0, kind, want), tuple_len=len(out), tuple_nones=nones)
    return f"output is {_describe(out)}, expected {want}"


class _Recorder:
    def __init__(self) -> None:
        self.seen: dict[str, _Seen] = {}
        self.handles: list[Any] = []
        self.watched: set[str] = set()

    def watch(self, path: str, module: torch.nn.Module) -> None:
        if path in self.watched:
            return
        self.watched.add(path)

        def hook(_m: Any, args: Any, kwargs: Any, output: Any) -> None:
            if path in self.seen:
                self.seen[path].calls += 1
                return
            seen = _Seen(_meta(tuple(args)), {k: _meta(v) for k, v in kwargs.items()}, _meta(output))
            candidates: list[tuple[tuple[str, Any], Any]] = [(("arg", i), a) for i, a in enumerate(args)]
            candidates += [(("kwarg", k), v) for k, v in kwargs.items()]
            candidates.append((("out", None), output))
            if isinstance(output, (tuple, list)) and output:
                candidates.append((("out", 0), output[0]))
            for where, tensor in candidates:
                if isinstance(tensor, torch.Tensor):
                    seen.live.append((where, tensor, tensor._version))
            self.seen[path] = seen

        self.handles.append(module.register_forward_hook(hook, with_kwargs=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _module_at(root: torch.nn.Module, path: str) -> torch.nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def probe_layout(model: Any, spec: ArchitectureSpec, model_type: str, hidden: int | None) -> Layout:
    """Run the structural probe on a `StandardizedTransformer` under construction.

    Example::

        >>> layout = probe_layout(model, spec, "llama", 64)
        >>> layout.layers[0]["layers_output"]
        Locator(path='model.layers.0', io='output', key=None, ...)

    Args:
        model: The nnsight model (its ``_module`` may live on the meta device).
        spec: The architecture spec.
        model_type: For error messages.
        hidden: ``hidden_size``; values are checked against it.

    Returns:
        The `Layout`.

    Raises:
        ArchitectureError: A module is missing, never runs, or a value has the
            wrong shape.
    """
    root: torch.nn.Module = model._module
    stack = _module_at(root, spec.layers)
    if not isinstance(stack, torch.nn.ModuleList):
        raise ArchitectureError(model_type, "layers", [spec.layers], "no ModuleList at that path")
    if _module_at(root, spec.embed_tokens) is None:
        raise ArchitectureError(model_type, "embed_tokens", [spec.embed_tokens], "no module at that path")
    if _module_at(root, spec.lm_head) is None:
        raise ArchitectureError(model_type, "lm_head", [spec.lm_head], "no module at that path")
    if spec.final_norm is not None and not hasattr_path(root, spec.final_norm):
        raise ArchitectureError(model_type, "ln_final", [spec.final_norm], "no such attribute")

    io_of = {site: ("input" if site.endswith("_input") else "output") for site in LAYER_SITES}
    resolved = [spec.resolve_layer(block) for block in stack]
    _refuse_absent_everywhere(spec, resolved, model_type)

    def watch_all(root: torch.nn.Module) -> _Recorder:
        recorder = _Recorder()
        recorder.watch(spec.embed_tokens, root.get_submodule(spec.embed_tokens))
        for index, paths in enumerate(resolved):
            base = f"{spec.layers}.{index}"
            for rel in paths.sites.values():
                path = f"{base}.{rel}" if rel else base
                recorder.watch(path, root.get_submodule(path))
        return recorder

    probed_with = "scan"
    recorder = watch_all(root)
    try:
        with _quiet_fake_tensor_logs(), model.scan(_PROBE_PROMPTS):
            pass
    except Exception as error:  # noqa: BLE001 - any scan failure falls back to a real forward
        logger.info(
            "uniterp: structural scan of %s failed (%s); probing with a real forward", model_type, error
        )
        recorder.remove()
        probed_with = "forward"
        model.dispatch()
        root = model._module
        recorder = watch_all(root)
        encoded = model.tokenizer(_PROBE_PROMPTS, return_tensors="pt", padding=True)
        device = next(root.parameters()).device
        try:
            with torch.no_grad():
                root(**{k: v.to(device) for k, v in encoded.items()})
        except Exception as forward_error:
            raise ArchitectureError(
                model_type, "layers", [spec.layers], f"the probe forward pass failed: {forward_error}"
            ) from forward_error
    finally:
        recorder.remove()
    embed_seen = recorder.seen.get(spec.embed_tokens)
    if embed_seen is None:
        raise ArchitectureError(model_type, "token_embeddings", [spec.embed_tokens], "module never ran")
    if not _is_tensor(embed_seen.output) or len(embed_seen.output[1]) != 3:
        raise ArchitectureError(
            model_type,
            "token_embeddings",
            [spec.embed_tokens],
            f"output is {_describe(embed_seen.output)}, expected (batch, seq, dim)",
        )
    batch, seq = embed_seen.output[1][:2]
    # a model that transposes the batch before embedding keeps (seq, batch, hidden) throughout (XLNet)
    seq_first = (seq, batch) == _probe_batch_shape(model) and batch != seq
    if seq_first:
        batch, seq = seq, batch
    n_streams = 1
    if spec.residual_streams:
        n_streams = int(getattr(model.text_config, spec.residual_streams, 1) or 1)
    want = _Expect(batch, seq, hidden, n_streams, seq_first)
    layout = Layout(
        token_embeddings=Locator(spec.embed_tokens, "output", None, seq_first=seq_first),
        probed_with=probed_with,
    )

    for index, paths in enumerate(resolved):
        base = f"{spec.layers}.{index}"
        locators: dict[str, Locator] = {}
        for site in LAYER_SITES:
            if site not in paths.sites:
                continue
            rel, io = paths.sites[site], io_of[site]
            path = f"{base}.{rel}" if rel else base
            seen = recorder.seen.get(path)
            if seen is None:
                raise ArchitectureError(
                    model_type, f"{site}[{index}]", [path], "the module never ran in a forward pass"
                )
            if seen.calls > 1:
                raise ArchitectureError(
                    model_type,
                    f"{site}[{index}]",
                    [path],
                    f"the module ran {seen.calls} times in one forward pass",
                )
            if io == "input":
                found = _find_input(seen, want)
                if found is None:
                    raise ArchitectureError(
                        model_type,
                        f"{site}[{index}]",
                        [path],
                        f"no argument of shape {want}; "
                        f"saw args {_describe(seen.args)} and keywords "
                        f"{ {k: _describe(v) for k, v in seen.kwargs.items()} }",
                    )
                key, kind = found
                where = ("arg", key) if isinstance(key, int) else ("kwarg", key)
                locators[site] = replace(_locator(path, "input", key, kind, want), clone=seen.mutated(where))
            else:
                found_out = _output_locator(path, seen, want)
                if isinstance(found_out, str):
                    raise ArchitectureError(model_type, f"{site}[{index}]", [path], found_out)
                if seen.mutated(("out", found_out.key)):
                    found_out = replace(found_out, clone=True)
                locators[site] = found_out
        if locators["layers_output"].flat or locators["layers_input"].flat:
            raise ArchitectureError(
                model_type, f"layers_output[{index}]", [base], "the decoder layer works on flattened tokens"
            )
        layout.layers.append(locators)
        layout.unavailable.append(dict(paths.reasons))
        layout.modules.append(dict(paths.modules))
    return layout


def _probe_batch_shape(model: Any) -> tuple[int, int]:
    """``(batch, seq)`` of the probe prompts as the tokenizer pads them."""
    return tuple(model.tokenizer(_PROBE_PROMPTS, return_tensors="pt", padding=True)["input_ids"].shape)


@contextmanager
def _quiet_fake_tensor_logs() -> Iterator[None]:
    """Silence torch's error-level log of an op without a fake-tensor kernel (we fall back)."""
    fake_logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake_logger.level
    fake_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        fake_logger.setLevel(level)


def _refuse_absent_everywhere(spec: ArchitectureSpec, resolved: list[Any], model_type: str) -> None:
    """A module the spec names but no layer holds means the spec is wrong: refuse."""
    for site, wanted in (
        ("attentions_input", spec.attention),
        ("attentions_output", spec.attention_output or spec.attention),
        ("mlps_input", spec.mlp_input or spec.mlp),
        ("mlps_output", spec.mlp_output or spec.mlp),
    ):
        if wanted is None or any(site in paths.sites for paths in resolved):
            continue
        name = "self_attn" if site.startswith("attention") else "mlp"
        if name in spec.unavailable:
            continue
        tried = [f"{spec.layers}.0.{c}" for c in ((wanted,) if isinstance(wanted, str) else wanted)]
        raise ArchitectureError(model_type, f"{site}[0]", tried, "no layer holds a module at that path")


def hasattr_path(root: torch.nn.Module, path: str) -> bool:
    """Whether the dotted attribute ``path`` exists on ``root`` (its value may be ``None``)."""
    obj: Any = root
    for part in path.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True
