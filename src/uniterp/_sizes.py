"""The sizes of a model, read once from its config and its modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ._paths import module_at
from ._rules import CONTEXT_KEYS, POSITION_EMBEDDING_NAMES, SIZE_KEYS
from ._spec import ArchitectureSpec

__all__ = ["Sizes", "read_sizes", "text_config"]


@dataclass(frozen=True)
class Sizes:
    """Sizes of one model; ``None`` where the config does not say.

    Attributes:
        num_layers: Decoder layers.
        hidden_size: Width of the residual stream.
        num_heads: Attention (query) heads.
        num_kv_heads: Key/value heads (grouped-query and multi-query attention).
        head_dim: Width of one attention head.
        vocab_size: Number of logits (the unembedding's output size).
        n_streams: Residual streams per token (1 for all but hyper-connection/AltUp models).
        context_limit: The longest input the model accepts, where learned absolute
            position embeddings set a hard limit; ``None`` otherwise (rotary and ALiBi
            models extrapolate, so uniterp does not refuse longer inputs).
    """

    num_layers: int
    hidden_size: int | None
    num_heads: int | None
    num_kv_heads: int | None
    head_dim: int | None
    vocab_size: int
    n_streams: int = 1
    context_limit: int | None = None


def text_config(config: Any) -> Any:
    """The text part of a (possibly multimodal) config."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _size(config: Any, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        try:
            value = getattr(config, key, None)
        except Exception:  # noqa: BLE001 - heterogeneous configs refuse per-layer sizes globally
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _attention_kv_heads(root: torch.nn.Module, spec: ArchitectureSpec, heads: int | None) -> int | None:
    """The key/value head count the first attention module itself uses, where it says.

    The config can mislead (Falcon's ``multi_query`` uses one key/value head whatever
    ``num_kv_heads`` says); HF attention modules keep the count they compute with.
    """
    stack = module_at(root, spec.layers)
    if not isinstance(stack, torch.nn.ModuleList) or not len(stack):
        return None
    for block in stack:
        attention = spec.resolve_layer(block).modules.get("self_attn")
        if attention is None:
            continue
        module = block.get_submodule(attention)
        groups = getattr(module, "num_key_value_groups", None)
        if isinstance(groups, int) and groups > 0 and heads and heads % groups == 0:
            return heads // groups
        for name in ("num_key_value_heads", "num_kv_heads"):
            value = getattr(module, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None
    return None


def read_sizes(config: Any, spec: ArchitectureSpec, root: torch.nn.Module, num_layers: int) -> Sizes:
    """Read every size of the model bound by ``spec``.

    Example::

        >>> read_sizes(hf_model.config, get_spec("llama"), hf_model, 2).num_kv_heads
        2

    Args:
        config: The model's (text) config.
        spec: Its spec (``config_keys`` overrides the key read for a size).
        root: The ``*ForCausalLM`` module (real or on the meta device).
        num_layers: Length of the decoder stack.
    """
    config = text_config(config)

    def size(name: str) -> int | None:
        own = spec.config_keys.get(name)
        return _size(config, ((own,) if own else ()) + SIZE_KEYS[name])

    hidden, heads = size("hidden_size"), size("num_heads")
    kv = size("num_kv_heads")
    if kv is None and getattr(config, "multi_query", False) is True:
        kv = 1
    if kv is None:
        kv = heads
    kv = _attention_kv_heads(root, spec, heads) or kv
    head_dim = size("head_dim")
    if head_dim is None and hidden is not None and heads:
        head_dim = hidden // heads
    head = module_at(root, spec.lm_head)
    out = getattr(head, "out_features", None)
    vocab = out if isinstance(out, int) else int(getattr(config, "vocab_size", 0) or 0)
    streams = int(getattr(config, spec.residual_streams, 1) or 1) if spec.residual_streams else 1
    limit = None
    if any(
        POSITION_EMBEDDING_NAMES.search(name) and isinstance(module, torch.nn.Embedding)
        for name, module in root.named_modules()
    ):
        limit = _size(config, CONTEXT_KEYS)
    return Sizes(num_layers, hidden, heads, kv, head_dim, vocab, streams, limit)
