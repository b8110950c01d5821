"""`StandardizedTransformer`: one interface over every HuggingFace causal LM."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from nnsight.modeling.transformers import TransformersModel

from ._discovery import discover_spec
from ._errors import ArchitectureError, InputError, ShapeError, UnavailableError, UniterpError
from ._families import get_spec
from ._interventions import skip_layer_range, steer_layers
from ._layout import LAYER_SITES, Layout, probe_layout, to_native
from ._sites import (
    AttentionProbabilities,
    LayerList,
    LayerValues,
    envoy_at,
    in_trace,
    outside_trace,
    read_value,
    write_value,
)
from ._spec import ArchitectureSpec
from ._support import describe_tree

__all__ = ["StandardizedTransformer"]

logger = logging.getLogger("uniterp")


def _load_config(model: Any, kwargs: dict[str, Any], trust_remote_code: bool) -> Any:
    if isinstance(model, torch.nn.Module):
        config = getattr(model, "config", None)
        if config is None:
            raise InputError(
                f"a loaded {type(model).__name__} has no .config; pass a transformers PreTrainedModel"
            )
        return config
    if kwargs.get("config") is not None:
        return kwargs["config"]
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(
        model, revision=kwargs.get("revision"), trust_remote_code=trust_remote_code
    )


def _load_tokenizer(model: Any, kwargs: dict[str, Any], trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    source = model if isinstance(model, str) else getattr(model, "name_or_path", None)
    if not source:
        raise InputError(f"cannot find a tokenizer for a loaded {type(model).__name__}; pass tokenizer=...")
    try:
        return AutoTokenizer.from_pretrained(
            source, revision=kwargs.get("revision"), trust_remote_code=trust_remote_code
        )
    except Exception as error:  # noqa: BLE001 - re-raised with context
        raise InputError(
            f"could not load a tokenizer from {source!r} ({error}); pass tokenizer=..."
        ) from error


def _config_size(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class StandardizedTransformer(TransformersModel):
    """A HuggingFace causal LM with standardized names, on nnsight 0.8.

    Example::

        >>> model = StandardizedTransformer("gpt2")            # Hub id, path, or loaded model
        >>> with model.trace("The Eiffel Tower is in the city of"):
        ...     h = model.layers_output[5].save()              # (batch, seq, hidden)
        ...     model.layers_output[8] = model.layers_output[8] * 1.5
        ...     probs = model.next_token_probs.save()          # (batch, vocab)

    The standard tree is ``embed_tokens``, ``layers[i]`` (with ``self_attn`` and
    ``mlp``), ``ln_final`` and ``lm_head``; native names keep working. The values
    ``token_embeddings``, ``layers_input``, ``layers_output``, ``attentions_input``,
    ``attentions_output``, ``mlps_input``, ``mlps_output``, ``logits`` and
    ``next_token_probs`` are readable and writable inside a trace (the last is
    read-only), as are the read-only ``input_ids`` and ``attention_mask``. Read
    values in forward order within one invoke.

    Args:
        model: A Hub id, a local folder, a loaded ``PreTrainedModel``, or
            ``"uniterp-tiny"`` (the small trained model shipped with the package).
        spec: An `ArchitectureSpec` for an architecture uniterp does not know, or
            to override the registered one.
        tokenizer: A tokenizer; loaded from ``model`` when omitted.
        check_on_load: Run the structural probe (every layer, every value's shape)
            at construction. It runs on fake tensors without loading weights when
            the model allows it. When off, it runs before the first trace.
        trust_remote_code: Passed to transformers; off unless you say so.
        **kwargs: Loading keywords for transformers/nnsight (``dtype``,
            ``device_map``, ``attn_implementation``, ``revision``, ``dispatch``, ...).

    Raises:
        ArchitectureError: A standardized piece cannot be located or has the
            wrong shape; the message names the model type, the standardized
            name, the native paths tried and how to pass a custom spec.
    """

    def __init__(
        self,
        model: str | torch.nn.Module,
        *,
        spec: ArchitectureSpec | None = None,
        tokenizer: Any = None,
        check_on_load: bool = True,
        trust_remote_code: bool = False,
        enable_attention_probs: bool = False,
        **kwargs: Any,
    ) -> None:
        if enable_attention_probs:
            requested = kwargs.get("attn_implementation")
            if requested not in (None, "eager"):
                logger.warning(
                    "uniterp: enable_attention_probs=True needs eager attention; ignoring attn_implementation=%r",
                    requested,
                )
            kwargs["attn_implementation"] = "eager"
            logger.info("uniterp: attention probabilities enabled; the model runs eager attention")
        if isinstance(model, str):
            from .tiny import resolve_model_name

            model = resolve_model_name(model)
        config = _load_config(model, kwargs, trust_remote_code)
        model_type = str(getattr(config, "model_type", type(config).__name__))
        if spec is None:
            spec = get_spec(model_type)
        if tokenizer is None:
            tokenizer = _load_tokenizer(model, kwargs, trust_remote_code)
        kwargs.pop("task", None)
        with warnings.catch_warnings():
            # nnsight mounts a submodule named `output` (BERT) as `E_output` and says so;
            # uniterp resolves such paths itself.
            warnings.filterwarnings("ignore", message=r".*has a submodule named", category=UserWarning)
            try:
                self._construct(model, tokenizer, kwargs.pop("rename", None), trust_remote_code, kwargs)
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise ArchitectureError(
                    model_type,
                    "model",
                    [],
                    f"transformers/nnsight could not build it: {type(error).__name__}: {error}",
                ) from error
        discovered = spec is None
        if spec is None:
            text = config.get_text_config() if hasattr(config, "get_text_config") else config
            spec = discover_spec(self._module, model_type, text)
            logger.info("uniterp: %s has no registered spec; discovered %s", model_type, spec)
        self._bind_root_modules(spec)
        self._finish_init(model_type, spec, discovered, enable_attention_probs, check_on_load)

    def _construct(
        self,
        model: Any,
        tokenizer: Any,
        rename: dict[str, str] | None,
        trust_remote_code: bool,
        kwargs: dict[str, Any],
    ) -> None:
        super().__init__(
            model,
            task="text-generation",
            tokenizer=tokenizer,
            rename=rename,
            trust_remote_code=trust_remote_code,
            **kwargs,
        )

    def _finish_init(
        self,
        model_type: str,
        spec: ArchitectureSpec,
        discovered: bool,
        enable_attention_probs: bool,
        check_on_load: bool,
    ) -> None:
        self._spec = spec
        self._model_type = model_type
        self._discovered = discovered
        self._envoy_cache: dict[str, Any] = {}
        self._batch_shape: tuple[int, ...] | None = None
        self._hooked_module: torch.nn.Module | None = None
        self._hook_handles: list[Any] = []
        self._layout: Layout | None = None
        self._enable_attention_probs = enable_attention_probs
        self._attention_probs: list[Any] | None = None
        self._locating = False
        self._lens_reason: str | None = spec.lens_unavailable
        if self._lens_reason is None and spec.residual_streams and not spec.stream_readout:
            self._lens_reason = (
                f"the model merges its residual streams ({spec.residual_streams}) into the final hidden "
                "state in code outside any module, so the readout cannot be applied to a layer's output"
            )
        self._values = {name: LayerValues(self, name) for name in LAYER_SITES}
        self._probs_view = AttentionProbabilities(self)
        stack = self._native(spec.layers)
        if stack is None:
            raise ArchitectureError(model_type, "layers", [spec.layers], "no module at that path")
        self._layer_list = LayerList(self, stack)
        if check_on_load:
            self._ensure_layout()
            if discovered:
                self._trust_discovered()
            if enable_attention_probs:
                self._ensure_attention_probs()

    # -- construction helpers -------------------------------------------------

    def _native(self, path: str) -> Any:
        """The envoy at native ``path`` (relative to the causal-LM module), or ``None``."""
        if path in self._envoy_cache:
            return self._envoy_cache[path]
        module: Any = self._module
        for part in path.split("."):
            module = getattr(module, part, None)
            if not isinstance(module, torch.nn.Module):
                return None
        obj = envoy_at(self, path)
        self._envoy_cache[path] = obj
        return obj

    def _ensure_layout(self) -> Layout:
        if self._layout is None:
            try:
                hidden: int | None = self.hidden_size
            except UnavailableError:
                hidden = None  # shapes are still checked for (batch, seq, *) and consistency
            self._layout = probe_layout(self, self._spec, self._model_type, hidden)
            logger.debug("uniterp: %s layout probed with %s", self._model_type, self._layout.probed_with)
            self._bind_layer_modules(self._layout)
        return self._layout

    def _bind_root_modules(self, spec: ArchitectureSpec) -> None:
        """Give the embedding, final norm and unembedding their standard names."""
        for name, path in (
            ("embed_tokens", spec.embed_tokens),
            ("ln_final", spec.final_norm),
            ("lm_head", spec.lm_head),
        ):
            if path is None or path == name or name in self.__dict__ or hasattr(self._module, name):
                continue
            module: Any = self._module
            for part in path.split("."):
                module = getattr(module, part, None)
            if isinstance(module, torch.nn.Module):
                object.__setattr__(self, name, envoy_at(self, path))

    def _bind_layer_modules(self, layout: Layout) -> None:
        """Give each block's attention and MLP their standard names (``self_attn``, ``mlp``)."""
        for index, modules in enumerate(layout.modules):
            block = self._layer_list._stack[index]
            for name, rel in modules.items():
                if rel == name or name in block.__dict__ or hasattr(block._module, name):
                    continue
                object.__setattr__(block, name, envoy_at(block, rel))

    def _ensure_attention_probs(self) -> None:
        if self._enable_attention_probs and self._attention_probs is None and not self._locating:
            from ._attention import locate_all

            self._locating = True
            try:
                locate_all(self)
            finally:
                self._locating = False

    def _trust_discovered(self) -> None:
        try:
            result = self.check()
        except UniterpError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure means the guess is not trusted
            raise ArchitectureError(
                self._model_type,
                "layers_output",
                [self._spec.layers],
                f"the automatically discovered layout could not be checked: {type(error).__name__}: {error}",
            ) from error
        lens_check = "project_on_vocab(layers_output[-1]) == logits"
        failed = [item.name for item in result.failures]
        if failed == [lens_check]:
            # every value and the logits are exact; only the readout of the last
            # layer differs: the model's readout uses more than that layer's output
            item = result.failures[0]
            self._lens_reason = (
                f"project_on_vocab(layers_output[-1]) differs from the logits ({item.detail}): the model's "
                "readout uses more than the last layer's output"
            )
            logger.warning(
                "uniterp: %s: project_on_vocab is unavailable: %s", self._model_type, self._lens_reason
            )
            return
        if not result.passed:
            raise ArchitectureError(
                self._model_type,
                "layers_output",
                [self._spec.layers],
                "the automatically discovered layout failed its numerical check: " + result.summary(),
            )

    def _install_runtime_hooks(self) -> None:
        """Record each batch's ``(batch, seq)`` where a value is flattened (OPT's MLP)."""
        if self._layout is None or not self._layout.has_flat_sites or self._hooked_module is self._module:
            return
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []

        def record(_module: Any, args: Any, kwargs: Any) -> None:
            hidden = args[0] if args else kwargs.get("hidden_states")
            if isinstance(hidden, torch.Tensor):
                self._batch_shape = tuple(hidden.shape[:-1])

        for layer in self._module.get_submodule(self._spec.layers):
            self._hook_handles.append(layer.register_forward_pre_hook(record, with_kwargs=True))
        self._hooked_module = self._module

    # -- tracing ----------------------------------------------------------------

    def trace(self, *inputs: Any, **kwargs: Any) -> Any:
        """Open a trace; see nnsight's ``trace``. Rejects empty prompts up front.

        Example::

            >>> with model.trace(["Hello", "The capital of France is"]):
            ...     probs = model.next_token_probs.save()   # (2, vocab)
        """
        _check_prompts(inputs)
        if kwargs.get("remote"):
            from ._tooling import use_remote

            use_remote(kwargs["remote"])
        self._ensure_layout()
        tokenizer = self.tokenizer
        if tokenizer is not None and getattr(tokenizer, "padding_side", "left") != "left":
            # next_token_probs reads the last position of every row: only left padding
            # puts each prompt's last token there.
            logger.warning(
                "uniterp: tokenizer.padding_side was %r; batches are left-padded", tokenizer.padding_side
            )
            tokenizer.padding_side = "left"
        if self._enable_attention_probs and self._attention_probs is None and not kwargs.get("remote"):
            self._ensure_attention_probs()
        if not kwargs.get("remote") and self._layout is not None and self._layout.has_flat_sites:
            self.dispatch()
            self._install_runtime_hooks()
        return super().trace(*inputs, **kwargs)

    # -- metadata ---------------------------------------------------------------

    @property
    def spec(self) -> ArchitectureSpec:
        """The `ArchitectureSpec` this model was bound with."""
        return self._spec

    @property
    def model_type(self) -> str:
        """The HF ``config.model_type``."""
        return self._model_type

    @property
    def text_config(self) -> Any:
        """The (text) config of the model."""
        config = self._module.config
        return config.get_text_config() if hasattr(config, "get_text_config") else config

    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return len(self._layer_list)

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream."""
        size = _config_size(
            self.text_config,
            self._spec.config_keys.get("hidden_size", "hidden_size"),
            "hidden_size",
            "n_embd",
            "d_model",
        )
        if size is None:
            raise UnavailableError(self._model_type, "hidden_size", "no size key in the config")
        return size

    @property
    def num_heads(self) -> int:
        """Number of attention (query) heads."""
        size = _config_size(
            self.text_config,
            self._spec.config_keys.get("num_heads", "num_attention_heads"),
            "num_attention_heads",
            "n_head",
        )
        if size is None:
            raise UnavailableError(self._model_type, "num_heads", "no head count in the config")
        return size

    @property
    def num_kv_heads(self) -> int:
        """Number of key/value heads (grouped-query and multi-query attention)."""
        config = self.text_config
        size = _config_size(
            config,
            self._spec.config_keys.get("num_kv_heads", "num_key_value_heads"),
            "num_key_value_heads",
            "num_kv_heads",
        )
        if size is None and getattr(config, "multi_query", False):
            size = 1
        return size if size is not None else self.num_heads

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        size = _config_size(self.text_config, self._spec.config_keys.get("head_dim", "head_dim"), "head_dim")
        return size if size is not None else self.hidden_size // self.num_heads

    @property
    def vocab_size(self) -> int:
        """Number of logits (the unembedding's output size)."""
        head = self._native(self._spec.lm_head)
        out = getattr(head._module, "out_features", None) if head is not None else None
        return out if out is not None else int(self.text_config.vocab_size)

    # -- the standard tree --------------------------------------------------------

    @property
    def layers(self) -> LayerList:
        """The decoder blocks; ``layers[i].self_attn`` and ``layers[i].mlp`` inside each."""
        return self._layer_list

    # -- standardized values ------------------------------------------------------

    @property
    def layers_input(self) -> LayerValues:
        """Residual stream entering layer ``i``: ``(batch, seq, hidden)``."""
        return self._values["layers_input"]

    @property
    def layers_output(self) -> LayerValues:
        """Residual stream leaving layer ``i``: ``(batch, seq, hidden)``."""
        return self._values["layers_output"]

    @property
    def attentions_input(self) -> LayerValues:
        """Hidden states entering the attention of layer ``i`` (after its norm): ``(batch, seq, hidden)``."""
        return self._values["attentions_input"]

    @property
    def attentions_output(self) -> LayerValues:
        """Attention contribution of layer ``i`` (after the output projection): ``(batch, seq, hidden)``."""
        return self._values["attentions_output"]

    @property
    def mlps_input(self) -> LayerValues:
        """Hidden states entering the MLP of layer ``i`` (after its norm): ``(batch, seq, hidden)``."""
        return self._values["mlps_input"]

    @property
    def mlps_output(self) -> LayerValues:
        """MLP (or MoE block) contribution of layer ``i``: ``(batch, seq, hidden)``."""
        return self._values["mlps_output"]

    @property
    def attention_probabilities(self) -> AttentionProbabilities:
        """Attention probabilities of layer ``i``: ``(batch, heads, q, k)``. Writable.

        Opt-in: load with ``enable_attention_probs=True`` (eager attention).
        Unavailable on layers without softmax attention, with the reason.
        """
        return self._probs_view

    @property
    def token_embeddings(self) -> torch.Tensor:
        """Output of ``embed_tokens``: ``(batch, seq, hidden)``. Writable."""
        _require_trace("token_embeddings")
        return read_value(self, self._ensure_layout().token_embeddings)

    @token_embeddings.setter
    def token_embeddings(self, value: torch.Tensor) -> None:
        _require_trace("token_embeddings")
        write_value(self, self._ensure_layout().token_embeddings, value)

    @property
    def logits(self) -> torch.Tensor:
        """The model's output logits: ``(batch, seq, vocab)``. Writable; read it last."""
        _require_trace("logits")
        return self.output.logits

    @logits.setter
    def logits(self, value: torch.Tensor) -> None:
        _require_trace("logits")
        out = self.output
        out["logits"] = value
        self.output = out

    @property
    def next_token_probs(self) -> torch.Tensor:
        """Softmax of the last position's logits: ``(batch, vocab)`` (left padding aligns it)."""
        return self.logits[:, -1, :].float().softmax(dim=-1)

    @property
    def input_ids(self) -> torch.Tensor:
        """Token ids of the batch: ``(batch, seq)``. Read it before any other value."""
        return self._root_input("input_ids")

    @property
    def attention_mask(self) -> torch.Tensor:
        """Attention mask of the batch (1 = token, 0 = padding): ``(batch, seq)``. Read first."""
        return self._root_input("attention_mask")

    def _root_input(self, name: str) -> torch.Tensor:
        _require_trace(name)
        args, kwargs = self.inputs
        if name in kwargs:
            return kwargs[name]
        if name == "input_ids" and args:
            return args[0]
        raise UnavailableError(self._model_type, name, "the forward call did not receive it")

    # -- methods ----------------------------------------------------------------

    def project_on_vocab(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, unembedding and logit post-processing applied to ``hidden``.

        ``project_on_vocab(layers_output[-1])`` equals ``logits`` on every family
        (softcapping and logit scaling included).

        Example::

            >>> with model.trace("The capital of France is"):
            ...     lens = model.project_on_vocab(model.layers_output[3]).save()

        Args:
            hidden: ``(..., hidden)`` residual-stream states.

        Returns:
            ``(..., vocab)`` logits.
        """
        if self._lens_reason is not None:
            raise UnavailableError(self._model_type, "project_on_vocab", self._lens_reason)
        x = hidden
        if self._spec.stream_readout:
            x = self._merge_streams(x)
        norm = self._native(self._spec.final_norm) if self._spec.final_norm else None
        if norm is not None:
            x = norm(x)
        for path in self._spec.pre_unembed:
            extra = self._native(path)
            if extra is not None:
                x = extra(x)
        head = self._native(self._spec.lm_head)
        return self._postprocess_logits(head(x))

    def _merge_streams(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., n_streams, hidden)`` -> ``(..., hidden)`` through the model's own stream readout."""
        layout = self._ensure_layout()
        loc = layout.layers[-1]["layers_output"]
        if loc.streams is None:
            return hidden
        if hidden.dim() < 2 or hidden.shape[-2] != loc.n_streams:
            raise ShapeError(
                f"{self._model_type} keeps {loc.n_streams} residual streams: project_on_vocab expects "
                f"(..., {loc.n_streams}, hidden), got {tuple(hidden.shape)}"
            )
        lead = hidden.shape[:-2]
        rows = to_native(loc, hidden.reshape(-1, 1, loc.n_streams, hidden.shape[-1]))
        merged = self._native(self._spec.stream_readout)(rows)
        return merged.reshape(*lead, merged.shape[-1])

    @property
    def lens_unavailable(self) -> str | None:
        """Why `project_on_vocab` is unavailable on this model, or ``None`` when it is exact.

        Example::

            >>> model.lens_unavailable is None
            True
        """
        return self._lens_reason

    def _postprocess_logits(self, logits: torch.Tensor) -> torch.Tensor:
        config = self.text_config
        spec = self._spec
        if spec.logit_scale and getattr(config, spec.logit_scale, None) is not None:
            logits = logits * getattr(config, spec.logit_scale)
        if spec.logit_divisor and getattr(config, spec.logit_divisor, None) is not None:
            logits = logits / getattr(config, spec.logit_divisor)
        cap = getattr(config, spec.logit_softcap, None) if spec.logit_softcap else None
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def steer(
        self,
        layers: int | Sequence[int],
        steering_vector: torch.Tensor,
        factor: float = 1.0,
        token_positions: int | Sequence[int] | None = None,
        batch_index: int | Sequence[int] | None = None,
    ) -> None:
        """Add ``factor * steering_vector`` to ``layers_output`` of the given layers.

        Call inside a trace. The vector is cast to each layer's dtype and device.

        Example::

            >>> with model.trace("I think that"):
            ...     model.steer([3, 4], direction, factor=4.0, token_positions=-1)
            ...     probs = model.next_token_probs.save()

        Args:
            layers: One layer index or several (any order; applied in forward order).
            steering_vector: ``(hidden,)``, or ``(n_positions, hidden)`` matching
                ``token_positions``.
            factor: Scale of the added vector.
            token_positions: Positions to steer (default: all).
            batch_index: Batch rows to steer (default: all).

        Raises:
            ShapeError: The vector's last dimension is not ``hidden_size``.
            LayerIndexError: A layer index is out of range.
        """
        steer_layers(self, layers, steering_vector, factor, token_positions, batch_index)

    def skip_layer(self, layer: int, skip_with: torch.Tensor | None = None) -> None:
        """Skip layer ``layer``: its output becomes its input (or ``skip_with``).

        Example::

            >>> with model.trace("Hello"):
            ...     model.skip_layer(2)
            ...     out = model.layers_output[2].save()   # equals layers_input[2]

        Args:
            layer: Layer index.
            skip_with: ``(batch, seq, hidden)`` to use instead of the layer input.
        """
        self.skip_layers(layer, layer, skip_with)

    def skip_layers(self, start: int, end: int, skip_with: torch.Tensor | None = None) -> None:
        """Skip layers ``start`` to ``end`` (inclusive), passing the residual through.

        Example::

            >>> with model.trace("Hello"):
            ...     model.skip_layers(1, 3)

        A layer that returns a tuple gets ``(hidden, None, ...)``: attention
        weights of skipped layers are not computed.

        Args:
            start: First skipped layer.
            end: Last skipped layer (inclusive).
            skip_with: ``(batch, seq, hidden)`` used as every skipped layer's
                output; default: ``layers_input[start]``.
        """
        skip_layer_range(self, start, end, skip_with)

    def support(self) -> Any:
        """Which standardized values this model offers, on which layers, and why not.

        Example::

            >>> print(model.support())
            llama: 16 layers, block layout 'sequential'
              token_embeddings   available
              layers_input       available on every layer
              ...

        Returns:
            A `SupportReport`.
        """
        from ._support import support_report

        return support_report(self)

    def check(self, prompts: Sequence[str] | None = None) -> Any:
        """Run the numerical checks on a short real input; see `CheckResult`.

        Example::

            >>> result = model.check()
            >>> result.passed
            True
            >>> print(result)

        Args:
            prompts: Prompts to check with (default: two built-in prompts of
                different lengths, left-padded).

        Returns:
            A `CheckResult` listing each check and its outcome.
        """
        from ._check import run_checks

        return run_checks(self, prompts)

    # -- display --------------------------------------------------------------

    def __repr__(self) -> str:
        return describe_tree(self)


def _require_trace(name: str) -> None:
    if not in_trace():
        raise outside_trace(name)


def _check_prompts(inputs: tuple[Any, ...]) -> None:
    if not inputs:
        return
    first = inputs[0]
    if isinstance(first, (list, tuple)) and len(first) == 0:
        raise InputError("empty prompt list: pass at least one prompt")
    if isinstance(first, str) and not first:
        raise InputError("empty prompt: pass a non-empty string")
    if isinstance(first, (list, tuple)) and any(isinstance(p, str) and not p for p in first):
        raise InputError("a prompt in the list is an empty string")
