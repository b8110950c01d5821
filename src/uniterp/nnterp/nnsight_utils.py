"""nnterp's ``nnsight_utils``: getters, activation collection and ``ModuleAccessor`` on uniterp.

Example::

    >>> from uniterp.nnterp import StandardizedTransformer
    >>> from uniterp.nnterp.nnsight_utils import get_layer_output, collect_token_activations_batched
    >>> model = StandardizedTransformer("gpt2")
    >>> with model.trace("hello"):
    ...     h = get_layer_output(model, 5).save()             # (batch, seq, hidden)
    >>> acts = collect_token_activations_batched(model, prompts, batch_size=16, layers=[3, 9])

The getters are uniterp's standardized values, so they work on every family
and are validated; they take a uniterp (or `uniterp.nnterp`)
``StandardizedTransformer``. nnterp also accepts a plain nnsight
``LanguageModel`` renamed to llama names; uniterp refuses it with the way to
wrap it (see `require_model`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import activations as _activations
from .._errors import InputError
from ._compat import require_model, unavailable

__all__ = [
    "ModuleAccessor",
    "collect_last_token_activations_session",
    "collect_token_activations_batched",
    "compute_next_token_probs",
    "get_attention",
    "get_attention_output",
    "get_embed_tokens",
    "get_layer",
    "get_layer_input",
    "get_layer_output",
    "get_layers",
    "get_logits",
    "get_mlp",
    "get_mlp_output",
    "get_next_token_probs",
    "get_num_layers",
    "get_unembed",
    "get_unembed_norm",
    "load_model",
    "project_on_vocab",
    "set_layer_output",
]

#: ``f(model, layer) -> (batch, seq, hidden)`` value, as nnterp's ``get_activations`` arguments.
GetModuleOutput = Callable[[Any, int], torch.Tensor]


def get_embed_tokens(model: Any) -> Any:
    """The token-embedding module (``model.embed_tokens``)."""
    return require_model(model, "get_embed_tokens").embed_tokens


def get_layers(model: Any) -> Any:
    """The decoder blocks (``model.layers``)."""
    return require_model(model, "get_layers").layers


def get_num_layers(nn_model: Any) -> int:
    """Number of decoder layers."""
    return require_model(nn_model, "get_num_layers").num_layers


def get_layer(nn_model: Any, layer: int) -> Any:
    """Block ``layer`` (``model.layers[layer]``)."""
    return require_model(nn_model, "get_layer").layers[layer]


def get_layer_input(nn_model: Any, layer: int) -> torch.Tensor:
    """``layers_input[layer]``: ``(batch, seq, hidden)``, inside a trace."""
    return require_model(nn_model, "get_layer_input").layers_input[layer]


def get_layer_output(nn_model: Any, layer: int) -> torch.Tensor:
    """``layers_output[layer]``: ``(batch, seq, hidden)``, inside a trace."""
    return require_model(nn_model, "get_layer_output").layers_output[layer]


def get_attention(nn_model: Any, layer: int) -> Any:
    """The attention module of block ``layer`` (``layers[layer].self_attn``)."""
    model = require_model(nn_model, "get_attention")
    _ = model.binding
    return model.layers[layer].self_attn


def get_attention_output(nn_model: Any, layer: int) -> torch.Tensor:
    """``attentions_output[layer]``: ``(batch, seq, hidden)``, inside a trace."""
    return require_model(nn_model, "get_attention_output").attentions_output[layer]


def get_mlp(nn_model: Any, layer: int) -> Any:
    """The MLP module of block ``layer`` (``layers[layer].mlp``)."""
    model = require_model(nn_model, "get_mlp")
    _ = model.binding
    return model.layers[layer].mlp


def get_mlp_output(nn_model: Any, layer: int) -> torch.Tensor:
    """``mlps_output[layer]``: ``(batch, seq, hidden)``, inside a trace."""
    return require_model(nn_model, "get_mlp_output").mlps_output[layer]


def get_logits(nn_model: Any) -> torch.Tensor:
    """The output logits ``(batch, seq, vocab)``, inside a trace."""
    return require_model(nn_model, "get_logits").logits


def get_unembed_norm(nn_model: Any) -> Any:
    """The final norm module (``model.ln_final``)."""
    return require_model(nn_model, "get_unembed_norm").ln_final


def get_unembed(nn_model: Any) -> Any:
    """The unembedding module (``model.lm_head``)."""
    return require_model(nn_model, "get_unembed").lm_head


def project_on_vocab(nn_model: Any, h: torch.Tensor) -> torch.Tensor:
    """Final norm and unembedding of ``h`` (``(..., hidden)`` -> ``(..., vocab)``)."""
    return require_model(nn_model, "project_on_vocab").project_on_vocab(h)


def get_next_token_probs(nn_model: Any) -> torch.Tensor:
    """Next-token probabilities ``(batch, vocab)`` at the last position, inside a trace."""
    return require_model(nn_model, "get_next_token_probs").next_token_probs


def set_layer_output(nn_model: Any, layer: int, tensor: torch.Tensor) -> None:
    """Replace ``layers_output[layer]`` (the rest of a tuple output is kept), inside a trace."""
    require_model(nn_model, "set_layer_output").layers_output[layer] = tensor


class ModuleAccessor:
    """The torch modules of a HuggingFace model under the standard names, outside any trace.

    Example::

        >>> accessor = ModuleAccessor(hf_model)
        >>> accessor.get_layers()          # torch.nn.ModuleList, also accessor.layers
        >>> accessor.get_attention(0)      # the native attention module of block 0

    The model is bound once with uniterp (its structural check runs; the weights
    stay where they are), then each getter returns the plain ``torch.nn.Module``.

    Args:
        model: A HuggingFace causal LM (``PreTrainedModel``) or a uniterp model.
        rename_config: Refused: describe an unknown architecture with
            ``spec=uniterp.ArchitectureSpec(...)`` instead.
        rename: Refused for the same reason.
        spec: A `uniterp.ArchitectureSpec` for an architecture uniterp does not know.
    """

    def __init__(self, model: Any, rename_config: Any = None, rename: Any = None, spec: Any = None) -> None:
        if rename_config is not None or rename is not None:
            raise unavailable(
                "ModuleAccessor(rename_config=..., rename=...)",
                "uniterp does not rename modules through alias dictionaries",
                "pass spec=uniterp.ArchitectureSpec(...) for an architecture uniterp does not know",
            )
        from .._model import StandardizedTransformer

        if isinstance(model, StandardizedTransformer):
            self._model = model
        else:
            self._model = StandardizedTransformer(model, spec=spec)

    def _module(self, envoy: Any) -> torch.nn.Module:
        return envoy._module

    _GETTERS = {
        "embed_tokens": "get_embed_tokens",
        "layers": "get_layers",
        "ln_final": "get_unembed_norm",
        "lm_head": "get_unembed",
    }

    def __getattr__(self, name: str) -> torch.nn.Module:
        getter = ModuleAccessor._GETTERS.get(name)
        if getter is None or name.startswith("_"):
            raise AttributeError(
                f"ModuleAccessor has no module {name!r}; it has {', '.join(ModuleAccessor._GETTERS)}"
            )
        return getattr(self, getter)()

    def get_embed_tokens(self) -> torch.nn.Module:
        """The token-embedding module."""
        return self._module(self._model.embed_tokens)

    def get_layers(self) -> torch.nn.ModuleList:
        """The ``ModuleList`` of decoder blocks."""
        return self._model._module.get_submodule(self._model.spec.layers)

    def get_mlp(self, layer: int) -> torch.nn.Module:
        """The MLP module of block ``layer``."""
        _ = self._model.binding
        return self._module(self._model.layers[layer].mlp)

    def get_attention(self, layer: int) -> torch.nn.Module:
        """The attention module of block ``layer``."""
        _ = self._model.binding
        return self._module(self._model.layers[layer].self_attn)

    def get_unembed_norm(self) -> torch.nn.Module:
        """The final norm."""
        return self._module(self._model.ln_final)

    def get_unembed(self) -> torch.nn.Module:
        """The unembedding."""
        return self._module(self._model.lm_head)


def _positions_ok(model: Any, idx: int) -> None:
    """Raw positions in a padded batch: negative ones need left padding, as in nnterp."""
    if idx >= 0:
        raise InputError(
            f"idx={idx}: with a custom get_activations or an open tracer, positions index the "
            "left-padded batch, so only negative positions (from the end) are the same token in every "
            "prompt; use a negative idx, or call without get_activations/tracer (then positions count "
            "within each prompt)"
        )


@torch.no_grad()
def get_token_activations(
    nn_model: Any,
    prompts: str | Sequence[str] | None = None,
    layers: int | Sequence[int] | None = None,
    get_activations: GetModuleOutput | None = None,
    remote: bool | str = False,
    idx: int | None = None,
    tracer: Any = None,
) -> torch.Tensor:
    """One token's activations at each layer: ``(n_layers, n_prompts, hidden)``.

    Example::

        >>> acts = get_token_activations(model, ["The capital of France is", "Hello"], layers=[3, 9])
        >>> with model.trace(prompts) as tracer:            # inside an open trace, as in nnterp
        ...     acts = get_token_activations(model, prompts, idx=-1, tracer=tracer)

    Without ``tracer`` and ``get_activations`` this is
    `uniterp.get_token_activations` (positions count within each prompt, the
    forward stops after the deepest layer). With ``tracer`` the values are read
    in the open trace; with ``get_activations`` (``f(model, layer)``) that
    function gives the values; both index the left-padded batch, so ``idx``
    must be negative.
    """
    model = require_model(nn_model, "get_token_activations")
    position = -1 if idx is None else idx
    if tracer is None and prompts is None:
        raise InputError("get_token_activations: pass prompts, or call it inside a trace with tracer=")
    if tracer is None and get_activations is None:
        return _activations.get_token_activations(model, prompts, layers=layers, idx=position, remote=remote)
    _positions_ok(model, position)
    getter = get_activations or get_layer_output
    wanted = (
        list(range(model.num_layers))
        if layers is None
        else ([layers] if isinstance(layers, int) else list(layers))
    )
    if tracer is not None:
        values = []
        for layer in wanted:
            values.append(getter(model, layer)[:, position])
        device = values[0].device
        stacked = []
        for value in values:
            stacked.append(value.to(device))
        return torch.stack(stacked)
    collected: list[torch.Tensor] = []
    with model.trace(prompts, remote=remote) as inner:
        for layer in wanted:
            collected.append(getter(model, layer)[:, position].cpu())
        result = torch.stack(collected).save()
        inner.stop()
    return result


def collect_token_activations_batched(
    nn_model: Any,
    prompts: Sequence[str],
    batch_size: int,
    layers: int | Sequence[int] | None = None,
    get_activations: GetModuleOutput | None = None,
    remote: bool | str = False,
    idx: int | None = None,
    tqdm: Any = None,
    use_session: bool = True,
) -> torch.Tensor:
    """`get_token_activations` over many prompts, ``batch_size`` at a time: ``(n_layers, n_prompts, hidden)``.

    Example::

        >>> acts = collect_token_activations_batched(model, prompts, batch_size=16, layers=[3, 9, 11], idx=-1)

    Without ``get_activations`` this is
    `uniterp.collect_token_activations_batched` (which can also stream to disk).
    ``tqdm``: ``None`` (nnterp's default) shows no bar, a tqdm class shows one.
    ``use_session`` is accepted; uniterp runs one trace per batch.
    """
    model = require_model(nn_model, "collect_token_activations_batched")
    if get_activations is None:
        return _activations.collect_token_activations_batched(
            model, list(prompts), batch_size, layers=layers, idx=idx, tqdm=tqdm or False, remote=remote
        )
    texts = list(prompts)
    chunks = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts) if tqdm is not None else starts:
        chunks.append(
            get_token_activations(
                model, texts[start : start + batch_size], layers, get_activations, remote, idx
            )
        )
    return torch.cat(chunks, dim=1)


def collect_last_token_activations_session(
    nn_model: Any,
    prompts: Sequence[str],
    batch_size: int,
    layers: int | Sequence[int] | None = None,
    get_activations: GetModuleOutput | None = None,
    remote: bool | str = False,
    idx: int | None = None,
) -> torch.Tensor:
    """Same as `collect_token_activations_batched` (nnterp ran it in an nnsight session)."""
    return collect_token_activations_batched(
        nn_model, prompts, batch_size, layers, get_activations, remote, idx
    )


@torch.no_grad()
def compute_next_token_probs(
    nn_model: Any, prompt: str | Sequence[str], remote: bool | str = False
) -> torch.Tensor:
    """Next-token probabilities ``(n_prompts, vocab)`` on the CPU, in one trace."""
    model = require_model(nn_model, "compute_next_token_probs")
    with model.trace(prompt, remote=remote):
        probs = model.next_token_probs.cpu().save()
    return probs


def load_model(
    model_name: str,
    trust_remote_code: bool = False,
    no_space_on_bos: bool = False,
    rename_kwargs: dict[str, Any] | None = None,
    use_tl: bool = False,
    **kwargs: Any,
) -> Any:
    """nnterp's older loader: a `uniterp.nnterp.StandardizedTransformer`.

    Example::

        >>> model = load_model("gpt2")

    ``no_space_on_bos`` loads the tokenizer with ``add_prefix_space=False``;
    ``torch_dtype`` is read as ``dtype``. The dtype is the checkpoint's unless
    given (nnterp's loader defaulted to half precision).

    Raises:
        UnavailableError: ``use_tl=True`` (TransformerLens) or ``rename_kwargs``.
    """
    from .standardized_transformer import StandardizedTransformer

    if use_tl:
        raise unavailable(
            "load_model(use_tl=True)",
            "uniterp runs HuggingFace's own modeling code, not TransformerLens",
            "load_model(name) without use_tl",
        )
    if rename_kwargs:
        raise unavailable(
            "load_model(rename_kwargs=...)",
            "uniterp does not rename modules through alias dictionaries",
            "pass spec=uniterp.ArchitectureSpec(...) for an architecture uniterp does not know",
        )
    if "torch_dtype" in kwargs:
        kwargs.setdefault("dtype", kwargs.pop("torch_dtype"))
    if no_space_on_bos:
        kwargs.setdefault("tokenizer_kwargs", {}).update(add_prefix_space=False)
    return StandardizedTransformer(model_name, trust_remote_code=trust_remote_code, **kwargs)
