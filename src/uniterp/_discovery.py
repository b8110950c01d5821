"""Generic discovery: guess an `ArchitectureSpec` for a model type nobody registered.

The guess is only a starting point: the model built from it is validated at load
(structure and shapes) and numerically (``check()``) before it is trusted.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ._errors import ArchitectureError
from ._paths import join
from ._rules import (
    ATTENTION_CHILD_NAMES,
    ATTENTION_CLASS,
    BLOCK_PATTERNS,
    LAYER_COUNT_KEYS,
    LOGIT_KEYS,
    MLP_CHILD_NAMES,
    MLP_CLASS,
    NORM_CLASS,
    STREAM_KEYS,
    STREAM_READOUT,
)
from ._spec import ArchitectureSpec, is_attention_class, is_mlp_class

__all__ = ["discover_spec"]


def _norm_width(module: torch.nn.Module) -> int | None:
    """The width a norm's weight expects, or ``None`` when it has no weight."""
    weight = getattr(module, "weight", None)
    return int(weight.shape[-1]) if isinstance(weight, torch.Tensor) and weight.dim() >= 1 else None


def _path_of(root: torch.nn.Module, target: torch.nn.Module | None) -> str | None:
    if target is None:
        return None
    for name, module in root.named_modules():
        if module is target and name:
            return name
    return None


def _homogeneous(stack: torch.nn.ModuleList) -> bool:
    kinds = {type(block).__name__ for block in stack}
    return len(kinds) <= 3  # hybrid stacks mix a few block classes


def _other_towers(module: torch.nn.Module, config: Any) -> tuple[str, ...]:
    """Paths of nested sub-models configured for something other than the text model.

    A vision-language model nests its image encoder as a ``PreTrainedModel`` with its
    own config (GIT's ``image_encoder``); its blocks never run on a text-only input.
    """
    from transformers import PreTrainedModel

    text_kinds = {type(c) for c in (getattr(module, "config", None), config) if c is not None}
    return tuple(
        f"{name}."
        for name, child in module.named_modules()
        if name
        and isinstance(child, PreTrainedModel)
        and getattr(child, "config", None) is not None
        and type(child.config) not in text_kinds
    )


def _pick_stack(module: torch.nn.Module, model_type: str, counts: list[int], config: Any = None) -> str:
    stacks = [
        (name, child)
        for name, child in module.named_modules()
        if isinstance(child, torch.nn.ModuleList) and len(child) > 0 and _homogeneous(child)
    ]
    if not stacks:
        raise ArchitectureError(model_type, "layers", [], "the model holds no ModuleList of blocks")
    towers = _other_towers(module, config)
    text_stacks = [s for s in stacks if not s[0].startswith(towers)]
    if text_stacks:  # prefer the text model's stacks; the probe refuses one that never runs
        stacks = text_stacks

    def weight(item: tuple[str, torch.nn.Module]) -> int:
        return sum(p.numel() for p in item[1].parameters())

    for count in counts:
        matching = [s for s in stacks if len(s[1]) == count]
        if matching:
            return max(matching, key=weight)[0]
    return max(stacks, key=weight)[0]


def _refuse_split_layers(module: torch.nn.Module, model_type: str, layers_path: str, count: int) -> None:
    """Refuse a model whose layers are split across parallel ModuleLists (XLM).

    When the picked stack holds neither attention nor an MLP and its parent holds
    other ModuleLists of the same length, the stack is one part of each layer
    (``attentions[i]``, ``layer_norm1[i]``, ``ffns[i]``, ``layer_norm2[i]``): no
    module spans a whole layer, so the residual stream between layers is no
    module's input or output.
    """
    parent_path = layers_path.rpartition(".")[0]
    parent = module.get_submodule(parent_path) if parent_path else module
    parts = [
        f"{parent_path}.{name}" if parent_path else name
        for name, child in parent.named_children()
        if isinstance(child, torch.nn.ModuleList) and len(child) == count
    ]
    if len(parts) > 1:
        raise ArchitectureError(
            model_type,
            "layers",
            parts,
            "each layer is split across parallel ModuleLists with no module holding a whole layer, "
            "so the residual stream between layers is no module's input or output",
        )


def _child(
    block: torch.nn.Module, names: tuple[str, ...], pattern: re.Pattern[str], accept: Any
) -> tuple[str, ...]:
    """The child that is the block's attention (or MLP): by class name first, then by name."""
    children = dict(block.named_children())

    def allowed(name: str) -> bool:
        child = children[name]
        return accept(type(child).__name__) and not isinstance(child, torch.nn.ModuleList)

    found = [n for n in names if n in children and allowed(n) and pattern.search(type(children[n]).__name__)]
    found += [
        n for n, c in children.items() if n not in found and allowed(n) and pattern.search(type(c).__name__)
    ]
    found += [n for n in names if n in children and n not in found and allowed(n)]
    return tuple(found[:1])


def discover_spec(module: torch.nn.Module, model_type: str, config: Any = None) -> ArchitectureSpec:
    """Locate the standard pieces of ``module`` by structure and naming conventions.

    Example::

        >>> spec = discover_spec(hf_model, "mytype", hf_model.config)
        >>> spec.layers
        'model.layers'

    Five small finders, each for one piece: the decoder stack, the embedding and
    unembedding (with anything between the backbone and the head), the final norm,
    the attention and MLP of each block, and the logit post-processing and
    residual streams named by the config.

    Args:
        module: The ``*ForCausalLM`` module (real or on the meta device).
        model_type: Its ``config.model_type`` (for error messages).
        config: Its (text) config, for the layer count and logit post-processing.

    Returns:
        A spec with ``block="unknown"`` unless a known block shape was recognised.

    Raises:
        ArchitectureError: A required piece (the decoder stack, the embedding or
            the unembedding) could not be found.
    """
    counts = [v for key in LAYER_COUNT_KEYS if isinstance(v := getattr(config, key, None), int)]
    layers_path = _pick_stack(module, model_type, counts, config)
    stack = module.get_submodule(layers_path)
    embed_path, head_path, pre_unembed = _find_ends(module, model_type, layers_path)
    final_norm = _find_final_norm(module, layers_path, head_path, getattr(config, "hidden_size", None))
    fields = _find_block_parts(module, model_type, layers_path, stack)
    fields.update(_find_config_fields(module, layers_path, config))
    fields.setdefault("block", "unknown")
    return ArchitectureSpec(
        embed_tokens=embed_path,
        layers=layers_path,
        final_norm=final_norm,
        lm_head=head_path,
        pre_unembed=pre_unembed,
        notes="discovered automatically",
        **fields,
    )


def _find_ends(
    module: torch.nn.Module, model_type: str, layers_path: str
) -> tuple[str, str, tuple[str, ...]]:
    """The input embedding, the whole prediction head, and the modules between backbone and head."""
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
    # The whole prediction head (BERT's cls: transform + decoder), not only its last Linear.
    top = head_path.split(".")[0]
    if top != head_path and not layers_path.startswith(top + "."):
        head_path = top
    # Top-level modules besides the backbone and the head that carry weights sit
    # between them (ELECTRA's generator_predictions); check() verifies the guess.
    backbone = layers_path.split(".")[0]
    pre_unembed = tuple(
        name
        for name, child in module.named_children()
        if name not in (backbone, head_path.split(".")[0])
        and any(True for _ in child.parameters())
        and not embed_path.startswith(name + ".")
        and embed_path != name
    )
    return embed_path, head_path, pre_unembed


def _find_final_norm(
    module: torch.nn.Module, layers_path: str, head_path: str, hidden: int | None
) -> str | None:
    """The norm after the stack: a sibling registered after it, else before it, else next to an ancestor."""
    stack = module.get_submodule(layers_path)
    parent_path = layers_path.rpartition(".")[0]
    parent = module.get_submodule(parent_path) if parent_path else module
    final_norm = None
    seen_layers = False
    for name, child in parent.named_children():
        if child is stack:
            seen_layers = True
            continue
        width = _norm_width(child)
        # a norm of another width (Gemma 4's per-layer-input projection norm) is not the final norm
        if (
            seen_layers
            and NORM_CLASS.search(type(child).__name__)
            and (width is None or not isinstance(hidden, int) or width == hidden)
        ):
            final_norm = join(parent_path, name)
    if final_norm is None:  # a norm registered before the stack (RoBERTa-PreLayerNorm's encoder.LayerNorm)
        for name, child in parent.named_children():
            if child is not stack and NORM_CLASS.search(type(child).__name__) and "embed" not in name.lower():
                final_norm = join(parent_path, name)
    # else a norm next to an ancestor of the stack (RoBERTa-PreLayerNorm's model-level LayerNorm)
    ancestor = parent_path
    while final_norm is None and ancestor:
        ancestor = ancestor.rpartition(".")[0]
        holder = module.get_submodule(ancestor) if ancestor else module
        for name, child in holder.named_children():
            path = join(ancestor, name)
            if NORM_CLASS.search(type(child).__name__) and "embed" not in name.lower() and path != head_path:
                final_norm = path
    return final_norm


def _find_block_parts(
    module: torch.nn.Module, model_type: str, layers_path: str, stack: torch.nn.Module
) -> dict[str, Any]:
    """Spec fields for the attention and MLP of the blocks: a known block shape, or one child each."""
    children = {n for block in stack for n, _ in block.named_children()}
    for required, pattern_fields in BLOCK_PATTERNS:
        if required <= children:
            return dict(pattern_fields)
    attention: list[str] = []
    mlp: list[str] = []
    for block in stack:
        for name in _child(block, ATTENTION_CHILD_NAMES, ATTENTION_CLASS, is_attention_class):
            if name not in attention:
                attention.append(name)
        for name in _child(block, MLP_CHILD_NAMES, MLP_CLASS, is_mlp_class):
            if name not in mlp:
                mlp.append(name)
    held = ", ".join(sorted({f"{n}: {type(c).__name__}" for b in stack for n, c in b.named_children()}))
    unavailable = {}
    if not attention:
        unavailable["self_attn"] = f"no block holds softmax attention (blocks hold {held})"
    if not mlp:
        unavailable["mlp"] = f"no block holds an MLP module (blocks hold {held})"
    if not attention and not mlp:
        _refuse_split_layers(module, model_type, layers_path, len(stack))
    return dict(attention=tuple(attention) or None, mlp=tuple(mlp) or None, unavailable=unavailable)


def _find_config_fields(module: torch.nn.Module, layers_path: str, config: Any) -> dict[str, Any]:
    """Logit post-processing and residual streams named by the config."""
    fields: dict[str, Any] = {}
    for field_name, keys in LOGIT_KEYS.items():
        for key in keys:
            if getattr(config, key, None) is not None:
                fields[field_name] = key
    parent_path = layers_path.rpartition(".")[0]
    parent = module.get_submodule(parent_path) if parent_path else module
    for key in STREAM_KEYS:
        if isinstance(getattr(config, key, None), int) and getattr(config, key) > 1:
            fields["residual_streams"] = key
            fields["stream_readout"] = next(
                (
                    join(parent_path, name)
                    for name, _ in parent.named_children()
                    if STREAM_READOUT.match(name)
                ),
                None,
            )
            break
    return fields
