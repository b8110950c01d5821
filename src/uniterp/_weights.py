"""Attention, embedding and unembedding weights in standard (TransformerLens-like) shapes.

Works on plain torch modules plus the HF config: the caller hands over the attention
module of one layer (``layers[i].self_attn``), the embedding, the unembedding (``lm_head``)
or the root model, with ``config.model_type``. Per-architecture knowledge (which child is
which projection, how a fused projection is laid out) is data in
`uniterp._weight_layouts`; MLP and mixture-of-experts weights live in
`uniterp._mlp_weights`.

Conventions, for every function here:

- ``x`` is the input of the projections, which is the attention module's input (after
  the block's norm) on every family in the table. ``x @ W_Q[h] + b_Q[h]`` is head
  ``h``'s query as the projection emits it: before rotary embeddings, before q/k norms,
  before clipping (OLMo's ``clip_qkv``) and without the score scaling (``1/sqrt(d)``,
  OPT's pre-scaled queries, Gemma 2's ``query_pre_attn_scalar``, Granite's
  ``attention_multiplier``).
- Grouped key/value heads stay grouped: ``W_K``/``W_V`` have ``n_kv_heads`` rows;
  `expand_kv` repeats them for the query heads (head ``h`` reads kv head
  ``h // (n_heads // n_kv_heads)``, as HF's ``repeat_kv``).
- A missing bias is a tensor of zeros (as TransformerLens), so the formulas hold on
  every model; ``has_bias`` says whether the model has one.
- Tensors are detached, in the parameters' dtype and on their device. They share
  storage with the parameters wherever the layout allows a view (separate projections,
  ``[q | k | v]`` and per-head fused layouts, output projections, embeddings); grouped and
  sharded fused layouts (Falcon's grouped ``query_key_value``, CodeGen's ``qkv_proj``),
  Gemma's scaled embedding and missing biases are fresh tensors. Treat them as
  read-only: ``.clone()`` before editing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ._errors import InputError, ShapeError, UnavailableError
from ._weight_layouts import (
    GENERIC_OUTPUT_NAMES,
    NO_POSITIONAL_TABLE,
    POSITIONAL_EMBEDDINGS,
    REFUSED_ATTENTION_MARKERS,
    AttentionLayout,
    attention_layout_for,
)

__all__ = [
    "AttentionWeights",
    "UnembeddingWeights",
    "attention_weights",
    "embedding_weights",
    "expand_kv",
    "linear_rows",
    "positional_weights",
    "unembedding_weights",
]

# Linear subclasses whose forward is ``x @ weight.T + bias`` written out by hand.
_LINEAR_EQUIVALENTS = frozenset({"transformers.models.falcon.modeling_falcon.FalconLinear"})


@dataclass(frozen=True)
class AttentionWeights:
    """The weights of one attention layer, per head.

    Example::

        >>> w = attention_weights(hf.model.layers[0].self_attn, hf.config, "llama")
        >>> q = torch.einsum("bsm,hmd->bshd", x, w.W_Q) + w.b_Q   # (batch, seq, n_heads, head_dim)

    Attributes:
        W_Q: ``(n_heads, hidden, head_dim)``; ``x @ W_Q[h] + b_Q[h]`` is head ``h``'s query
            as projected (before rotary embeddings and q/k norms).
        W_K: ``(n_kv_heads, hidden, head_dim)``.
        W_V: ``(n_kv_heads, hidden, head_dim)``.
        W_O: ``(n_heads, head_dim, hidden)``; with ``z`` the output projection's input split
            per head ``(batch, seq, n_heads, head_dim)``, ``sum_h z[..., h, :] @ W_O[h] + b_O``
            is the output projection's output.
        b_Q: ``(n_heads, head_dim)``.
        b_K: ``(n_kv_heads, head_dim)``.
        b_V: ``(n_kv_heads, head_dim)``.
        b_O: ``(hidden,)``.
        n_heads: Query heads.
        n_kv_heads: Key/value heads (``== n_heads`` without grouped-query attention).
        head_dim: Width of one head.
        has_bias: Which of ``"Q"``, ``"K"``, ``"V"``, ``"O"`` the model has a bias for (the
            others are zeros).
        layout: How the weights were read (table row or generic rule), for messages.
    """

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor
    b_Q: torch.Tensor
    b_K: torch.Tensor
    b_V: torch.Tensor
    b_O: torch.Tensor
    n_heads: int
    n_kv_heads: int
    head_dim: int
    has_bias: frozenset[str]
    layout: str

    def expand_kv(self) -> AttentionWeights:
        """The same weights with key/value heads repeated for every query head.

        Example::

            >>> w.expand_kv().W_K.shape   # (n_heads, hidden, head_dim)
        """
        if self.n_kv_heads == self.n_heads:
            return self
        return replace(
            self,
            W_K=expand_kv(self.W_K, self.n_heads),
            W_V=expand_kv(self.W_V, self.n_heads),
            b_K=expand_kv(self.b_K, self.n_heads),
            b_V=expand_kv(self.b_V, self.n_heads),
            n_kv_heads=self.n_heads,
        )


@dataclass(frozen=True)
class UnembeddingWeights:
    """The unembedding (``lm_head``) as a matrix and a bias.

    Example::

        >>> u = unembedding_weights(hf.lm_head, hf.config, "llama")
        >>> head_out = h @ u.W_U + u.b_U    # (batch, seq, vocab)

    Attributes:
        W_U: ``(d_model, vocab)``; ``h @ W_U + b_U`` is the ``lm_head`` output for the final
            normed state ``h``. Some families transform it into logits afterwards (Gemma 2/3:
            ``final_logit_softcapping``; Cohere: ``* logit_scale``; Granite:
            ``/ logits_scaling``); the weights do not include that.
        b_U: ``(vocab,)``, zeros when the head has no bias.
        has_bias: Whether the head has a bias.
    """

    W_U: torch.Tensor
    b_U: torch.Tensor
    has_bias: bool


def expand_kv(weight: torch.Tensor, n_heads: int, dim: int = 0) -> torch.Tensor:
    """Repeat grouped key/value heads (dimension ``dim``) so there is one per query head.

    Example::

        >>> expand_kv(w.W_K, w.n_heads).shape    # (n_kv_heads, hidden, d) -> (n_heads, hidden, d)
        >>> with model.trace("Hello"):
        ...     k = model.keys[0].save()            # (batch, n_kv_heads, seq, head_dim)
        >>> expand_kv(k, model.num_heads, dim=1).shape   # (batch, n_heads, seq, head_dim)

    Query head ``h`` reads key/value head ``h // (n_heads // n_kv_heads)``, as HF's
    ``repeat_kv``. Works on ``W_K``/``W_V`` ``(n_kv_heads, hidden, head_dim)``, ``b_K``/``b_V``
    ``(n_kv_heads, head_dim)`` (heads first, the default ``dim=0``), and on the ``keys`` and
    ``values`` a trace reads ``(batch, n_kv_heads, seq, head_dim)`` with ``dim=1``.

    Args:
        weight: A tensor with the key/value heads along ``dim``.
        n_heads: Number of query heads; a multiple of ``weight.shape[dim]``.
        dim: The heads' dimension (negative counts from the end).

    Returns:
        ``weight`` with ``n_heads`` along ``dim`` (a new tensor unless nothing is repeated).

    Raises:
        InputError: ``weight`` is not a tensor with a dimension ``dim``, or ``n_heads`` is
            not a positive int.
        ShapeError: ``n_heads`` is not a multiple of the key/value heads.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() < 1:
        raise InputError(
            f"expand_kv expects a tensor with key/value heads first, e.g. W_K (n_kv_heads, hidden, head_dim); "
            f"got {type(weight).__name__}{'' if not isinstance(weight, torch.Tensor) else ' of 0 dims'}"
        )
    if isinstance(dim, bool) or not isinstance(dim, int) or not -weight.dim() <= dim < weight.dim():
        raise InputError(
            f"expand_kv: dim must be an int in [{-weight.dim()}, {weight.dim()}) for a tensor of shape "
            f"{tuple(weight.shape)}; got {dim!r} (keys/values read in a trace have their heads at dim=1)"
        )
    if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
        raise InputError(f"expand_kv: n_heads must be a positive int (the query heads); got {n_heads!r}")
    n_kv = weight.shape[dim]
    if n_heads % n_kv:
        raise ShapeError(
            f"expand_kv: {n_heads} query heads cannot share {n_kv} key/value heads evenly "
            f"(shape {tuple(weight.shape)}, heads at dim {dim}); pass the model's n_heads, a multiple of {n_kv}"
        )
    if n_heads == n_kv:
        return weight
    return weight.repeat_interleave(n_heads // n_kv, dim=dim)


def linear_rows(
    module: nn.Module | None, model_type: str, name: str, where: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``(out, in)`` weight and ``(out,)`` bias of a linear layer, detached.

    Example::

        >>> rows, bias = linear_rows(attn.q_proj, "llama", "W_Q", "self_attn.q_proj")

    Accepts ``nn.Linear`` (and subclasses that do not change its forward, or write out the
    same product by hand, such as Falcon's ``FalconLinear``) and transformers' ``Conv1D``
    (GPT-2, whose weight is stored ``(in, out)``). Anything else -- quantized or adapter
    layers, custom kernels -- is refused, never read.

    Raises:
        UnavailableError: The module is missing or not one of those linear layers.
    """
    if module is None:
        raise UnavailableError(model_type, name, f"no module at {where!r}")
    cls = type(module)
    qualified = f"{cls.__module__}.{cls.__qualname__}"
    if cls.__name__ == "Conv1D" and cls.__module__ == "transformers.pytorch_utils":
        weight = module.weight.detach()
        bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
        return weight.T, bias
    if isinstance(module, nn.Linear) and (
        cls.forward is nn.Linear.forward or qualified in _LINEAR_EQUIVALENTS
    ):
        bias = module.bias.detach() if module.bias is not None else None
        return module.weight.detach(), bias
    raise UnavailableError(
        model_type,
        name,
        f"{where!r} is a {qualified}, not a plain linear layer (quantized, adapter or custom "
        "layers are not read: their weight is not the map they apply)",
    )


def _int_attr(obj: Any, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _head_counts(attention: nn.Module, config: Any, model_type: str) -> tuple[int, int, int | None]:
    """(n_heads, head_dim, declared n_kv_heads or None) from the module, then the config."""
    cfg = _text_config(config)
    n_heads = _int_attr(attention, ("num_heads", "num_attention_heads", "n_head")) or _int_attr(
        cfg, ("num_attention_heads",)
    )
    if n_heads is None:
        raise UnavailableError(
            model_type, "W_Q", "neither the attention module nor the config gives the number of heads"
        )
    head_dim = _int_attr(attention, ("head_dim", "head_size")) or _int_attr(cfg, ("head_dim",))
    if head_dim is None:
        hidden = _int_attr(cfg, ("hidden_size",))
        if hidden is None or hidden % n_heads:
            raise UnavailableError(
                model_type, "W_Q", "the head width cannot be read from the module or config"
            )
        head_dim = hidden // n_heads
    n_kv = _int_attr(attention, ("num_key_value_heads", "num_kv_heads", "kv_heads"))
    groups = _int_attr(attention, ("num_key_value_groups",))
    if n_kv is None and groups is not None and n_heads % groups == 0:
        n_kv = n_heads // groups
    if n_kv is None:
        n_kv = _int_attr(cfg, ("num_key_value_heads",))
    return n_heads, head_dim, n_kv


def _per_head(rows: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """``(heads*head_dim, in)`` projection rows -> ``(heads, in, head_dim)``."""
    return rows.reshape(heads, head_dim, rows.shape[-1]).transpose(1, 2)


def _bias_or_zeros(bias: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    if bias is None:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    return bias.reshape(shape)


def _fused_kv_heads(out: int, layout: AttentionLayout, n_heads: int, head_dim: int) -> int | None:
    """Key/value heads of a fused projection with ``out`` outputs, or ``None`` if it cannot fit."""
    if out % head_dim:
        return None
    width = out // head_dim  # in heads
    if layout.split == "concat":
        n_kv, rest = divmod(width - n_heads, 2)
        return n_kv if not rest and n_kv >= 1 else None
    if layout.split == "grouped":
        n_kv, rest = divmod(width - n_heads, 2)
        return n_kv if not rest and n_kv >= 1 and n_heads % n_kv == 0 else None
    if layout.split == "per_head":
        return n_heads if width == 3 * n_heads else None
    if layout.split == "mp_qvk":
        return n_heads if width == 3 * n_heads and (n_heads * head_dim) % layout.mp == 0 else None
    return None


def _split_fused(
    t: torch.Tensor, layout: AttentionLayout, n_heads: int, n_kv: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a fused projection's rows ``(out, in)`` or bias ``(out,)`` into query, key, value rows."""
    rest = t.shape[1:]
    q_width, kv_width = n_heads * head_dim, n_kv * head_dim
    if layout.split == "concat":  # [q | k | v]
        return t[:q_width], t[q_width : q_width + kv_width], t[q_width + kv_width :]
    if layout.split == "per_head":  # (n, 3, d)
        grid = t.reshape(n_heads, 3, head_dim, *rest)
        q, k, v = (grid[:, i].reshape(q_width, *rest) for i in range(3))
        return q, k, v
    if layout.split == "grouped":  # (kv, n/kv + 2, d)
        g = n_heads // n_kv
        grid = t.reshape(n_kv, g + 2, head_dim, *rest)
        return (
            grid[:, :g].reshape(q_width, *rest),
            grid[:, g].reshape(kv_width, *rest),
            grid[:, g + 1].reshape(kv_width, *rest),
        )
    if layout.split == "mp_qvk":  # (mp, 3 = [q, v, k], n*d/mp)
        grid = t.reshape(layout.mp, 3, q_width // layout.mp, *rest)
        q, v, k = (grid[:, i].reshape(q_width, *rest) for i in range(3))
        return q, k, v
    raise AssertionError(f"unknown split {layout.split!r}")  # the table only holds the splits above


def _refusal_marker(attention: nn.Module) -> str | None:
    children = dict(attention.named_children())
    for marker, reason in REFUSED_ATTENTION_MARKERS.items():
        if marker in children:
            return reason
    return None


def _generic_layout(attention: nn.Module, model_type: str) -> AttentionLayout:
    children = dict(attention.named_children())
    if not all(name in children for name in ("q_proj", "k_proj", "v_proj")):
        found = ", ".join(sorted(children)) or "no children"
        raise UnavailableError(
            model_type,
            "W_Q",
            f"{type(attention).__name__} has no separate q_proj/k_proj/v_proj and its layout is not in "
            f"the weight table (children: {found}); a fused or non-softmax projection is never guessed",
        )
    outputs = [name for name in GENERIC_OUTPUT_NAMES if name in children]
    if len(outputs) != 1:
        raise UnavailableError(
            model_type,
            "W_O",
            f"{type(attention).__name__}: expected exactly one output projection among "
            f"{list(GENERIC_OUTPUT_NAMES)}, found {outputs or 'none'}",
        )
    return AttentionLayout("separate", o=outputs[0], note=f"generic rule: q_proj/k_proj/v_proj, {outputs[0]}")


def attention_weights(attention: nn.Module, config: Any, model_type: str) -> AttentionWeights:
    """Per-head ``W_Q, W_K, W_V, W_O`` and biases of one attention module.

    Example::

        >>> hf = AutoModelForCausalLM.from_pretrained(path)
        >>> w = attention_weights(hf.transformer.h[0].attn, hf.config, "gpt2")
        >>> w.W_Q.shape, w.W_O.shape   # (n_heads, hidden, head_dim), (n_heads, head_dim, hidden)

    Fused projections are split as the HF code splits them (GPT-2 ``c_attn``, GPT-NeoX and
    Bloom ``query_key_value``, Falcon's three variants, Phi-3 ``qkv_proj``, CodeGen's sharded
    ``qkv_proj``, GPT-BigCode multi-query ``c_attn``; see `uniterp._weight_layouts`).
    Model types outside the table are read only when the module has separate
    ``q_proj``/``k_proj``/``v_proj`` linear layers and one output projection whose shapes
    agree with the head counts.

    Args:
        attention: The attention module of one layer (``layers[i].self_attn`` / ``attn`` /
            ``attention`` / ``self_attention``).
        config: The model's HF config (a multimodal config is reduced to its text config).
        model_type: ``config.model_type`` (used for the table and error messages).

    Returns:
        `AttentionWeights`; shapes in its docstring.

    Raises:
        UnavailableError (name ``"W_Q"`` or ``"W_O"``): latent/low-rank attention (MLA),
            linear attention and state-space mixers, unknown fused layouts, non-linear
            (quantized, adapter) projections, or shapes that disagree with the head counts;
            the message gives the reason.
    """
    if not isinstance(attention, nn.Module):
        raise InputError(f"attention_weights expects the attention nn.Module; got {type(attention).__name__}")
    marker = _refusal_marker(attention)
    if marker is not None:
        raise UnavailableError(model_type, "W_Q", f"{type(attention).__name__} is a {marker}")
    layout = attention_layout_for(model_type, config)
    if layout is None:
        layout = _generic_layout(attention, model_type)
    n_heads, head_dim, declared_kv = _head_counts(attention, config, model_type)
    where = type(attention).__name__

    def child(name: str) -> nn.Module | None:
        return (
            getattr(attention, name, None) if isinstance(getattr(attention, name, None), nn.Module) else None
        )

    def fail(reason: str, name: str = "W_Q") -> UnavailableError:
        return UnavailableError(model_type, name, f"{where} ({layout.note}): {reason}")

    q_width = n_heads * head_dim
    biases: set[str] = set()
    if layout.split == "separate":
        parts = []
        for label, name in (("Q", layout.q), ("K", layout.k), ("V", layout.v)):
            rows, bias = linear_rows(child(name), model_type, f"W_{label}", f"{where}.{name}")
            parts.append((rows, bias))
            if bias is not None:
                biases.add(label)
        (q_rows, q_bias), (k_rows, k_bias), (v_rows, v_bias) = parts
        if layout.gated_query:  # (n, 2, d): the query half of each head, then its output gate
            if q_rows.shape[0] != 2 * q_width:
                raise fail(f"{layout.q} has {q_rows.shape[0]} outputs, expected 2 * n_heads * head_dim")
            q_rows = q_rows.reshape(n_heads, 2, head_dim, -1)[:, 0].reshape(q_width, -1)
            q_bias = None if q_bias is None else q_bias.reshape(n_heads, 2, head_dim)[:, 0].reshape(-1)
        if q_rows.shape[0] != q_width:
            raise fail(f"{layout.q} has {q_rows.shape[0]} outputs, expected n_heads * head_dim = {q_width}")
        if k_rows.shape != v_rows.shape or k_rows.shape[0] % head_dim:
            raise fail(
                f"{layout.k} {tuple(k_rows.shape)} and {layout.v} {tuple(v_rows.shape)} are not "
                f"(n_kv_heads * {head_dim}, hidden) each"
            )
        n_kv = k_rows.shape[0] // head_dim
    else:
        rows, fused_bias = linear_rows(child(layout.qkv), model_type, "W_Q", f"{where}.{layout.qkv}")
        n_kv = _fused_kv_heads(rows.shape[0], layout, n_heads, head_dim)
        if n_kv is None:
            raise fail(
                f"{layout.qkv} has {rows.shape[0]} outputs, which do not fit the layout with "
                f"{n_heads} heads of {head_dim}"
            )
        q_rows, k_rows, v_rows = _split_fused(rows, layout, n_heads, n_kv, head_dim)
        q_bias = k_bias = v_bias = None
        if fused_bias is not None:
            biases.update("QKV")
            q_bias, k_bias, v_bias = _split_fused(fused_bias, layout, n_heads, n_kv, head_dim)
    if declared_kv is not None and declared_kv != n_kv and layout.split in ("separate", "concat", "grouped"):
        raise fail(
            f"the projections hold {n_kv} key/value heads but the module/config declares {declared_kv}"
        )
    if n_heads % n_kv:
        raise fail(f"{n_heads} query heads are not a multiple of {n_kv} key/value heads")
    o_rows, o_bias = linear_rows(child(layout.o), model_type, "W_O", f"{where}.{layout.o}")
    if o_rows.shape[1] != q_width:
        raise fail(
            f"{layout.o} reads {o_rows.shape[1]} features, expected n_heads * head_dim = {q_width}", "W_O"
        )
    if o_bias is not None:
        biases.add("O")
    d_out = o_rows.shape[0]
    return AttentionWeights(
        W_Q=_per_head(q_rows, n_heads, head_dim),
        W_K=_per_head(k_rows, n_kv, head_dim),
        W_V=_per_head(v_rows, n_kv, head_dim),
        W_O=o_rows.T.reshape(n_heads, head_dim, d_out),
        b_Q=_bias_or_zeros(q_bias, (n_heads, head_dim), q_rows),
        b_K=_bias_or_zeros(k_bias, (n_kv, head_dim), k_rows),
        b_V=_bias_or_zeros(v_bias, (n_kv, head_dim), v_rows),
        b_O=_bias_or_zeros(o_bias, (d_out,), o_rows),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        has_bias=frozenset(biases),
        layout=f"{model_type}: {layout.note}",
    )


def embedding_weights(embedding: nn.Module, config: Any, model_type: str) -> torch.Tensor:
    """The token embedding table ``W_E`` ``(vocab, d_model)``: ``W_E[t]`` is what the module returns.

    Example::

        >>> W_E = embedding_weights(hf.get_input_embeddings(), hf.config, "gemma")
        >>> torch.equal(W_E[ids], hf.get_input_embeddings()(ids))
        True

    ``nn.Embedding`` gives its weight (a view). Gemma-style ``*ScaledWordEmbedding`` modules
    multiply the looked-up row by ``embed_scale``; ``W_E`` includes that factor (a new
    tensor). Anything done after the embedding module (Bloom's embedding layer norm, OPT's
    ``project_in``, learned positions) is not part of ``W_E``.

    Raises:
        UnavailableError (name ``"W_E"``): the module is another kind of embedding.
    """
    cls = type(embedding)
    if isinstance(embedding, nn.Embedding) and cls.forward is nn.Embedding.forward:
        return embedding.weight.detach()
    scale = getattr(embedding, "embed_scale", None)
    if (
        isinstance(embedding, nn.Embedding)
        and cls.__name__.endswith("ScaledWordEmbedding")
        and isinstance(scale, torch.Tensor)
        and scale.numel() == 1
    ):
        weight = embedding.weight.detach()
        return weight * scale.to(device=weight.device, dtype=weight.dtype)
    raise UnavailableError(
        model_type,
        "W_E",
        f"the embedding is a {cls.__module__}.{cls.__qualname__}, not an nn.Embedding or a scaled "
        "word embedding; its table is not read",
    )


def unembedding_weights(lm_head: nn.Module, config: Any, model_type: str) -> UnembeddingWeights:
    """``W_U`` ``(d_model, vocab)`` and ``b_U`` ``(vocab,)`` of the unembedding.

    Example::

        >>> u = unembedding_weights(hf.lm_head, hf.config, "gpt2")
        >>> torch.allclose(h @ u.W_U + u.b_U, hf.lm_head(h))
        True

    ``W_U`` is a view of the head's weight (shared with ``W_E`` when the model ties them).
    The logit transforms some families apply after the head (softcapping, logit scales) are
    not included; see `UnembeddingWeights`.

    Raises:
        UnavailableError (name ``"W_U"``): the head is not a plain linear layer.
    """
    rows, bias = linear_rows(lm_head, model_type, "W_U", "lm_head")
    b_U = bias if bias is not None else torch.zeros(rows.shape[0], dtype=rows.dtype, device=rows.device)
    return UnembeddingWeights(W_U=rows.T, b_U=b_U, has_bias=bias is not None)


def positional_weights(model: nn.Module, config: Any, model_type: str) -> torch.Tensor:
    """The learned absolute position table ``W_pos`` ``(n_positions, d_model)``.

    Example::

        >>> W_pos = positional_weights(hf, hf.config, "gpt2")
        >>> W_pos[p]          # what the position module adds at position p

    ``W_pos[p]`` is the row the model adds for position ``p`` (OPT's table is offset by two
    rows natively; ``W_pos`` starts at position 0). A view of the table.

    Args:
        model: The root HF model (``AutoModelForCausalLM`` instance); the table is found at the
            native path in `uniterp._weight_layouts.POSITIONAL_EMBEDDINGS`.
        config: Its config.
        model_type: ``config.model_type``.

    Raises:
        UnavailableError (name ``"W_pos"``): the family has no learned position table (rotary,
            ALiBi, relative positions) or it is not in the table.
    """
    entry = POSITIONAL_EMBEDDINGS.get(model_type)
    if entry is None:
        cfg = _text_config(config)
        if model_type in NO_POSITIONAL_TABLE:
            reason = NO_POSITIONAL_TABLE[model_type]
        elif getattr(cfg, "rope_parameters", None) or getattr(cfg, "rotary_dim", None):
            reason = (
                "positions enter through rotary embeddings applied to queries and keys; there is no table"
            )
        else:
            reason = "no learned absolute position table is known for this model type"
        raise UnavailableError(model_type, "W_pos", reason)
    path, offset = entry
    module: Any = model
    for part in path.split("."):
        module = getattr(module, part, None)
    if not isinstance(module, nn.Embedding):
        raise UnavailableError(model_type, "W_pos", f"no nn.Embedding at {path!r}")
    return module.weight.detach()[offset:]
