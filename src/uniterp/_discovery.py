"""Generic discovery: guess an `ArchitectureSpec` for a model type nobody registered.

The guess is only a starting point: the model built from it is validated at load
(structure and shapes) and numerically (``check()``) before it is trusted.
"""

from __future__ import annotations

import re

import torch

from ._errors import ArchitectureError
from ._spec import ArchitectureSpec

__all__ = ["discover_spec"]

_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention", "mixer")
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "ff")
_NORM = re.compile(r"norm|ln", re.IGNORECASE)


def _path_of(root: torch.nn.Module, target: torch.nn.Module | None) -> str | None:
    if target is None:
        return None
    for name, module in root.named_modules():
        if module is target and name:
            return name
    return None


def _child_named(block: torch.nn.Module, names: tuple[str, ...], kind: str) -> str | None:
    children = dict(block.named_children())
    for name in names:
        if name in children:
            return name
    for name, child in children.items():
        if kind.lower() in type(child).__name__.lower():
            return name
    return None


def discover_spec(module: torch.nn.Module, model_type: str, num_layers: int | None) -> ArchitectureSpec:
    """Locate the standard pieces of ``module`` by structure and naming conventions.

    Example::

        >>> spec = discover_spec(hf_model, "mytype", 12)
        >>> spec.layers
        'model.layers'

    Args:
        module: The ``*ForCausalLM`` module (real or on the meta device).
        model_type: Its ``config.model_type`` (for error messages).
        num_layers: The configured number of decoder layers, if known.

    Returns:
        A spec with ``block="unknown"``.

    Raises:
        ArchitectureError: A required piece (the decoder stack, the embedding or
            the unembedding) could not be found.
    """
    stacks = [
        (name, child)
        for name, child in module.named_modules()
        if isinstance(child, torch.nn.ModuleList) and len(child) > 0
    ]
    tried = [name for name, _ in stacks]
    if num_layers is not None:
        stacks = [(n, c) for n, c in stacks if len(c) == num_layers]
    if not stacks:
        raise ArchitectureError(
            model_type,
            "layers",
            tried,
            f"no ModuleList with {num_layers} entries (config num_hidden_layers)",
        )
    # The decoder stack holds most of the parameters.
    layers_path, stack = max(stacks, key=lambda item: sum(p.numel() for p in item[1].parameters()))

    get_in = getattr(module, "get_input_embeddings", None)
    get_out = getattr(module, "get_output_embeddings", None)
    embed_path = _path_of(module, get_in() if get_in else None)
    if embed_path is None:
        raise ArchitectureError(
            model_type, "embed_tokens", ["get_input_embeddings()"], "the model names no input embedding"
        )
    head_path = _path_of(module, get_out() if get_out else None)
    if head_path is None:
        raise ArchitectureError(
            model_type, "lm_head", ["get_output_embeddings()"], "the model names no output embedding"
        )

    parent_path = layers_path.rpartition(".")[0]
    parent = module.get_submodule(parent_path) if parent_path else module
    final_norm = None
    seen_layers = False
    for name, child in parent.named_children():
        if child is stack:
            seen_layers = True
            continue
        if seen_layers and _NORM.search(name) and not list(child.children()):
            final_norm = f"{parent_path}.{name}" if parent_path else name

    block = stack[0]
    return ArchitectureSpec(
        embed_tokens=embed_path,
        layers=layers_path,
        final_norm=final_norm,
        lm_head=head_path,
        attention=_child_named(block, _ATTENTION_NAMES, "attention"),
        mlp=_child_named(block, _MLP_NAMES, "mlp"),
        block="unknown",
        notes="discovered automatically",
    )
