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
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from ._errors import ArchitectureError
from ._layout import LAYER_SITES, FrozenDict, Layout, Locator
from ._nnsight_compat import native_module, quiet_fake_tensor_logs, tensor_version
from ._paths import has_path, join, module_at
from ._rules import PROBE_PROMPTS
from ._sizes import Sizes
from ._spec import ArchitectureSpec, LayerPaths

__all__ = ["probe_layout"]

logger = logging.getLogger("uniterp")


@dataclass
class _Seen:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any
    calls: int = 1
    #: when the module last finished, counted over every watched module (forward order)
    finished: int = 0
    # (where, tensor, version at hook time): where is ("arg", i), ("kwarg", k) or ("out", i|None)
    live: list[tuple[tuple[str, Any], torch.Tensor, int]] = field(default_factory=list)

    def mutated(self, where: tuple[str, Any]) -> bool:
        """Whether the tensor at ``where`` was modified in place after the hook ran."""
        return any(w == where and tensor_version(t) != v for w, t, v in self.live)

    def tensor(self, where: tuple[str, Any]) -> torch.Tensor | None:
        """The tensor the hook saw at ``where`` (kept alive for the probe, so identity is meaningful)."""
        return next((t for w, t, _ in self.live if w == where), None)


def _meta(x: Any) -> Any:
    """Replace tensors by ``("T", shape, floating)`` so nothing fake outlives the probe."""
    if isinstance(x, torch.Tensor):
        return ("T", tuple(x.shape), x.is_floating_point())
    if isinstance(x, (tuple, list)):
        return tuple(_meta(y) for y in x)
    if x is None:
        return None
    return type(x).__name__


def _is_tensor(m: Any) -> bool:
    return isinstance(m, tuple) and len(m) == 3 and m[0] == "T"


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
        return replace(_locator(path, "output", None, kind, want), clone=seen.mutated(("out", None)))
    if isinstance(out, tuple) and out and not _is_tensor(out):
        kind = _hidden_like(out[0], want)
        if kind:
            nones = tuple(i for i, x in enumerate(out) if x is None)
            found = _locator(path, "output", 0, kind, want)
            return replace(found, tuple_len=len(out), tuple_nones=nones, clone=seen.mutated(("out", 0)))
    return f"output is {_describe(out)}, expected {want}"


class _Recorder:
    def __init__(self) -> None:
        self.seen: dict[str, _Seen] = {}
        self.handles: list[Any] = []
        self.watched: set[str] = set()
        self.finished = 0

    def watch(self, path: str, module: torch.nn.Module) -> None:
        if path in self.watched:
            return
        self.watched.add(path)

        def hook(_m: Any, args: Any, kwargs: Any, output: Any) -> None:
            self.finished += 1
            if path in self.seen:
                self.seen[path].calls += 1
                self.seen[path].finished = self.finished
                return
            seen = _Seen(_meta(tuple(args)), {k: _meta(v) for k, v in kwargs.items()}, _meta(output))
            seen.finished = self.finished
            candidates: list[tuple[tuple[str, Any], Any]] = [(("arg", i), a) for i, a in enumerate(args)]
            candidates += [(("kwarg", k), v) for k, v in kwargs.items()]
            candidates.append((("out", None), output))
            if isinstance(output, (tuple, list)) and output:
                candidates.append((("out", 0), output[0]))
            for where, tensor in candidates:
                if isinstance(tensor, torch.Tensor):
                    seen.live.append((where, tensor, tensor_version(tensor)))
            self.seen[path] = seen

        self.handles.append(module.register_forward_hook(hook, with_kwargs=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def probe_layout(model: Any, spec: ArchitectureSpec, model_type: str, sizes: Sizes) -> Layout:
    """Run the structural probe on a `StandardizedTransformer` under construction.

    Example::

        >>> layout = probe_layout(model, spec, "llama", sizes)
        >>> layout.layers[0]["layers_output"]
        Locator(path='model.layers.0', io='output', key=None, ...)

    Four stages: the spec's paths exist; each layer resolves its modules; one
    forward (fake tensors under ``scan`` when the model allows it, else a real
    one) with plain hooks on every module a value comes from; each value's
    locator is read off what the hooks saw and its shape checked.

    Args:
        model: The nnsight model (its module may live on the meta device).
        spec: The architecture spec.
        model_type: For error messages.
        sizes: The model's sizes; values are checked against them.

    Raises:
        ArchitectureError: A module is missing, never runs, or a value has the
            wrong shape.
    """
    from ._internals import internal_locators, resolve_internal_modules
    from ._norms import block_norms

    stack = _check_paths(native_module(model), spec, model_type)
    resolved = [spec.resolve_layer(block) for block in stack]
    _refuse_absent_everywhere(spec, resolved, model_type)
    config = model.text_config
    inner = [
        resolve_internal_modules(block, paths.modules, model_type, config, sizes)
        for block, paths in zip(stack, resolved)
    ]
    norms = [
        block_norms(block, {rel.split(".")[0] for rel in paths.sites.values() if rel})
        for block, paths in zip(stack, resolved)
    ]
    embed = _embedding_path(native_module(model), spec)
    watched = [
        {
            **paths.sites,
            **{s: rel for s, (rel, _) in extra.modules.items()},
            **{f"norm:{n}": n for n in found},
        }
        for paths, extra, found in zip(resolved, inner, norms)
    ]
    recorder, probed_with = _record_forward(model, spec, embed, watched, model_type)
    want, seq_first = _expectation(model, spec, embed, recorder, model_type, sizes.hidden_size)
    layers: list[dict[str, Locator]] = []
    reasons: list[dict[str, str]] = []
    modules: list[dict[str, str]] = []
    for index, (paths, extra, found_norms) in enumerate(zip(resolved, inner, norms)):
        base = join(spec.layers, str(index))
        found, why = internal_locators(base, extra, recorder.seen, want, sizes)
        locators = _layer_locators(base, index, paths, recorder, want, model_type)
        normed, roles, unnormed = _norm_locators(base, found_norms, recorder, want, locators)
        layers.append({**locators, **found, **normed})
        reasons.append({**paths.reasons, **extra.reasons, **why, **unnormed})
        modules.append({**paths.modules, **roles})
    embed_seen = recorder.seen[embed]
    return Layout(
        token_embeddings=Locator(
            embed, "output", None, seq_first=seq_first, clone=embed_seen.mutated(("out", None))
        ),
        layers=tuple(FrozenDict(layer) for layer in layers),
        unavailable=tuple(FrozenDict(why) for why in reasons),
        modules=tuple(FrozenDict(roles) for roles in modules),
        probed_with=probed_with,
        embedding_width=embed_seen.output[1][-1],
        final_norm_runs=_final_norm_runs(spec, recorder, len(resolved)),
    )


def _final_norm_runs(spec: ArchitectureSpec, recorder: _Recorder, n_layers: int) -> str | None:
    """Whether the final norm runs ``"after"`` the last layer, ``"before"`` it or ``"never"``; ``None``: no norm."""
    if spec.final_norm is None or spec.final_norm not in recorder.watched:
        return None
    norm = recorder.seen.get(spec.final_norm)
    last = recorder.seen.get(join(spec.layers, str(n_layers - 1)))
    if norm is None:
        return "never"
    return "after" if last is not None and norm.finished > last.finished else "before"


def _norm_locators(
    base: str, norms: list[str], recorder: _Recorder, want: _Expect, locators: dict[str, Locator]
) -> tuple[dict[str, Locator], dict[str, str], dict[str, str]]:
    """``residual_mid`` and the post-normed sub-block outputs of one layer: locators, norm roles, reasons."""
    from ._norms import norm_roles

    roles = norm_roles(base, norms, recorder.seen, locators)
    found: dict[str, Locator] = {}
    reasons: dict[str, str] = {}
    for site, role, io in (
        ("attentions_output_normed", "attention_post_norm", "output"),
        ("mlps_output_normed", "mlp_post_norm", "output"),
        ("residual_mid", "mlp_norm", "input"),
    ):
        rel = roles.get(role)
        if rel is None:
            reasons[site] = (
                "the block has no norm after this sub-block: its output is what it adds to the residual stream"
                if site != "residual_mid"
                else "no norm module before the MLP reads the residual stream after the attention"
            )
            continue
        if site == "residual_mid" and roles.get("mlp_reads_layer_input") != "no":
            reasons[site] = (
                "the MLP reads the layer's input (a parallel block): there is no residual between them"
            )
            continue
        path = join(base, rel)
        located = (_input_locator if io == "input" else _output_locator)(path, recorder.seen[path], want)
        if isinstance(located, str):
            reasons[site] = located
        else:
            found[site] = located
    return found, {k: v for k, v in roles.items() if k != "mlp_reads_layer_input"}, reasons


def _check_paths(root: torch.nn.Module, spec: ArchitectureSpec, model_type: str) -> torch.nn.ModuleList:
    """The decoder stack, after checking every whole-model path of the spec exists."""
    stack = module_at(root, spec.layers)
    if not isinstance(stack, torch.nn.ModuleList):
        raise ArchitectureError(model_type, "layers", [spec.layers], "no ModuleList at that path")
    if module_at(root, spec.embed_tokens) is None:
        raise ArchitectureError(model_type, "embed_tokens", [spec.embed_tokens], "no module at that path")
    if module_at(root, spec.lm_head) is None:
        raise ArchitectureError(model_type, "lm_head", [spec.lm_head], "no module at that path")
    if spec.final_norm is not None and not has_path(root, spec.final_norm):
        raise ArchitectureError(model_type, "ln_final", [spec.final_norm], "no such attribute")
    return stack


def _embedding_path(root: torch.nn.Module, spec: ArchitectureSpec) -> str:
    """Where ``token_embeddings`` is read: the embedding, or the projection to the hidden size after it."""
    if spec.embed_projection and module_at(root, spec.embed_projection) is not None:
        return spec.embed_projection
    return spec.embed_tokens


def _record_forward(
    model: Any, spec: ArchitectureSpec, embed: str, watched: list[dict[str, str]], model_type: str
) -> tuple[_Recorder, str]:
    """One forward with plain hooks on every value's module: under ``scan`` if it can, else a real one."""

    def watch_all(root: torch.nn.Module) -> _Recorder:
        recorder = _Recorder()
        recorder.watch(embed, root.get_submodule(embed))
        norm = module_at(root, spec.final_norm) if spec.final_norm else None
        if norm is not None:
            recorder.watch(spec.final_norm, norm)
        for index, sites in enumerate(watched):
            base = join(spec.layers, str(index))
            for rel in sites.values():
                path = join(base, rel)
                recorder.watch(path, root.get_submodule(path))
        return recorder

    recorder = watch_all(native_module(model))
    try:
        with quiet_fake_tensor_logs(), model.scan(list(PROBE_PROMPTS)):
            pass
        return recorder, "scan"
    except Exception as error:  # noqa: BLE001 - any scan failure falls back to a real forward
        logger.info(
            "uniterp: structural scan of %s failed (%s); probing with a real forward", model_type, error
        )
    finally:
        recorder.remove()
    model.dispatch()
    root = native_module(model)
    recorder = watch_all(root)
    encoded = model.tokenizer(list(PROBE_PROMPTS), return_tensors="pt", padding=True)
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
    return recorder, "forward"


def _expectation(
    model: Any,
    spec: ArchitectureSpec,
    embed: str,
    recorder: _Recorder,
    model_type: str,
    hidden: int | None,
) -> tuple[_Expect, bool]:
    """What a hidden state looks like in the probe batch, read off the embedding's output."""
    seen = recorder.seen.get(embed)
    if seen is None:
        raise ArchitectureError(model_type, "token_embeddings", [embed], "module never ran")
    if not _is_tensor(seen.output) or len(seen.output[1]) != 3:
        raise ArchitectureError(
            model_type,
            "token_embeddings",
            [embed],
            f"output is {_describe(seen.output)}, expected (batch, seq, dim)",
        )
    batch, seq, _width = seen.output[1]
    # a model that transposes the batch before embedding keeps (seq, batch, hidden) throughout (XLNet)
    seq_first = (seq, batch) == _probe_batch_shape(model) and batch != seq
    if seq_first:
        batch, seq = seq, batch
    n_streams = 1
    if spec.residual_streams:
        n_streams = int(getattr(model.text_config, spec.residual_streams, 1) or 1)
    return _Expect(batch, seq, hidden, n_streams, seq_first), seq_first


_IO_OF = {site: ("input" if site.endswith("_input") else "output") for site in LAYER_SITES}


def _layer_locators(
    base: str, index: int, paths: LayerPaths, recorder: _Recorder, want: _Expect, model_type: str
) -> dict[str, Locator]:
    """The locator of every site of one layer, from what the hooks saw."""
    locators: dict[str, Locator] = {}
    for site in LAYER_SITES:
        if site not in paths.sites:
            continue
        path = join(base, paths.sites[site])
        seen = recorder.seen.get(path)
        name = f"{site}[{index}]"
        if seen is None:
            raise ArchitectureError(model_type, name, [path], "the module never ran in a forward pass")
        if seen.calls > 1:
            raise ArchitectureError(
                model_type, name, [path], f"the module ran {seen.calls} times in one forward pass"
            )
        locate = _input_locator if _IO_OF[site] == "input" else _output_locator
        found = locate(path, seen, want)
        if isinstance(found, str):
            raise ArchitectureError(model_type, name, [path], found)
        locators[site] = found
    if locators["layers_output"].flat or locators["layers_input"].flat:
        raise ArchitectureError(
            model_type, f"layers_output[{index}]", [base], "the decoder layer works on flattened tokens"
        )
    return locators


def _input_locator(path: str, seen: _Seen, want: _Expect) -> Locator | str:
    found = _find_input(seen, want)
    if found is None:
        kwargs = {k: _describe(v) for k, v in seen.kwargs.items()}
        return f"no argument of shape {want}; saw args {_describe(seen.args)} and keywords {kwargs}"
    key, kind = found
    where = ("arg", key) if isinstance(key, int) else ("kwarg", key)
    return replace(_locator(path, "input", key, kind, want), clone=seen.mutated(where))


def _probe_batch_shape(model: Any) -> tuple[int, int]:
    """``(batch, seq)`` of the probe prompts as the tokenizer pads them."""
    return tuple(model.tokenizer(list(PROBE_PROMPTS), return_tensors="pt", padding=True)["input_ids"].shape)


def _refuse_absent_everywhere(spec: ArchitectureSpec, resolved: list[LayerPaths], model_type: str) -> None:
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
