"""nnterp's ``StandardizedTransformer``, with nnterp's arguments, on uniterp's model.

Example::

    >>> from uniterp.nnterp import StandardizedTransformer
    >>> model = StandardizedTransformer("gpt2", enable_attention_probs=True)
    >>> with model.trace("The Eiffel Tower is in the city of"):
    ...     attn = model.attentions[3].output              # the attention module of layer 3
    ...     model.steer(layers=[5], steering_vector=v, factor=2, positions=-1)
    ...     logits = model.logits.save()

It is uniterp's `uniterp.StandardizedTransformer` (every value validated per
layer at load, exact or refused) with nnterp's constructor arguments and the
few members nnterp has and uniterp spells differently.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .._errors import InputError, ShapeError, UnavailableError
from .._model import StandardizedTransformer as _UniterpTransformer
from ._compat import unavailable

__all__ = ["StandardizedTransformer"]


class _ModuleAccessor:
    """``model.attentions[i]`` / ``model.mlps[i]``: the module (an nnsight envoy) of layer ``i``."""

    def __init__(self, model: StandardizedTransformer, name: str, label: str) -> None:
        self._model = model
        self._name = name
        self._label = label

    def __getitem__(self, layer: int) -> Any:
        _ = self._model.binding  # bound before the first module is looked up
        block = self._model.layers[layer]
        module = getattr(block, self._name, None)
        if module is None:
            reason = "this layer has no such module"
            try:
                report = self._model.support()[f"{self._label}_output"]
                reason = report.unavailable.get(layer % self._model.num_layers, reason)
            except (KeyError, UnavailableError):
                pass
            raise UnavailableError(self._model.model_type, f"{self._label}[{layer}]", reason)
        return module

    def __call__(self, layer: int) -> Any:
        return self[layer]

    def __len__(self) -> int:
        return self._model.num_layers

    def __iter__(self) -> Iterator[Any]:
        for layer in range(len(self)):
            yield self[layer]


class _AttentionProbabilities:
    """uniterp's ``attention_probabilities`` view plus nnterp's ``print_source``."""

    def __init__(self, view: Any, model: StandardizedTransformer) -> None:
        self._view = view
        self._model = model

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self._view[layer]

    def __setitem__(self, layer: int, value: torch.Tensor) -> None:
        self._view[layer] = value

    def __len__(self) -> int:
        return len(self._view)

    def available(self, layer: int) -> bool:
        """Whether layer ``layer`` has verified attention probabilities."""
        return self._view.available(layer)

    @property
    def enabled(self) -> bool:
        """Whether the model was loaded with ``enable_attention_probs=True``."""
        return self._model.binding.attention is not None

    def print_source(self, layer: int = 0, allow_dispatch: bool = True) -> None:
        """Print where layer ``layer``'s probabilities are taken, and the attention forward's source.

        Example::

            >>> model.attention_probabilities.print_source()      # layer 0

        Args:
            layer: The layer.
            allow_dispatch: Accepted for nnterp compatibility (uniterp loads the
                weights when it locates the probabilities).

        Raises:
            UnavailableError: The model was loaded without
                ``enable_attention_probs=True``, or the layer has none.
        """
        support = self._model.support()["attention_probabilities"]
        index = layer % self._model.num_layers
        if support.reason:
            raise UnavailableError(self._model.model_type, "attention_probabilities", support.reason)
        if index in support.unavailable:
            raise UnavailableError(
                self._model.model_type, f"attention_probabilities[{layer}]", support.unavailable[index]
            )
        entries = self._model.binding.attention or ()
        entry = entries[index] if index < len(entries) else None
        attention = getattr(entry, "attention", "self_attn")
        ops = getattr(entry, "ops", None)
        where = f"the output of {'.'.join(ops)}" if ops else "located"
        print(
            f"attention_probabilities[{layer}]: {where} inside layers[{index}].{attention}.forward, "
            "verified at load (shape (batch, heads, q, k), rows sum to 1, equal to HF's "
            "output_attentions, a write changes the logits)"
        )
        module = self._model.layers[index]
        for part in attention.split("."):
            module = getattr(module, part)
        print(module.source)


class StandardizedTransformer(_UniterpTransformer):
    """uniterp's standardized model, constructed with nnterp's arguments.

    Example::

        >>> model = StandardizedTransformer("gpt2")            # device_map="auto", like nnterp
        >>> model.attentions[0], model.mlps[0]                  # modules, as in nnterp
        >>> with model.trace("Hello"):
        ...     model.steer(layers=1, steering_vector=v, token_positions=0)

    Values are ``(batch, seq, hidden)`` on every family, as in uniterp.

    Args:
        model: A Hub id, a local folder, a loaded HuggingFace model, or ``"uniterp-tiny"``.
        trust_remote_code: Passed to transformers.
        check_renaming: Run uniterp's load-time structural check of every layer
            (nnterp's renaming check); when off it runs before the first trace.
        remote: Register uniterp with nnsight so traces can run on NDIF.
        allow_dispatch: Accepted; uniterp's checks run on fake tensors and do
            not need to load the weights.
        enable_attention_probs: Locate and verify attention probabilities
            (eager attention).
        check_attn_probs_with_trace: Accepted; uniterp always verifies them
            with a real forward.
        allow_multimodal: Accepted; uniterp standardizes the text model of a
            multimodal checkpoint when it can.
        rename_config: Refused (`UnavailableError`): uniterp describes an
            architecture with an `uniterp.ArchitectureSpec` (``spec=``).
        **kwargs: Loading keywords (``dtype``, ``device_map`` (default
            ``"auto"``, as in nnterp), ``attn_implementation``,
            ``tokenizer_kwargs``, ``spec``, ...).

    Raises:
        InputError: ``enable_attention_probs=True`` with a non-eager ``attn_implementation``.
        UnavailableError: ``rename_config`` given.
    """

    def __init__(
        self,
        model: str | torch.nn.Module,
        trust_remote_code: bool = False,
        check_renaming: bool = True,
        remote: bool = False,
        allow_dispatch: bool = True,
        enable_attention_probs: bool = False,
        check_attn_probs_with_trace: bool = True,
        allow_multimodal: bool = False,
        rename_config: Any = None,
        **kwargs: Any,
    ) -> None:
        if rename_config is not None:
            raise unavailable(
                "rename_config",
                "uniterp does not rename modules through a RenameConfig",
                "describe the architecture once with spec=uniterp.ArchitectureSpec(embed_tokens=..., "
                "layers=..., final_norm=..., lm_head=..., attention=..., mlp=...) (paths from the "
                "*ForCausalLM module), or uniterp.register_spec(model_type, spec)",
            )
        requested = kwargs.get("attn_implementation")
        if enable_attention_probs and requested not in (None, "eager"):
            raise InputError(
                f"attn_implementation={requested!r} cannot give attention probabilities; with "
                "enable_attention_probs=True leave attn_implementation out (eager is used)"
            )
        tokenizer_kwargs = kwargs.pop("tokenizer_kwargs", None) or {}
        if tokenizer_kwargs and kwargs.get("tokenizer") is None:
            kwargs["tokenizer"] = _tokenizer(model, trust_remote_code, tokenizer_kwargs)
        kwargs.setdefault("device_map", "auto")
        if remote:
            from .._tooling import use_remote

            use_remote(True)
        super().__init__(
            model,
            trust_remote_code=trust_remote_code,
            check_on_load=check_renaming,
            enable_attention_probs=enable_attention_probs,
            **kwargs,
        )
        self._prefix_false_tokenizer: Any = None

    # -- nnterp's module accessors -------------------------------------------------

    @property
    def attentions(self) -> _ModuleAccessor:
        """``attentions[i]``: the attention module of layer ``i`` (``layers[i].self_attn``)."""
        return _ModuleAccessor(self, "self_attn", "attentions")

    @property
    def mlps(self) -> _ModuleAccessor:
        """``mlps[i]``: the MLP module of layer ``i`` (``layers[i].mlp``)."""
        return _ModuleAccessor(self, "mlp", "mlps")

    @property
    def attention_probabilities(self) -> _AttentionProbabilities:  # type: ignore[override]
        """Attention probabilities of layer ``i``, ``(batch, heads, q, k)``; plus ``print_source()``."""
        return _AttentionProbabilities(super().attention_probabilities, self)

    @property
    def attn_probs_available(self) -> bool:
        """Whether attention probabilities were enabled and verified on at least one layer."""
        if self.binding.attention is None:
            return False
        view = super().attention_probabilities
        return any(view.available(i) for i in range(self.num_layers))

    @property
    def input_size(self) -> torch.Size:
        """``(batch, seq)`` of the running trace's input ids."""
        return self.input_ids.shape

    @property
    def add_prefix_false_tokenizer(self) -> Any:
        """The tokenizer loaded with ``add_prefix_space=False`` (the model's own where that fails)."""
        if self._prefix_false_tokenizer is None:
            try:
                from transformers import AutoTokenizer

                self._prefix_false_tokenizer = AutoTokenizer.from_pretrained(
                    self.tokenizer.name_or_path, add_prefix_space=False
                )
            except Exception:  # noqa: BLE001 - an in-memory tokenizer has nothing to reload from
                self._prefix_false_tokenizer = self.tokenizer
        return self._prefix_false_tokenizer

    def detect_layer_output_type(self) -> None:
        """Nothing to do: uniterp fixes each layer's output layout at load time."""
        _ = self.binding

    # -- nnterp's spelling of the methods --------------------------------------------

    def skip_layers(  # type: ignore[override]
        self,
        start_layer: int,
        end_layer: int,
        skip_with: torch.Tensor | None = None,
        layer_returns_tuple: bool | None = None,
    ) -> None:
        """Skip layers ``start_layer`` to ``end_layer`` (inclusive); see uniterp's ``skip_layers``.

        Example::

            >>> with model.trace("Hello world"):
            ...     model.skip_layers(2, 3)

        ``layer_returns_tuple`` is accepted and not needed: uniterp knows each
        layer's output layout.
        """
        super().skip_layers(start_layer, end_layer, skip_with)

    def steer(  # type: ignore[override]
        self,
        layers: int | Sequence[int],
        steering_vector: torch.Tensor,
        factor: float = 1,
        positions: int | Sequence[int] | None = None,
        token_positions: int | Sequence[int] | None = None,
        batch_index: int | Sequence[int] | None = None,
    ) -> None:
        """Add ``factor * steering_vector`` to the outputs of ``layers``; nnterp's arguments.

        Example::

            >>> with model.trace(["The weather today is", "I feel very"]):
            ...     model.steer(layers=1, steering_vector=v, positions=0)       # older nnterp
            ...     model.steer(layers=1, steering_vector=v, token_positions=0, batch_index=1)

        ``positions`` is nnterp's older name of ``token_positions``. Positions
        index the padded batch, as in nnterp. With both ``batch_index`` and
        ``token_positions`` every listed row is steered at every listed
        position (nnterp pairs two equal-length lists element-wise instead).

        Raises:
            InputError: Both ``positions`` and ``token_positions`` given.
        """
        if positions is not None and token_positions is not None:
            raise InputError("steer: pass positions (nnterp's older name) or token_positions, not both")
        super().steer(
            layers,
            steering_vector,
            factor,
            positions if positions is not None else token_positions,
            batch_index,
        )

    def probs_to_dict(self, tokens: torch.Tensor, probs: torch.Tensor) -> dict[str, float]:
        """``{token string: probability}`` for parallel ``tokens`` and ``probs`` (1-D each).

        Ids the tokenizer has no token for (an unembedding padded past the
        vocabulary) are named ``"<id N>"``.

        Example::

            >>> model.probs_to_dict(top.indices, top.values)
            {'ĠParis': 0.93, ...}
        """
        ids = [int(t) for t in tokens]
        names = self.tokenizer.convert_ids_to_tokens(ids)
        # ids past the tokenizer's vocabulary (a padded unembedding) have no token: name them by id
        names = [name if name is not None else f"<id {i}>" for name, i in zip(names, ids)]
        return {name: float(p) for name, p in zip(names, probs)}

    def get_topk_closest_tokens(
        self, hidden_state: torch.Tensor, k: int = 5
    ) -> dict[str, float] | list[dict[str, float]]:
        """The ``k`` tokens ``project_on_vocab`` gives the highest probability, outside a trace.

        Example::

            >>> model.get_topk_closest_tokens(h)             # h: (hidden,) -> one dict
            >>> model.get_topk_closest_tokens(hs, k=3)       # hs: (n, hidden) -> n dicts

        Args:
            hidden_state: ``(hidden,)`` or ``(n, hidden)`` residual-stream states.
            k: Tokens per state.

        Raises:
            ShapeError: Not 1-D or 2-D, or the last dimension is not ``hidden_size``.
        """
        hidden = torch.as_tensor(hidden_state)
        if hidden.ndim not in (1, 2) or hidden.shape[-1] != self.hidden_size:
            raise ShapeError(
                f"get_topk_closest_tokens: hidden_state has shape {tuple(hidden.shape)}; expected "
                f"(hidden,) or (n, hidden) with hidden = {self.hidden_size}"
            )
        if not self.dispatched:
            self.dispatch()
        with torch.no_grad():
            logits = self.project_on_vocab(hidden.to(self.device, self.dtype))
            top = logits.float().softmax(-1).topk(k, dim=-1)
        if hidden.ndim == 1:
            return self.probs_to_dict(top.indices, top.values)
        return [self.probs_to_dict(i, v) for i, v in zip(top.indices, top.values)]


def _tokenizer(model: Any, trust_remote_code: bool, tokenizer_kwargs: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    from ..tiny import resolve_model_name

    source = resolve_model_name(model) if isinstance(model, str) else getattr(model, "name_or_path", None)
    if not source:
        raise InputError("tokenizer_kwargs needs a model name or folder to load the tokenizer from")
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **tokenizer_kwargs)
