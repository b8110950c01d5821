"""Steering vectors from contrastive prompts, and generation with steering.

Example::

    >>> from uniterp.steering import steering_vector, generate_with_steering
    >>> v = steering_vector(model, ["I love it", "Wonderful!"], ["I hate it", "Awful!"], layer=6)
    >>> v.shape                                       # (hidden,)
    >>> ids = generate_with_steering(model, "I think that", layers=[6], steering_vector=v,
    ...                              factor=4.0, max_new_tokens=20)
    >>> model.tokenizer.batch_decode(ids)

The addition itself is `StandardizedTransformer.steer`; these helpers compute a
direction and apply it at every generation step.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._errors import InputError, ShapeError
from ._tooling import as_layer_list, as_prompt_list, use_remote
from .activations import collect_token_activations_batched

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["generate_with_steering", "steering_vector"]

# nnsight warns when a bounded ``tracer.iter[:n]`` loop asks for a step the run
# never made; a generation that ends early on EOS does exactly that, by design.
_CUT_SHORT = r".*was never reached: the loop asked for a step the run did not make"


def steering_vector(
    model: StandardizedTransformer,
    positive_prompts: Sequence[str],
    negative_prompts: Sequence[str],
    layer: int,
    position: int = -1,
    batch_size: int = 32,
    remote: bool | str = False,
) -> torch.Tensor:
    """Mean difference of ``layers_output[layer]`` between two prompt sets.

    Example::

        >>> v = steering_vector(model, ["Love", "Joy"], ["Hate", "Fear"], layer=4)
        >>> v.shape
        torch.Size([768])

    ``mean_i h_pos[i] - mean_j h_neg[j]``, where ``h`` is the residual stream
    leaving ``layer`` at token ``position`` of each prompt (counted within the
    prompt, whatever the padding). Means are taken in float32.

    Args:
        model: The model.
        positive_prompts: Prompts showing the behaviour to steer towards.
        negative_prompts: Prompts showing its opposite.
        layer: Layer index.
        position: Token position within each prompt (default: last token).
        batch_size: Prompts per forward pass.
        remote: Passed to nnsight's ``trace``.

    Returns:
        ``(hidden,)`` float32 tensor on CPU.

    Raises:
        InputError: An empty prompt set.
        LayerIndexError: ``layer`` out of range.
    """
    for name, group in (("positive_prompts", positive_prompts), ("negative_prompts", negative_prompts)):
        if isinstance(group, str) or len(group) == 0:
            raise InputError(f"steering_vector: {name} must be a non-empty list of prompts")
    means: list[torch.Tensor] = []
    for group in (positive_prompts, negative_prompts):
        acts = collect_token_activations_batched(
            model, list(group), batch_size, layers=[layer], idx=position, tqdm=False, remote=remote
        )
        means.append(acts[0].float().mean(dim=0))
    return means[0] - means[1]


def generate_with_steering(
    model: StandardizedTransformer,
    prompt: str | Sequence[str],
    layers: int | Sequence[int],
    steering_vector: torch.Tensor,
    factor: float = 1.0,
    max_new_tokens: int = 20,
    token_positions: int | Sequence[int] | None = None,
    do_sample: bool = False,
    remote: bool | str = False,
    steer_generated: bool = True,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """Generate with ``factor * steering_vector`` added to ``layers_output`` at every step.

    Example::

        >>> ids = generate_with_steering(model, "I think that", layers=[4, 5],
        ...                              steering_vector=v, factor=8.0, max_new_tokens=10)
        >>> ids.shape                        # (batch, prompt_len + new tokens)
        >>> model.tokenizer.batch_decode(ids[:, -10:])

    Generation uses the KV cache: the first step runs the prompt, each later
    step one new token. With ``token_positions=None`` every position of every
    step is steered (prompt and generated tokens alike). With
    ``token_positions`` given, the prompt step steers those positions of the
    (left-padded) input, and later steps steer the new token when
    ``steer_generated`` is true (a ``(n_positions, hidden)`` vector steers the
    prompt only). ``factor=0`` gives plain generation.

    Args:
        model: The model.
        prompt: One prompt or a list (left-padded into one batch).
        layers: Layer index or indices to steer.
        steering_vector: ``(hidden,)``, or ``(n_positions, hidden)`` matching
            ``token_positions``.
        factor: Scale of the added vector.
        max_new_tokens: Tokens to generate (fewer if every row reaches EOS).
        token_positions: Prompt positions to steer (default: all).
        do_sample: Sample instead of greedy decoding.
        remote: Passed to nnsight's ``generate``.
        steer_generated: Also steer generated tokens when ``token_positions`` is given.
        **generate_kwargs: Passed to HF ``generate`` (``temperature``, ``top_p``, ...).

    Returns:
        ``(batch, seq)`` token ids on CPU: the (padded) prompt followed by the
        generated tokens, as HF ``generate`` returns them.

    Raises:
        ShapeError: The vector's last dimension is not ``hidden_size``.
        LayerIndexError: A layer out of range.
        InputError: Empty prompt, or ``max_new_tokens`` < 1.
    """
    texts = as_prompt_list(prompt, "prompt")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    vector = torch.as_tensor(steering_vector)
    if vector.ndim not in (1, 2) or vector.shape[-1] != model.hidden_size:
        raise ShapeError(
            f"steering vector has shape {tuple(vector.shape)}; expected (hidden,) or (n_positions, hidden) "
            f"with hidden_size={model.hidden_size} for {model.model_type}"
        )
    steered = sorted(set(as_layer_list(model, layers)))
    if vector.ndim == 2 and token_positions is None:
        raise ShapeError("a (n_positions, hidden) steering vector needs token_positions")
    use_remote(remote)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_CUT_SHORT)
        with model.generate(
            max_new_tokens=max_new_tokens, do_sample=do_sample, remote=remote, **generate_kwargs
        ) as tracer:
            with tracer.invoke(texts):
                for step in tracer.iter[:max_new_tokens]:
                    if step == 0:
                        model.steer(steered, vector, factor=factor, token_positions=token_positions)
                    elif token_positions is None or (steer_generated and vector.ndim == 1):
                        model.steer(steered, vector, factor=factor)
            with tracer.invoke():
                ids = tracer.result.cpu().save()
    return ids
