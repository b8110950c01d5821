"""MLP and mixture-of-experts weights in standard (TransformerLens-like) shapes.

The caller hands over one layer's MLP module (``layers[i].mlp``; for OPT, whose
``fc1``/``fc2`` sit on the decoder layer, the layer itself) with the HF config and
``model_type``. A dense MLP computes::

    neurons = act(x @ W_gate + b_gate) * (x @ W_in + b_in)   # gated MLPs
    neurons = act(x @ W_in + b_in)                           # plain MLPs
    out     = neurons @ W_out + b_out

with ``x`` the MLP's input ``(..., d_model)``, ``neurons`` ``(..., d_mlp)`` (the input of the
down projection) and ``act`` the module's own activation (``MLPWeights.act_fn``). Same
conventions as `uniterp._weights`: detached tensors in the parameters' dtype and device,
views of the parameters where the layout allows, zeros for missing biases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._errors import InputError, UnavailableError
from ._nnsight_compat import expert_gating
from ._weight_layouts import MOE_LAYOUTS, MLPLayout, MoELayout, mlp_layout_for
from ._weights import linear_rows

__all__ = ["MLPWeights", "MoEWeights", "mlp_weights", "moe_weights"]

# Generic dense-MLP rule for model types outside the table: (up, gate, down) child names,
# checked numerically against the module before they are trusted.
_GENERIC_MLPS: tuple[tuple[str, str | None, str], ...] = (
    ("up_proj", "gate_proj", "down_proj"),
    ("up_proj", None, "down_proj"),
    ("fc1", None, "fc2"),
    ("c_fc", None, "c_proj"),
    ("fc_in", None, "fc_out"),
    ("dense_h_to_4h", None, "dense_4h_to_h"),
)


@dataclass(frozen=True)
class MLPWeights:
    """The weights of one dense MLP (or one expert).

    Example::

        >>> m = mlp_weights(hf.model.layers[0].mlp, hf.config, "llama")
        >>> out = m.output(x)             # (batch, seq, d_model), equals the MLP's output

    Attributes:
        W_in: ``(d_model, d_mlp)``, the input ("up") projection.
        W_gate: ``(d_model, d_mlp)``, the gate projection of gated MLPs (the one the
            activation is applied to), else ``None``.
        W_out: ``(d_mlp, d_model)``, the output ("down") projection.
        b_in: ``(d_mlp,)``.
        b_gate: ``(d_mlp,)`` or ``None`` (no gate).
        b_out: ``(d_model,)``.
        act_fn: The module's activation (a callable on tensors).
        has_bias: Which of ``"in"``, ``"gate"``, ``"out"`` the model has a bias for.
        layout: How the weights were read, for messages.
    """

    W_in: torch.Tensor
    W_gate: torch.Tensor | None
    W_out: torch.Tensor
    b_in: torch.Tensor
    b_gate: torch.Tensor | None
    b_out: torch.Tensor
    act_fn: Callable[[torch.Tensor], torch.Tensor]
    has_bias: frozenset[str]
    layout: str

    @property
    def d_mlp(self) -> int:
        """Number of neurons."""
        return self.W_in.shape[-1]

    def neurons(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_model) -> (..., d_mlp)``: the input of the down projection.

        Example::

            >>> m.neurons(x).shape    # (batch, seq, d_mlp)
        """
        pre = x @ self.W_in + self.b_in
        if self.W_gate is None:
            return self.act_fn(pre)
        return self.act_fn(x @ self.W_gate + self.b_gate) * pre

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_model) -> (..., d_model)``: the MLP's output (without any residual).

        Example::

            >>> m.output(x).shape     # (batch, seq, d_model)
        """
        return self.neurons(x) @ self.W_out + self.b_out


@dataclass(frozen=True)
class MoEWeights:
    """The weights of one sparse mixture-of-experts block, experts stacked on dim 0.

    Example::

        >>> moe = moe_weights(hf.model.layers[0].mlp, hf.config, "mixtral")
        >>> router_logits = x @ moe.W_router + moe.b_router     # (tokens, n_experts)
        >>> y_e = moe.expert(3).output(x)                        # expert 3, unweighted

    How the block mixes expert outputs (softmax or sigmoid scores, top-k, renormalisation,
    scaling factors, score-correction biases) is the model's code and not expressed here.

    Attributes:
        W_router: ``(d_model, n_experts)``; ``x @ W_router + b_router`` are the router logits
            (DeepSeek-style routers keep this weight in float32).
        b_router: ``(n_experts,)``, zeros when the router has no bias.
        W_in: ``(n_experts, d_model, d_expert)``.
        W_gate: ``(n_experts, d_model, d_expert)`` or ``None`` (ungated experts).
        W_out: ``(n_experts, d_expert, d_model)``.
        b_in, b_gate: ``(n_experts, d_expert)`` (``b_gate`` ``None`` without gate).
        b_out: ``(n_experts, d_model)``.
        act_fn: The experts' activation.
        shared: The always-on shared expert, if the block has one.
        W_shared_gate: ``(d_model, 1)``: ``sigmoid(x @ W_shared_gate)`` scales the shared expert
            (Qwen2-MoE), else ``None``.
        has_bias: Which of ``"router"``, ``"experts"`` have biases.
        layout: How the weights were read, for messages.
    """

    W_router: torch.Tensor
    b_router: torch.Tensor
    W_in: torch.Tensor
    W_gate: torch.Tensor | None
    W_out: torch.Tensor
    b_in: torch.Tensor
    b_gate: torch.Tensor | None
    b_out: torch.Tensor
    act_fn: Callable[[torch.Tensor], torch.Tensor]
    shared: MLPWeights | None
    W_shared_gate: torch.Tensor | None
    has_bias: frozenset[str]
    layout: str

    @property
    def n_experts(self) -> int:
        """Number of routed experts."""
        return self.W_in.shape[0]

    def expert(self, index: int) -> MLPWeights:
        """Expert ``index`` as `MLPWeights` (negative indices count from the end).

        Example::

            >>> moe.expert(-1).W_out.shape    # (d_expert, d_model)

        Raises:
            InputError: ``index`` is not an int in ``[-n_experts, n_experts)``.
        """
        if (
            isinstance(index, bool)
            or not isinstance(index, int)
            or not -self.n_experts <= index < self.n_experts
        ):
            raise InputError(
                f"expert index must be an int in [-{self.n_experts}, {self.n_experts}); got {index!r}"
            )
        has = frozenset({"in", "out"} | ({"gate"} if self.W_gate is not None else set()))
        return MLPWeights(
            W_in=self.W_in[index],
            W_gate=None if self.W_gate is None else self.W_gate[index],
            W_out=self.W_out[index],
            b_in=self.b_in[index],
            b_gate=None if self.b_gate is None else self.b_gate[index],
            b_out=self.b_out[index],
            act_fn=self.act_fn,
            has_bias=has if "experts" in self.has_bias else frozenset(),
            layout=f"{self.layout}, expert {index}",
        )


def _zeros(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(shape, dtype=like.dtype, device=like.device)


def _child(module: nn.Module, name: str | None) -> nn.Module | None:
    if name is None:
        return None
    value = getattr(module, name, None)
    return value if isinstance(value, nn.Module) else None


def _is_moe(mlp: nn.Module) -> bool:
    return _child(mlp, "experts") is not None


def _from_layout(mlp: nn.Module, layout: MLPLayout, model_type: str) -> MLPWeights:
    where = type(mlp).__name__
    act = getattr(mlp, layout.act, None)
    if not callable(act):
        raise UnavailableError(model_type, "W_in", f"{where} has no activation module {layout.act!r}")
    up_rows, up_bias = linear_rows(_child(mlp, layout.up), model_type, "W_in", f"{where}.{layout.up}")
    out_rows, out_bias = linear_rows(_child(mlp, layout.out), model_type, "W_out", f"{where}.{layout.out}")
    gate_rows = gate_bias = None
    if layout.fused_gate_up:
        if up_rows.shape[0] % 2:
            raise UnavailableError(model_type, "W_in", f"{where}.{layout.up} has an odd number of outputs")
        d = up_rows.shape[0] // 2
        gate_rows, up_rows = up_rows[:d], up_rows[d:]
        if up_bias is not None:
            gate_bias, up_bias = up_bias[:d], up_bias[d:]
    elif layout.gate is not None:
        gate_rows, gate_bias = linear_rows(
            _child(mlp, layout.gate), model_type, "W_gate", f"{where}.{layout.gate}"
        )
    d_mlp, d_in = up_rows.shape
    if out_rows.shape[1] != d_mlp or (gate_rows is not None and gate_rows.shape != up_rows.shape):
        raise UnavailableError(
            model_type,
            "W_in",
            f"{where}: projection shapes disagree (in {tuple(up_rows.shape)}, "
            f"gate {None if gate_rows is None else tuple(gate_rows.shape)}, out {tuple(out_rows.shape)})",
        )
    has = {name for name, b in (("in", up_bias), ("gate", gate_bias), ("out", out_bias)) if b is not None}
    return MLPWeights(
        W_in=up_rows.T,
        W_gate=None if gate_rows is None else gate_rows.T,
        W_out=out_rows.T,
        b_in=up_bias if up_bias is not None else _zeros((d_mlp,), up_rows),
        b_gate=None
        if gate_rows is None
        else (gate_bias if gate_bias is not None else _zeros((d_mlp,), up_rows)),
        b_out=out_bias if out_bias is not None else _zeros((out_rows.shape[0],), out_rows),
        act_fn=act,
        has_bias=frozenset(has),
        layout=f"{model_type}: {layout.note}",
    )


def _activation_child(mlp: nn.Module) -> str | None:
    """The one parameter-free, non-dropout child (the activation), if exactly one."""
    names = [
        name
        for name, child in mlp.named_children()
        if not isinstance(child, nn.Dropout) and next(child.parameters(), None) is None
    ]
    return names[0] if len(names) == 1 else None


def _validated_generic(mlp: nn.Module, model_type: str) -> MLPWeights:
    act = _activation_child(mlp)
    for up, gate, down in _GENERIC_MLPS:
        names = [n for n in (up, gate, down) if n is not None]
        if act is None or not all(_child(mlp, n) is not None for n in names):
            continue
        layout = MLPLayout(
            up=up, gate=gate, out=down, act=act, note=f"generic rule: {'/'.join(names)}, checked"
        )
        weights = _from_layout(mlp, layout, model_type)
        if weights.W_in.device.type == "meta":
            raise UnavailableError(
                model_type,
                "W_in",
                "the generic MLP rule is checked numerically, and the weights are not loaded",
            )
        generator = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(2, 3, weights.W_in.shape[0], generator=generator)
        x = x.to(device=weights.W_in.device, dtype=weights.W_in.dtype)
        try:
            with torch.no_grad():
                native = mlp(x)
        except Exception as exc:  # noqa: BLE001 - any failure means the rule is not confirmed
            raise UnavailableError(
                model_type, "W_in", f"the generic MLP rule could not be checked ({type(exc).__name__}: {exc})"
            ) from exc
        with torch.no_grad():
            mine = weights.output(x)
        if isinstance(native, torch.Tensor) and native.shape == mine.shape:
            err = (native.float() - mine.float()).norm() / native.float().norm().clamp_min(1e-12)
            if err < (1e-4 if x.dtype == torch.float32 else 3e-2):
                return weights
        raise UnavailableError(
            model_type,
            "W_in",
            f"{type(mlp).__name__} has {'/'.join(names)} but does not compute act(gate) * up -> down "
            "with them; its layout is not in the table",
        )
    children = ", ".join(name for name, _ in mlp.named_children()) or "no children"
    raise UnavailableError(
        model_type,
        "W_in",
        f"{type(mlp).__name__} is not a known MLP layout (children: {children}); it is not guessed",
    )


def mlp_weights(mlp: nn.Module, config: Any, model_type: str) -> MLPWeights:
    """``W_in``, ``W_gate``, ``W_out`` and biases of one dense MLP.

    Example::

        >>> hf = AutoModelForCausalLM.from_pretrained(path)
        >>> m = mlp_weights(hf.model.layers[0].mlp, hf.config, "llama")
        >>> m.W_in.shape, m.W_gate.shape, m.W_out.shape   # (d_model, d_mlp) x2, (d_mlp, d_model)

    Families: separate ``gate_proj``/``up_proj``/``down_proj`` (Llama and its kin), Phi-3's
    fused ``gate_up_proj`` (``[gate | up]``), ungated ``c_fc``/``c_proj`` (GPT-2 Conv1D,
    GPT-BigCode, Starcoder2), ``dense_h_to_4h``/``dense_4h_to_h`` (GPT-NeoX, Bloom, Falcon),
    ``fc_in``/``fc_out`` (GPT-J, CodeGen), ``fc1``/``fc2`` (Phi; OPT on the decoder layer).
    Model types outside the table are read by a generic rule on the child names, accepted
    only after the weights reproduce the module's output on a random input.

    Args:
        mlp: The MLP module of one layer (``layers[i].mlp``); for OPT, the decoder layer.
        config: The model's HF config.
        model_type: ``config.model_type``.

    Returns:
        `MLPWeights`; shapes in its docstring.

    Raises:
        UnavailableError (name ``"W_in"``): the MLP is a mixture of experts (use
            `moe_weights`), has an unknown layout, or non-linear (quantized) projections.
    """
    if not isinstance(mlp, nn.Module):
        raise InputError(f"mlp_weights expects the MLP nn.Module; got {type(mlp).__name__}")
    if _is_moe(mlp):
        raise UnavailableError(
            model_type,
            "W_in",
            f"{type(mlp).__name__} is a mixture of experts: read it with moe_weights (router, per-expert "
            "W_in/W_gate/W_out, shared expert)",
        )
    layout = mlp_layout_for(model_type, config)
    if layout is None:
        return _validated_generic(mlp, model_type)
    return _from_layout(mlp, layout, model_type)


def _expert_flags(experts: nn.Module, model_type: str) -> tuple[bool, bool, bool]:
    """(has_gate, has_bias, is_transposed) after checking the layout is the standard one."""
    flags = {name: getattr(experts, name, None) for name in ("has_gate", "has_bias", "is_transposed")}
    where = type(experts).__name__
    if any(not isinstance(value, bool) for value in flags.values()):
        raise UnavailableError(
            model_type,
            "W_in",
            f"{where} carries no expert-layout flags (has_gate / is_transposed / has_bias, set by "
            "transformers' use_experts_implementation); its layout is not guessed",
        )
    if getattr(experts, "is_concatenated", True) is not True:
        raise UnavailableError(
            model_type, "W_in", f"{where} interleaves gate and up columns with a custom gating function"
        )
    if getattr(experts, "has_post_expert_norm", False):
        raise UnavailableError(
            model_type,
            "W_in",
            f"{where} normalises each expert's output; W_out does not give the expert output",
        )
    gating = expert_gating(experts)
    if flags["has_gate"] and gating is not None:
        raise UnavailableError(
            model_type, "W_in", f"{where} has a custom gating function ({gating}), not act(gate) * up"
        )
    return flags["has_gate"], flags["has_bias"], flags["is_transposed"]


def _param(module: nn.Module, name: str, model_type: str) -> torch.Tensor:
    value = getattr(module, name, None)
    if not isinstance(value, torch.Tensor) or value.dim() not in (2, 3):
        raise UnavailableError(model_type, "W_in", f"{type(module).__name__} has no expert tensor {name!r}")
    return value.detach()


def moe_weights(mlp: nn.Module, config: Any, model_type: str) -> MoEWeights:
    """Router, stacked per-expert weights and shared expert of one sparse MoE block.

    Example::

        >>> hf = AutoModelForCausalLM.from_pretrained(path)
        >>> moe = moe_weights(hf.model.layers[0].mlp, hf.config, "qwen2_moe")
        >>> moe.W_in.shape, moe.W_router.shape    # (n_experts, d_model, d_expert), (d_model, n_experts)

    Reads transformers 5's fused experts (``gate_up_proj`` / ``up_proj`` and ``down_proj`` as
    3-D parameters, normal or transposed storage, optional biases), as their layout flags
    describe them. Experts with a custom gating function (GPT-OSS's clamped GLU), interleaved
    gate/up columns or a per-expert output norm are refused.

    Args:
        mlp: The MoE block of one layer (``layers[i].mlp``, Jamba's ``feed_forward``).
        config: The model's HF config.
        model_type: ``config.model_type``.

    Returns:
        `MoEWeights`; shapes in its docstring. ``expert(e)`` gives one expert as `MLPWeights`.

    Raises:
        UnavailableError (name ``"W_router"`` or ``"W_in"``): not a MoE block, a router that is
            not a linear map (outside the table, only a plain ``nn.Linear`` router is read), or
            experts in a layout that is not the standard one.
    """
    if not isinstance(mlp, nn.Module):
        raise InputError(f"moe_weights expects the MoE block nn.Module; got {type(mlp).__name__}")
    where = type(mlp).__name__
    layout = MOE_LAYOUTS.get(model_type)
    generic = layout is None
    if layout is None:
        router_name = next((n for n in ("gate", "router") if _child(mlp, n) is not None), "gate")
        layout = MoELayout(router=router_name)
    experts = _child(mlp, layout.experts)
    if experts is None:
        raise UnavailableError(
            model_type, "W_router", f"{where} is not a mixture-of-experts block (no experts)"
        )
    has_gate, has_bias, transposed = _expert_flags(experts, model_type)
    router = _child(mlp, layout.router)
    if router is None:
        raise UnavailableError(model_type, "W_router", f"{where} has no router {layout.router!r}")
    if generic and type(router) is not nn.Linear:
        raise UnavailableError(
            model_type,
            "W_router",
            f"the router {type(router).__name__} is not a plain nn.Linear and {model_type} is not in the MoE "
            "table, so its logits are not assumed to be a linear map",
        )
    router_weight = getattr(router, "weight", None)
    if not isinstance(router_weight, torch.Tensor) or router_weight.dim() != 2:
        raise UnavailableError(
            model_type, "W_router", f"the router {type(router).__name__} has no 2-D weight"
        )
    router_weight = router_weight.detach()
    router_bias = getattr(router, "bias", None)
    has = {"router"} if isinstance(router_bias, torch.Tensor) else set()

    if has_bias:
        has.add("experts")
    up = _param(experts, "gate_up_proj" if has_gate else "up_proj", model_type)
    down = _param(experts, "down_proj", model_type)
    # stored (E, out, in) -> per expert (in, out)
    up = up if transposed else up.transpose(1, 2)
    down = down if transposed else down.transpose(1, 2)
    n_experts, d_model, width = up.shape
    d_expert = width // 2 if has_gate else width
    if down.shape != (n_experts, d_expert, down.shape[-1]) or (has_gate and width % 2):
        raise UnavailableError(
            model_type,
            "W_in",
            f"{type(experts).__name__}: up {tuple(up.shape)} and down {tuple(down.shape)} disagree",
        )
    if router_weight.shape != (n_experts, d_model):
        raise UnavailableError(
            model_type,
            "W_router",
            f"router weight {tuple(router_weight.shape)} is not (n_experts, d_model) = ({n_experts}, {d_model})",
        )
    up_bias = (
        _param(experts, "gate_up_proj_bias" if has_gate else "up_proj_bias", model_type) if has_bias else None
    )
    down_bias = _param(experts, "down_proj_bias", model_type) if has_bias else None
    act = getattr(experts, "act_fn", None)
    if not callable(act):
        raise UnavailableError(model_type, "W_in", f"{type(experts).__name__} has no act_fn")

    shared = shared_gate = None
    if layout.shared is not None:
        shared_module = _child(mlp, layout.shared)
        if shared_module is None:
            raise UnavailableError(model_type, "W_in", f"{where} has no shared expert {layout.shared!r}")
        shared = mlp_weights(shared_module, config, model_type)
    if layout.shared_gate is not None:
        rows, gate_bias = linear_rows(
            _child(mlp, layout.shared_gate), model_type, "W_in", f"{where}.{layout.shared_gate}"
        )
        if gate_bias is not None or rows.shape[0] != 1:
            raise UnavailableError(
                model_type, "W_in", f"{where}.{layout.shared_gate} is not Linear(d_model, 1)"
            )
        shared_gate = rows.T

    zeros_e = _zeros((n_experts, d_expert), up)
    return MoEWeights(
        W_router=router_weight.T,
        b_router=router_bias.detach() if "router" in has else _zeros((n_experts,), router_weight),
        W_in=up[..., d_expert:] if has_gate else up,
        W_gate=up[..., :d_expert] if has_gate else None,
        W_out=down,
        b_in=(up_bias[:, d_expert:] if has_gate else up_bias) if up_bias is not None else zeros_e,
        b_gate=(up_bias[:, :d_expert] if up_bias is not None else zeros_e) if has_gate else None,
        b_out=down_bias if down_bias is not None else _zeros((n_experts, down.shape[-1]), down),
        act_fn=act,
        shared=shared,
        W_shared_gate=shared_gate,
        has_bias=frozenset(has),
        layout=f"{model_type}: {'table' if not generic else 'generic'} MoE, {type(experts).__name__} "
        f"({'transposed' if transposed else 'stored (out, in)'}{', gated' if has_gate else ''})",
    )
