"""Edge attribution patching (EAP) and EAP with integrated gradients (EAP-IG).

Example::

    >>> from uniterp.edges import edge_attribution_patching
    >>> edges = edge_attribution_patching(model, clean, corrupted, metric)              # layer level
    >>> edges.top(5)                           # [(upstream, downstream, score), ...]
    >>> heads = edge_attribution_patching(model, clean, corrupted, metric, level="head", ig_steps=8)

The residual stream is a sum of what the components wrote: the input (token and
position embeddings, ``layers_input[0]``), each attention (``attn.3``, or each head
``head.3.1``: its ``head_outputs`` through ``W_O``) and each MLP (``mlp.3``). A
downstream node reads the stream through its norm: an attention (or, at
``level="head"``, each head's query ``q.3.1``, and each key/value head's key and
value ``k.3.0`` / ``v.3.0``; grouped heads stay grouped), an MLP, or the logits.
The score of edge ``u -> d`` is (Syed et al. 2023)

    sum over prompts and positions of  (a_u(source) - a_u(base)) . dM/d(stream as read by d)

where the gradient flows into ``d`` only. It is taken at the base run (EAP), or
averaged over ``ig_steps`` points on the straight path of ``layers_input[0]`` from
the base run to the source run (EAP-IG, Hanna et al. 2024). ``mode`` is as for the
sweeps: ``"denoise"`` (default) patches clean into corrupted.

How the per-node gradients are found, on any family: a probe on the node's input
value (``attentions_input``, ``mlps_input``, the queries/keys/values before rotary,
``layers_output`` of the last layer) gives the gradient there; it is carried to
the head's input through ``W_Q``/``W_K``/``W_V`` and back through the node's norm
module (called again on the recorded input, a vector-Jacobian product). Every
step is checked on the run (the norm's output is the node's input, the projection
is ``x @ W + b``, the block adds up) and refused with the reason where it fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ._aliases import resolve_name
from ._errors import InputError, UnavailableError
from ._nnsight_compat import native_module
from ._pairs import check_mode, encode_pairs, positive_int
from ._probes import Edits, ToolSite, grad_mode, probe
from ._tolerances import sum_tolerance
from .grads import _grad
from .metrics import check_metric, logits_kwargs, metric_value

if TYPE_CHECKING:
    import pandas

    from ._model import StandardizedTransformer

__all__ = ["EdgeScores", "edge_attribution_patching"]


@dataclass
class EdgeScores:
    """Scores of every edge from an upstream writer to a downstream reader of the residual stream.

    Example::

        >>> edges.scores.shape                       # (n_upstream, n_downstream)
        >>> edges.score("mlp.0", "logits")
        >>> edges.top(10)

    Attributes:
        scores: ``(n_upstream, n_downstream)``; 0 where ``u`` does not feed ``d``.
        upstream: Upstream node names (``"input"``, ``"attn.3"`` / ``"head.3.1"``, ``"mlp.3"``).
        downstream: Downstream node names (``"attn.3"`` / ``"q.3.1"``, ``"k.3.0"``, ``"v.3.0"``,
            ``"mlp.3"``, ``"logits"``).
        valid: Which edges exist.
        method: ``"eap"`` or ``"eap-ig"``.
        mode: ``"denoise"`` or ``"noise"``.
        clean_metric: The metric on the clean prompts.
        corrupted_metric: The metric on the corrupted prompts.
        ig_steps: Points on the path (0 for EAP).
    """

    scores: torch.Tensor
    upstream: list[str]
    downstream: list[str]
    valid: torch.Tensor
    method: str = "eap"
    mode: str = "denoise"
    clean_metric: float = 0.0
    corrupted_metric: float = 0.0
    ig_steps: int = 0
    _index: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)

    def score(self, upstream: str, downstream: str) -> float:
        """The score of one edge (`InputError` for unknown names or an edge that does not exist)."""
        up = {n: i for i, n in enumerate(self.upstream)}
        down = {n: i for i, n in enumerate(self.downstream)}
        if upstream not in up or downstream not in down:
            raise InputError(f"unknown node: {upstream!r} -> {downstream!r}; see .upstream and .downstream")
        if not bool(self.valid[up[upstream], down[downstream]]):
            raise InputError(f"{upstream!r} does not feed {downstream!r}: no such edge")
        return float(self.scores[up[upstream], down[downstream]])

    def top(self, k: int = 10) -> list[tuple[str, str, float]]:
        """The ``k`` edges of largest absolute score, as ``(upstream, downstream, score)``."""
        flat = torch.where(self.valid, self.scores.abs(), torch.full_like(self.scores, -1.0)).flatten()
        order = torch.argsort(flat, descending=True)[: max(0, k)]
        width = len(self.downstream)
        return [
            (self.upstream[i // width], self.downstream[i % width], float(self.scores.flatten()[i]))
            for i in order.tolist()
            if flat[i] >= 0
        ]

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per existing edge: ``upstream``, ``downstream``, ``score`` (the ``display`` extra)."""
        try:
            import pandas as pd
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("to_dataframe needs pandas: pip install 'uniterp[display]'") from error
        rows = [
            (u, d, float(self.scores[i, j]))
            for i, u in enumerate(self.upstream)
            for j, d in enumerate(self.downstream)
            if bool(self.valid[i, j])
        ]
        return pd.DataFrame(rows, columns=["upstream", "downstream", "score"])


def edge_attribution_patching(
    model: StandardizedTransformer,
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    metric: Any,
    *,
    level: str = "layer",
    ig_steps: int | None = None,
    mode: str = "denoise",
    batch_size: int = 64,
) -> EdgeScores:
    """Scores of every edge between residual-stream writers and readers (EAP; EAP-IG with ``ig_steps``).

    Example::

        >>> edges = edge_attribution_patching(model, "The capital of France is", "The capital of Japan is",
        ...                                   logit_diff(model, " Paris", " Tokyo"), ig_steps=16)
        >>> edges.top(3)

    Args:
        model: The model.
        clean: Clean prompt(s).
        corrupted: One corrupted prompt per clean prompt, of the same token length.
        metric: As for `uniterp.patching.patch_sweep`.
        level: ``"layer"`` (attention and MLP per layer) or ``"head"`` (upstream heads,
            downstream query/key/value heads).
        ig_steps: ``None`` for EAP; a number of points for EAP-IG.
        mode: ``"denoise"`` or ``"noise"``.
        batch_size: Rows per forward (EAP-IG's points times prompts).

    Returns:
        `EdgeScores`.

    Raises:
        InputError: Bad arguments (as for the sweeps), an unknown ``level``.
        UnavailableError: The model's blocks do not decompose this way (post-norm or
            several residual streams; per-head writes after a post-attention norm;
            projections or norms that do not match), with the reason.
    """
    metric = check_metric(metric)
    mode = check_mode(mode)
    batch_size = positive_int(batch_size, "batch_size")
    if level not in ("layer", "head"):
        raise InputError(f"level must be 'layer' or 'head'; got {level!r}")
    if ig_steps is not None:
        ig_steps = positive_int(ig_steps, "ig_steps")
    pairs = encode_pairs(model, clean, corrupted, one_length=False)
    model.dispatch()
    graph = _Graph(model, level)
    source_enc, base_enc = pairs.runs(mode)
    source, source_metric = graph.read(source_enc, metric, pairs.n)
    base, base_metric = graph.read(base_enc, metric, pairs.n)
    graph.check_sums(base)
    deltas = graph.writes(source) - graph.writes(base)  # (U, n, T, hidden)
    alphas: list[float | None] = (
        [None] if ig_steps is None else [(k + 0.5) / ig_steps for k in range(ig_steps)]
    )
    reads = torch.zeros((len(graph.downstream), *deltas.shape[1:]), dtype=torch.float32)
    per_chunk = max(1, batch_size // pairs.n)
    for start in range(0, len(alphas), per_chunk):
        chunk = alphas[start : start + per_chunk]
        try:
            grads = graph.read_grads(base_enc, source, base, chunk, metric, pairs.n)
        except UnavailableError as error:
            if level != "head" or error.name.startswith("edge_attribution"):
                raise
            raise UnavailableError(
                model.model_type, "edge_attribution_patching(level='head')", f"{error}; use level='layer'"
            ) from error
        reads += grads.view(len(graph.downstream), len(chunk), *deltas.shape[1:]).sum(1).cpu()
    reads /= len(alphas)
    scores = torch.einsum("untm,dntm->ud", deltas.float().cpu(), reads) * graph.valid
    clean_metric, corrupted_metric = (
        (source_metric, base_metric) if mode == "denoise" else (base_metric, source_metric)
    )
    return EdgeScores(
        scores=scores,
        upstream=graph.upstream,
        downstream=graph.downstream,
        valid=graph.valid.bool(),
        method="eap" if ig_steps is None else "eap-ig",
        mode=mode,
        clean_metric=clean_metric,
        corrupted_metric=corrupted_metric,
        ig_steps=ig_steps or 0,
    )


def _site(model: StandardizedTransformer, name: str) -> ToolSite:
    return ToolSite(resolve_name(model.binding, name), name)


class _Graph:
    """The nodes of one model, where their values are, and how to read them."""

    def __init__(self, model: StandardizedTransformer, level: str) -> None:
        binding = model.binding
        self.model, self.level = model, level
        if binding.block not in ("sequential", "parallel", "sandwich") or (binding.sizes.n_streams or 1) > 1:
            raise UnavailableError(
                model.model_type,
                "edge_attribution_patching",
                f"the blocks ({binding.block}, {binding.sizes.n_streams or 1} residual streams) do not add "
                "attention and MLP outputs to one residual stream",
            )
        self.n = model.num_layers
        self.factor = binding.residual_factor
        self.parallel = binding.block == "parallel"
        self.norms: list[dict[str, torch.nn.Module]] = []
        self.weights: list[Any] = []
        for layer in range(self.n):
            modules = binding.layout.modules[layer]
            block = native_module(model.layers[layer])
            norms = {}
            for role in ("attention_norm", "mlp_norm"):
                if role not in modules:
                    raise UnavailableError(
                        model.model_type,
                        "edge_attribution_patching",
                        f"layer {layer} has no {role} module found",
                    )
                norms[role] = block.get_submodule(modules[role])
            self.norms.append(norms)
            if level == "head":
                self.weights.append(self._attention_weights(layer, block, modules))
        self.heads = model.num_heads
        self.kv = self.weights[0].n_kv_heads if level == "head" else 0
        self.upstream, self.downstream = self._names()
        self.valid = self._valid()

    def _attention_weights(self, layer: int, block: torch.nn.Module, modules: Any) -> Any:
        from ._weights import attention_weights

        model = self.model
        if "attentions_output_normed" in model.binding.layout.layers[layer]:
            raise UnavailableError(
                model.model_type,
                "edge_attribution_patching(level='head')",
                "the attention output is normed after the heads are summed (a post-attention norm), so the heads' "
                "writes to the residual stream are not separate; use level='layer'",
            )
        return attention_weights(
            block.get_submodule(modules["self_attn"]), model.text_config, model.model_type
        )

    def _names(self) -> tuple[list[str], list[str]]:
        up, down = ["input"], []
        for layer in range(self.n):
            if self.level == "head":
                up += [f"head.{layer}.{h}" for h in range(self.heads)]
                down += [f"q.{layer}.{h}" for h in range(self.heads)]
                down += [f"k.{layer}.{g}" for g in range(self.kv)] + [
                    f"v.{layer}.{g}" for g in range(self.kv)
                ]
            else:
                up.append(f"attn.{layer}")
                down.append(f"attn.{layer}")
            up.append(f"mlp.{layer}")
            down.append(f"mlp.{layer}")
        return up, down + ["logits"]

    def _valid(self) -> torch.Tensor:
        def where(name: str) -> tuple[float, int]:
            """(layer, 0 for attention / 1 for MLP); input first, logits last."""
            kind, *rest = name.split(".")
            if kind == "input":
                return -1.0, 0
            if kind == "logits":
                return float(self.n), 0
            return float(rest[0]), 1 if kind == "mlp" else 0

        valid = torch.zeros(len(self.upstream), len(self.downstream))
        for i, u in enumerate(self.upstream):
            lu, ku = where(u)
            for j, d in enumerate(self.downstream):
                ld, kd = where(d)
                same_layer = ld == lu and ku == 0 and kd == 1 and not self.parallel
                valid[i, j] = float(ld > lu or same_layer)
        return valid

    # -- reading the runs -----------------------------------------------------------------------

    def _write_sites(self, layer: int) -> tuple[ToolSite, ToolSite]:
        layout = self.model.binding.layout.layers[layer]
        attn = "attentions_output_normed" if "attentions_output_normed" in layout else "attentions_output"
        mlp = "mlps_output_normed" if "mlps_output_normed" in layout else "mlps_output"
        if self.level == "head":
            attn = "head_outputs"
        return _site(self.model, f"{attn}.{layer}"), _site(self.model, f"{mlp}.{layer}")

    def read(
        self, encoding: dict[str, torch.Tensor], metric: Any, n: int
    ) -> tuple[dict[str, torch.Tensor], float]:
        """Every upstream write and what the checks need, on one run (no gradient)."""
        edits = Edits()
        for layer in range(self.n):
            for site in (f"layers_input.{layer}", f"layers_output.{layer}"):
                edits.add(_site(self.model, site), None, keep=True)
            for site in self._write_sites(layer):
                edits.add(site, None, keep=True)
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad(), self.model.trace(encoding, **logits_kwargs(self.model, metric)):
            edits.run(self.model)
            out["logits"] = model_logits(self.model)
        return {k: v.detach() for k, v in edits.seen.items()}, float(metric_value(metric, out["logits"], n))

    def writes(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """What each upstream node adds to the residual stream: ``(U, n, T, hidden)``."""
        parts = [values["layers_input.0"].float().unsqueeze(0)]
        for layer in range(self.n):
            attn, mlp = self._write_sites(layer)
            if self.level == "head":
                w = self.weights[layer]
                z = values[attn.key].float()  # (n, T, H, d)
                heads = torch.einsum("nthd,hdm->hntm", z, w.W_O.float())
                parts.append(self.factor * heads)
            else:
                parts.append(self.factor * values[attn.key].float().unsqueeze(0))
            parts.append(self.factor * values[mlp.key].float().unsqueeze(0))
        return torch.cat(parts)

    def check_sums(self, values: dict[str, torch.Tensor]) -> None:
        """The layer outputs are the inputs plus the writes (and the heads sum to the attention output)."""
        writes = self.writes(values)
        per_layer = 1 + (self.heads if self.level == "head" else 1)
        for layer in range(self.n):
            start = 1 + layer * per_layer
            total = writes[start : start + per_layer].sum(0)
            if self.level == "head":
                total = total + self.factor * self.weights[layer].b_O.float()
            out = values[f"layers_output.{layer}"].float()
            expected = out - values[f"layers_input.{layer}"].float()
            error = float((total - expected).abs().max())
            if error > 4 * sum_tolerance(out) + 1e-6 * float(out.abs().max()):
                raise UnavailableError(
                    self.model.model_type,
                    "edge_attribution_patching",
                    f"layer {layer}'s output is not its input plus the attention and MLP writes (max difference "
                    f"{error:.3g}); its blocks add something else to the residual stream",
                )

    # -- the gradient runs -----------------------------------------------------------------------

    def _read_sites(self, layer: int) -> list[tuple[str, ToolSite]]:
        """``(role, site)``: the probed inputs of the layer's readers."""
        sites = []
        if self.level == "head":
            for what in ("queries", "keys"):
                try:
                    sites.append((what, _site(self.model, f"{what}_pre_rotary.{layer}")))
                except UnavailableError as error:
                    if "no rotary" not in error.reason:
                        raise self._refuse(layer, error) from error
                    sites.append((what, self._kernel_site(f"{what}.{layer}")))
            sites.append(("values", self._kernel_site(f"values.{layer}")))
        else:
            sites.append(("attention", _site(self.model, f"attentions_input.{layer}")))
        sites.append(("mlp", _site(self.model, f"mlps_input.{layer}")))
        return sites

    def _kernel_site(self, name: str) -> ToolSite:
        try:
            return _site(self.model, name)
        except UnavailableError as error:
            raise self._refuse(int(name.split(".")[1]), error) from error

    def _refuse(self, layer: int, error: UnavailableError) -> UnavailableError:
        return UnavailableError(
            self.model.model_type,
            "edge_attribution_patching(level='head')",
            f"layer {layer}: {error.name} is unavailable ({error.reason}); use level='layer'",
        )

    def read_grads(
        self,
        encoding: dict[str, torch.Tensor],
        source: dict[str, torch.Tensor],
        base: dict[str, torch.Tensor],
        alphas: list[float | None],
        metric: Any,
        n: int,
    ) -> torch.Tensor:
        """Gradients of the metric as each downstream node reads the stream: ``(D, rows, T, hidden)``."""
        model = self.model
        edits = Edits()
        store: dict[str, torch.Tensor] = {}
        first = _site(model, "layers_input.0")
        if alphas != [None]:
            a = torch.tensor(alphas, dtype=torch.float32).view(-1, 1, 1, 1)
            start, end = base[first.key].float(), source[first.key].float()
            point = (start + a * (end - start)).reshape(-1, *start.shape[1:])
            edits.add(first, lambda v: point.to(v.device, v.dtype))
        last = _site(model, f"layers_output.{self.n - 1}")
        for layer in range(self.n):
            edits.add(_site(model, f"layers_input.{layer}"), None, keep=True)
            edits.add(_site(model, f"attentions_input.{layer}"), None, keep=True)
            if not self.parallel:
                edits.add(_site(model, f"residual_mid.{layer}"), None, keep=True)
            for _, site in self._read_sites(layer):
                edits.add(site, probe(store, site.key), keep=True)
        edits.add(last, probe(store, last.key))
        rows = len(alphas)
        out: dict[str, torch.Tensor] = {}
        with grad_mode("edge_attribution_patching"):
            with model.trace(
                {k: v.repeat(rows, 1) for k, v in encoding.items()}, **logits_kwargs(model, metric)
            ):
                edits.run(model)
                out["logits"] = model_logits(model)
            logits = out["logits"]
            total = torch.stack(
                [metric_value(metric, logits[i * n : (i + 1) * n], n, need_grad=True) for i in range(rows)]
            )
            keys = list(store)
            grads = dict(zip(keys, _grad(total.sum(), [store[k] for k in keys])))
        # the values as the model used them (layers_input[0] is the interpolated point under EAP-IG)
        seen = {k: edits.written.get(k, v).detach() for k, v in edits.seen.items()}
        parts = []
        for layer in range(self.n):
            parts += self._layer_reads(layer, grads, seen)
        parts.append(grads[last.key].float().unsqueeze(0))
        return torch.cat(parts)

    def _layer_reads(
        self, layer: int, grads: dict[str, torch.Tensor], seen: dict[str, torch.Tensor]
    ) -> list[torch.Tensor]:
        x_attn = seen[f"layers_input.{layer}"]
        x_mlp = x_attn if self.parallel else seen[f"residual_mid.{layer}"]
        norms = self.norms[layer]
        sites = dict(self._read_sites(layer))
        out = []
        if self.level == "head":
            w = self.weights[layer]
            post = seen[f"attentions_input.{layer}"].float()
            vectors = []
            for what, weight, bias in (
                ("queries", w.W_Q, w.b_Q),
                ("keys", w.W_K, w.b_K),
                ("values", w.W_V, w.b_V),
            ):
                site = sites[what]
                value = seen[site.key].float()  # (rows, heads, T, d)
                projected = (
                    torch.einsum("rtm,hmd->rhtd", post, weight.float()) + bias.float()[None, :, None, :]
                )
                error = float((projected - value).norm() / value.norm().clamp_min(1e-30))
                if not error <= 1e-4:
                    raise UnavailableError(
                        self.model.model_type,
                        "edge_attribution_patching(level='head')",
                        f"layer {layer}: {site.key} is not attentions_input @ W + b (relative difference {error:.2g}: "
                        "a norm, clipping or scaling inside the projection); use level='layer'",
                    )
                g = grads[site.key].float()
                vectors.append(torch.einsum("rhtd,hmd->rthm", g, weight.float()))
            v = torch.cat(vectors, dim=2)  # (rows, T, H + 2 Hk, hidden)
            pre = _through_norm(
                norms["attention_norm"], x_attn, v, seen[f"attentions_input.{layer}"], self, layer
            )
            out.append(pre.permute(2, 0, 1, 3))
        else:
            g = grads[sites["attention"].key]
            pre = _through_norm(
                norms["attention_norm"], x_attn, g, seen[f"attentions_input.{layer}"], self, layer
            )
            out.append(pre.unsqueeze(0))
        mlp_in = seen[sites["mlp"].key]
        pre = _through_norm(norms["mlp_norm"], x_mlp, grads[sites["mlp"].key], mlp_in, self, layer)
        out.append(pre.unsqueeze(0))
        return out


def model_logits(model: StandardizedTransformer) -> torch.Tensor:
    """The logits inside a trace, saved."""
    return model.logits.save()


def _through_norm(
    norm: torch.nn.Module, x: torch.Tensor, v: torch.Tensor, output: torch.Tensor, graph: _Graph, layer: int
) -> torch.Tensor:
    """``v`` carried back through ``norm`` at ``x`` (a vector-Jacobian product), after checking ``norm(x) == output``."""
    with torch.enable_grad():
        inp = x.detach().clone().requires_grad_(True)
        y = norm(inp)
        if isinstance(y, (tuple, list)):
            y = y[0]
        error = float((y.detach().float() - output.float()).abs().max())
        if error > 1e-5 * max(1.0, float(output.abs().max())):
            raise UnavailableError(
                graph.model.model_type,
                "edge_attribution_patching",
                f"layer {layer}: the norm {type(norm).__name__} applied to the residual stream does not give the "
                f"reader's input (max difference {error:.3g})",
            )
        if v.dim() == 4:  # several readers per position: one product each
            k = v.shape[2]
            inp = x.detach().unsqueeze(2).expand(-1, -1, k, -1).clone().requires_grad_(True)
            y = norm(inp)
            if isinstance(y, (tuple, list)):
                y = y[0]
        (g,) = torch.autograd.grad(y, inp, v.to(y.dtype))
    return g.float()
