"""One forward, many values: ``run_with_cache`` and the `ActivationCache` it returns.

Example::

    >>> from uniterp.cache import run_with_cache
    >>> cache = run_with_cache(model, ["The Eiffel Tower is in", "Hello"])
    >>> cache["layers_output.3"].shape                 # (batch, seq, hidden)
    >>> cache["blocks.3.hook_resid_post"]              # the same tensor, by its TransformerLens name
    >>> cache = run_with_cache(model, prompts, names=["blocks.2.attn.hook_z", "layers_output.5"])
    >>> stack, labels = cache.decompose_resid(return_labels=True)     # (n_components, batch, seq, hidden)
    >>> attrs = cache.logit_attrs(stack, tokens=target_ids, pos_slice=-1)

The batch is left-padded, so the last column is every prompt's last token and
``cache.prompt_columns(i)`` is the slice of prompt ``i``'s tokens. Values at padding
columns are not meaningful (they differ between attention kernels); leave them out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._aliases import GLOBAL_VALUES, SiteRef, normalize, resolve_name
from ._decompose import CacheDecomposition
from ._errors import InputError, UnavailableError, UniterpError
from ._layout import FORWARD_ORDER
from ._logit_attrs import LogitAttribution
from ._nnsight_compat import native_module
from ._tooling import as_prompt_list, encode_prompts, use_remote

if TYPE_CHECKING:
    from ._binding import Binding
    from ._model import StandardizedTransformer

__all__ = ["DEFAULT_SITES", "FORWARD_ORDER", "ActivationCache", "default_names", "run_with_cache"]

#: What ``names=None`` caches on every layer where it exists: the residual-stream values
#: (plus ``token_embeddings``), everything a residual decomposition needs.
DEFAULT_SITES: tuple[str, ...] = (
    "layers_input",
    "attentions_output",
    "attentions_output_normed",
    "residual_mid",
    "mlps_output",
    "mlps_output_normed",
    "layers_output",
)
_AFTER_LAYERS = ("logits", "next_token_probs")
_INPUTS = ("input_ids", "attention_mask")
#: Where the sequence is, per value (``(batch, heads, seq, d)`` values have it third).
_SEQ_DIMS: dict[str, tuple[int, ...]] = {
    "queries_pre_rotary": (2,),
    "keys_pre_rotary": (2,),
    "queries": (2,),
    "keys": (2,),
    "values": (2,),
    "attention_scores": (2, 3),
    "attention_probabilities": (2, 3),
    "next_token_probs": (),
    "mixer_states": (),  # a state after the last token, no sequence
}
#: Short TransformerLens names for ``cache["resid_post", 3]``.
_TL_SHORT: dict[str, str] = {
    **{n: f"attn.hook_{n}" for n in ("q", "k", "v", "z", "rot_q", "rot_k", "pattern", "attn_scores")},
    **{n: f"hook_{n}" for n in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in")},
    "post": "mlp.hook_post",
}


def _order_key(model: StandardizedTransformer, ref: SiteRef) -> tuple[int, float]:
    if ref.layer is None:
        if ref.site in _AFTER_LAYERS:
            return (model.binding.sizes.num_layers, _AFTER_LAYERS.index(ref.site))
        return (-1, 0)
    if ref.site == "mixer_states":  # read when the mixer has run: before the attention, or after it
        site = model.mixer_states.located()[0][ref.layer]
        return (
            ref.layer,
            FORWARD_ORDER.index("attentions_output_normed" if site.after_attention else "layers_input") + 0.5,
        )
    return (ref.layer, FORWARD_ORDER.index(ref.site))


def _available_names(model: StandardizedTransformer) -> list[str]:
    """Every standardized name the model can cache (for a ``names`` filter)."""
    binding = model.binding
    names = ["token_embeddings"]
    for layer in range(model.num_layers):
        for site in FORWARD_ORDER:
            if site in binding.layout.layers[layer]:
                names.append(f"{site}.{layer}")
            elif site in ("attention_scores", "attention_probabilities") and binding.attention is not None:
                entry = binding.attention[layer]
                if not isinstance(entry, str) and (site != "attention_scores" or entry.scores is None):
                    names.append(f"{site}.{layer}")
        if model.mixer_states.available(layer):
            names.append(f"mixer_states.{layer}")
    return [*names, "logits", "next_token_probs"]


def default_names(model: StandardizedTransformer) -> list[str]:
    """What ``names=None`` caches: ``token_embeddings`` and `DEFAULT_SITES` on every layer that has them.

    Example::

        >>> default_names(model)[:4]
        ['token_embeddings', 'layers_input.0', 'attentions_output.0', 'residual_mid.0']
    """
    layout = model.binding.layout
    wanted = ["token_embeddings"]
    for layer in range(model.num_layers):
        wanted += [f"{site}.{layer}" for site in DEFAULT_SITES if site in layout.layers[layer]]
    return wanted


def _requested(model: StandardizedTransformer, names: Any) -> list[SiteRef]:
    """The base values to read for ``names``, unique, in forward order (or a uniterp error)."""
    binding = model.binding
    if names is None:
        wanted = default_names(model)
    elif callable(names):
        wanted = [name for name in _available_names(model) if names(name)]
        if not wanted:
            raise InputError("names: the filter accepted none of the model's values (see model.support())")
    else:
        wanted = [names] if isinstance(names, str) else list(names)
        if not wanted:
            raise InputError("names is empty: pass None (the residual stream), names or a filter")
    refs: dict[str, SiteRef] = {}
    for name in wanted:
        if name in _INPUTS:
            continue  # always kept: cache.input_ids, cache.attention_mask
        ref = resolve_name(binding, name)
        if ref.site == "mixer_states" and not model.mixer_states.available(ref.layer):
            reason = model.mixer_states.located()[1].get(ref.layer, "no recurrent state")
            raise UnavailableError(binding.model_type, name, reason)
        base = SiteRef(ref.site, ref.layer, "same", None, ref.standard_name)
        refs.setdefault(base.standard_name, base)
    return sorted(refs.values(), key=lambda r: _order_key(model, r))


def _encoding(
    model: StandardizedTransformer, prompts: Any
) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """Left-padded ``input_ids`` and ``attention_mask`` for ``prompts`` (texts or token ids)."""
    if isinstance(prompts, (str, list, tuple)) and not (
        isinstance(prompts, (list, tuple)) and prompts and not isinstance(prompts[0], str)
    ):
        texts = as_prompt_list(prompts)
        encoding, _ = encode_prompts(model, texts)
        return encoding, texts
    if isinstance(prompts, (list, tuple)):
        prompts = torch.as_tensor(prompts)
    if isinstance(prompts, torch.Tensor):
        ids = prompts.unsqueeze(0) if prompts.dim() == 1 else prompts
        mask = torch.ones_like(ids)
    elif isinstance(prompts, dict) or hasattr(prompts, "keys"):
        ids = prompts["input_ids"]
        mask = prompts.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
    else:
        raise InputError(
            "prompts must be a string, a list of strings, token ids (batch, seq) or a dict with input_ids "
            f"and attention_mask; got {type(prompts).__name__}"
        )
    if ids.dim() != 2 or ids.dtype not in (torch.long, torch.int32, torch.int64) or ids.numel() == 0:
        raise InputError(f"token ids must be a non-empty (batch, seq) integer tensor; got {tuple(ids.shape)}")
    if mask.shape != ids.shape:
        raise InputError(f"attention_mask {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}")
    return {"input_ids": ids.long(), "attention_mask": mask.long()}, None


def _read(
    model: StandardizedTransformer, encoding: dict[str, torch.Tensor], refs: list[SiteRef], remote: bool | str
) -> dict[str, Any]:
    """One trace reading ``refs`` in forward order; stopped after the last unless the logits are read."""
    saved: dict[str, Any] = {}
    if not refs:  # only the inputs were asked for
        return saved
    stop = not any(ref.site in _AFTER_LAYERS for ref in refs)
    with model.trace(dict(encoding), remote=remote) as tracer:
        logits = None
        for ref in refs:
            if ref.site == "logits" or (ref.site == "next_token_probs" and logits is None):
                logits = model.logits
            if ref.site == "logits":
                value = logits
            elif ref.site == "next_token_probs":
                value = logits[:, -1, :].float().softmax(dim=-1)
            elif ref.layer is None:
                value = getattr(model, ref.site)
            else:
                value = getattr(model, ref.site)[ref.layer]
            saved[ref.standard_name] = value.save()
        if stop:
            tracer.stop()
    return saved


def run_with_cache(
    model: StandardizedTransformer,
    prompts: str | Sequence[str] | torch.Tensor | dict[str, torch.Tensor],
    names: str | Iterable[str] | Callable[[str], bool] | None = None,
    *,
    device: str | torch.device | None = None,
    detach: bool = True,
    remote: bool | str = False,
) -> ActivationCache:
    """Run one forward and keep the values asked for, by standardized name.

    Example::

        >>> cache = run_with_cache(model, ["The Eiffel Tower is in", "Hello"])
        >>> cache["layers_output.3"].shape                     # (batch, seq, hidden)
        >>> cache["blocks.3.attn.hook_z"]                      # needs names=[..."head_outputs.3"...]
        >>> cache = run_with_cache(model, "Hi", names=lambda n: n.startswith("head_outputs"), device="cpu")

    One left-padded batch, one trace under ``torch.no_grad()``; the values are read in
    the order the model computes them (`FORWARD_ORDER`), and the forward stops after the
    deepest one unless ``logits`` or ``next_token_probs`` is asked for.

    Args:
        model: The model.
        prompts: A prompt, a list of prompts (left-padded together), token ids
            ``(batch, seq)``, or a dict with ``input_ids`` and ``attention_mask``.
        names: What to keep, in any naming scheme (standardized ``"queries.2"``,
            TransformerLens ``"blocks.2.attn.hook_q"``, native module path). ``None``:
            ``token_embeddings`` and, on every layer where they exist, ``layers_input``,
            ``attentions_output``, ``attentions_output_normed``, ``residual_mid``,
            ``mlps_output``, ``mlps_output_normed``, ``layers_output`` (`DEFAULT_SITES`).
            A callable is a filter over every standardized name the model has
            (``"layers_output.3"``, ..., ``"logits"``). Aliases computed from another
            value (``ln1.hook_scale``, ``hook_q``'s order) keep that base value.
        device: Where the tensors go (``"cpu"``, ``"cuda:1"``...); default: where the
            model computed them.
        detach: Run under ``torch.no_grad()`` (default). ``False`` keeps the autograd
            graph, so a cached value can be differentiated.
        remote: Passed to nnsight's ``trace``.

    Returns:
        An `ActivationCache` keyed by standardized names.

    Raises:
        InputError: Empty prompts, an unknown name, or bad token ids.
        UnavailableError: A name the model does not have (before the forward runs).
    """
    refs = _requested(model, names)
    encoding, texts = _encoding(model, prompts)
    use_remote(remote)
    with torch.no_grad() if detach else contextlib.nullcontext():
        saved = _read(model, encoding, refs, remote)
    values = {ref.standard_name: saved[ref.standard_name] for ref in refs}
    if device is not None:
        values = {name: value.to(device) for name, value in values.items()}
    return ActivationCache(model, values, encoding["input_ids"], encoding["attention_mask"], texts)


class ActivationCache(CacheDecomposition, LogitAttribution):
    """The values one forward computed, keyed by standardized name; any alias reads them.

    Example::

        >>> cache = run_with_cache(model, ["The Eiffel Tower is in", "Hello"])
        >>> list(cache.keys())[:3]           # forward order
        ['token_embeddings', 'layers_input.0', 'attentions_output.0']
        >>> cache["layers_output.1"] is cache["blocks.1.hook_resid_post"]
        True
        >>> cache["resid_post", 1]           # (TransformerLens short name, layer)
        >>> cache["blocks.1.ln1.hook_scale"].shape   # computed from layers_input.1: (batch, seq, 1)
        >>> "queries.0" in cache
        False
        >>> cache.prompt_columns(1)          # slice(3, 5): prompt 1's tokens in the padded batch

    Lookups accept standardized names (``"layers_output.3"``, ``"layers_output[3]"``),
    TransformerLens hook names (``"blocks.3.hook_resid_post"``, in TransformerLens's
    ``(batch, pos, head, d_head)`` order for ``hook_q``/``hook_k``/``hook_v``) and native
    module paths, as `uniterp.resolve_name` reads them on this model. Aliases computed
    from a value (``ln1.hook_normalized``, ``ln_final.hook_scale``) are computed on
    lookup from the cached value, so they equal ``model.sites[name]`` read in a trace.

    Attributes:
        model: The model that produced the values (its weights and binding serve the
            decompositions).
        input_ids: ``(batch, seq)`` token ids, left-padded (on CPU).
        attention_mask: ``(batch, seq)``, 1 for tokens, 0 for padding.
        prompts: The prompt texts, or ``None`` when token ids were given.
        has_batch_dim: ``False`` after `remove_batch_dim`.
    """

    def __init__(
        self,
        model: StandardizedTransformer,
        values: dict[str, torch.Tensor],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompts: list[str] | None = None,
        has_batch_dim: bool = True,
    ) -> None:
        self.model = model
        self._values = dict(values)
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.prompts = prompts
        self.has_batch_dim = has_batch_dim

    # -- the model's description ---------------------------------------------------------------

    @property
    def binding(self) -> Binding:
        """The model's binding (block layout, residual factor, logit transforms, locators)."""
        return self.model.binding

    @property
    def lengths(self) -> list[int]:
        """Each prompt's number of tokens."""
        return [int(n) for n in self.attention_mask.sum(dim=-1).reshape(-1)]

    def prompt_columns(self, index: int) -> slice:
        """The columns of prompt ``index``'s tokens in the left-padded batch.

        Example::

            >>> cols = cache.prompt_columns(1)
            >>> cache["layers_output.2"][1, cols]          # (n_tokens_1, hidden), no padding

        Raises:
            InputError: ``index`` is not a prompt of the batch.
        """
        mask = self.attention_mask if self.has_batch_dim else self.attention_mask.unsqueeze(0)
        n = mask.shape[0]
        if isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n:
            raise InputError(f"prompt index must be an int in [-{n}, {n}); got {index!r}")
        tokens = mask[index].nonzero().flatten()
        if not tokens.numel():
            return slice(0, 0)
        return slice(int(tokens[0]), int(tokens[-1]) + 1)  # left-padded: (width - length, width)

    def prompt_value(self, name: str, index: int) -> torch.Tensor:
        """``cache[name]`` of prompt ``index`` with the padding columns left out.

        Example::

            >>> cache.prompt_value("layers_output.2", 1).shape     # (n_tokens, hidden)
            >>> cache.prompt_value("queries.0", 1).shape           # (n_heads, n_tokens, head_dim)

        The batch dimension goes; the sequence dimension(s) keep prompt ``index``'s tokens.
        """
        if not self.has_batch_dim:
            raise InputError("prompt_value needs the batch dimension (this cache had it removed)")
        ref = self._resolve(name)
        value = self[name][index]
        cols = self.prompt_columns(index)
        dims = _SEQ_DIMS.get(ref.site, (1,))
        if ref.transform == "heads_to_seq":
            dims = (1,)
        for dim in dims:
            value = value.narrow(dim - 1, cols.start, cols.stop - cols.start)
        return value

    # -- lookups -------------------------------------------------------------------------------

    def _resolve(self, key: Any) -> SiteRef:
        if isinstance(key, tuple):
            key = _tuple_name(key)
        if not isinstance(key, str):
            raise InputError(f"cache keys are names (str) or (name, layer) tuples; got {type(key).__name__}")
        return resolve_name(self.binding, key)

    def __getitem__(self, key: str | tuple[str, int]) -> torch.Tensor:
        if key in _INPUTS:
            return getattr(self, str(key))
        ref = self._resolve(key)
        base = self._values.get(ref.standard_name)
        if base is None:
            raise InputError(
                f"{key!r} ({ref.standard_name}) is not in this cache; it holds {len(self._values)} values "
                f"({', '.join(list(self._values)[:6])}{', ...' if len(self._values) > 6 else ''}). "
                f"Pass names=[..., {ref.standard_name!r}] to run_with_cache."
            )
        if ref.transform == "heads_to_seq":
            return base.transpose(1, 2) if self.has_batch_dim else base.transpose(0, 1)
        if ref.transform in ("normalized", "scale"):
            norm = native_module(self.model).get_submodule(ref.norm)
            return normalize(norm, base, ref.transform, self.model.model_type, ref.name)
        return base

    def __contains__(self, key: object) -> bool:
        if key in _INPUTS:
            return True
        try:
            return self._resolve(key).standard_name in self._values
        except UniterpError:
            return False

    def keys(self) -> Iterator[str]:
        """The standardized names held, in forward order."""
        return iter(list(self._values))

    def values(self) -> Iterator[torch.Tensor]:
        """The tensors held, in forward order."""
        return iter(list(self._values.values()))

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(standardized name, tensor)`` pairs, in forward order."""
        return iter(list(self._values.items()))

    def __iter__(self) -> Iterator[str]:
        return self.keys()

    def __len__(self) -> int:
        return len(self._values)

    # -- copies --------------------------------------------------------------------------------

    def _with(
        self, values: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, batch: bool
    ) -> ActivationCache:
        return ActivationCache(self.model, values, ids, mask, self.prompts, batch)

    def to(self, device: str | torch.device) -> ActivationCache:
        """A cache with every tensor on ``device``.

        Example::

            >>> cpu_cache = cache.to("cpu")
        """
        return self._with(
            {k: v.to(device) for k, v in self._values.items()},
            self.input_ids,
            self.attention_mask,
            self.has_batch_dim,
        )

    def remove_batch_dim(self) -> ActivationCache:
        """A cache of one prompt without its batch dimension (``(seq, hidden)`` values).

        Example::

            >>> single = run_with_cache(model, "Hello").remove_batch_dim()
            >>> single["layers_output.0"].shape        # (seq, hidden)

        Decompositions then return ``(n_components, seq, hidden)`` and take stacks
        without a batch dimension.

        Raises:
            InputError: The cache holds more than one prompt.
        """
        if not self.has_batch_dim:
            return self
        batch = self.input_ids.shape[0]
        if batch != 1:
            raise InputError(f"remove_batch_dim needs a cache of one prompt; this one has {batch}")
        values = {k: v[0] for k, v in self._values.items()}
        return self._with(values, self.input_ids[0], self.attention_mask[0], False)

    def __repr__(self) -> str:
        shape = tuple(self.input_ids.shape)
        return f"<ActivationCache of {self.model.model_type}: {len(self)} values, input {shape}>"


def _tuple_name(key: tuple[Any, ...]) -> str:
    """``("resid_post", 3)`` or ``("layers_output", 3)`` -> a name `resolve_name` reads."""
    if (
        len(key) != 2
        or not isinstance(key[0], str)
        or isinstance(key[1], bool)
        or not isinstance(key[1], int)
    ):
        raise InputError(f"a tuple key is (name, layer), e.g. ('resid_post', 3); got {key!r}")
    name, layer = key
    if name in _TL_SHORT:
        return f"blocks.{layer}.{_TL_SHORT[name]}"
    if name in GLOBAL_VALUES:
        raise InputError(f"{name!r} is a value of the whole model: use cache[{name!r}]")
    return f"{name}.{layer}"
