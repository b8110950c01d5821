"""`StandardizedTransformer`: one interface over every HuggingFace causal LM.

Load -> bind -> validate. The binding (`Binding`) is computed once and read by
everything else; this module is the only one that installs it on the model.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import torch
from nnsight.modeling.transformers import TransformersModel

from ._aliases import NamedValues
from ._binding import CHECKED_SOURCES, Binding, bind_stages
from ._discovery import discover_spec
from ._errors import ArchitectureError, UnavailableError
from ._families import SpecSource, lookup_spec
from ._inputs import check_token_ids, check_trace_inputs, text_as_encoding
from ._internals import INTERNAL_SITES
from ._layout import LAYER_SITES
from ._loading import load_config, load_tokenizer, quiet_progress, resolve_source
from ._methods import StandardMethods
from ._mixer_states import MixerStates
from ._nnsight_compat import envoy_at, native_module
from ._norms import NORM_SITES
from ._paths import module_at
from ._runtime import Runtime
from ._sae_attach import SAEAttachment
from ._sites import (
    AttentionProbabilities,
    AttentionScores,
    LayerList,
    LayerValues,
)
from ._sizes import text_config
from ._spec import ArchitectureSpec
from ._values import StandardValues
from ._weight_views import WeightViews

if TYPE_CHECKING:
    pass

__all__ = ["StandardizedTransformer"]

logger = logging.getLogger("uniterp")


class StandardizedTransformer(StandardValues, StandardMethods, WeightViews, SAEAttachment, TransformersModel):
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
        tokenizer: A tokenizer (uniterp works on a copy, so yours keeps its
            settings); loaded from ``model`` when omitted.
        check_on_load: Bind at construction: the structural probe (every layer,
            every value's shape, on fake tensors without loading weights when the
            model allows it), plus the numerical check of a discovered spec. When
            off, the same binding runs before the first use.
        trust_remote_code: Passed to transformers; off unless you say so.
        enable_attention_probs: Locate and validate the attention probabilities
            (switches to eager attention).
        show_progress: Show transformers' weight-loading progress bars.
        **kwargs: Loading keywords for transformers/nnsight (``dtype``,
            ``device_map``, ``attn_implementation``, ``revision``, ``dispatch``, ...).

    Raises:
        InputError: The model cannot be found or loaded.
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
        show_progress: bool = False,
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
        source = resolve_source(model)
        config = load_config(source, kwargs, trust_remote_code)
        model_type = str(getattr(config, "model_type", type(config).__name__))
        tokenizer = load_tokenizer(source, tokenizer, kwargs, trust_remote_code)
        kwargs.pop("task", None)
        rename = kwargs.pop("rename", None)
        with warnings.catch_warnings(), quiet_progress(show_progress):
            # nnsight mounts a submodule named `output` (BERT) as `E_output` and says so;
            # uniterp resolves such paths itself.
            warnings.filterwarnings("ignore", message=r".*has a submodule named", category=UserWarning)
            try:
                super().__init__(
                    source,
                    task="text-generation",
                    tokenizer=tokenizer,
                    rename=rename,
                    trust_remote_code=trust_remote_code,
                    **kwargs,
                )
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise ArchitectureError(
                    model_type,
                    "model",
                    [],
                    f"transformers/nnsight could not build it: {type(error).__name__}: {error}",
                ) from error
        self._model_type = model_type
        self._show_progress = show_progress
        self._attention_wanted = enable_attention_probs
        self._binding: Binding | None = None
        self._envoys: dict[str, Any] = {}
        self._runtime = Runtime()
        self._values = {name: LayerValues(self, name) for name in LAYER_SITES + INTERNAL_SITES + NORM_SITES}
        self._named = NamedValues(self)
        self._probs_view = AttentionProbabilities(self)
        self._scores_view = AttentionScores(self)
        self._states_view = MixerStates(self)
        found = (spec, "given") if spec is not None else lookup_spec(model_type)
        try:
            if found is None:
                raise LookupError
            self._use_spec(*found)
        except (LookupError, ArchitectureError):
            if found is not None and found[1] != "generated":
                raise
            self._use_spec(self._discover(), "discovered")
        if check_on_load:
            self._ensure_bound()

    # -- binding ------------------------------------------------------------------------------

    def _discover(self) -> ArchitectureSpec:
        spec = discover_spec(native_module(self), self._model_type, self.text_config)
        logger.info("uniterp: %s has no hand-written spec; discovered %s", self._model_type, spec)
        return spec

    def _use_spec(self, spec: ArchitectureSpec, source: SpecSource) -> None:
        """Adopt ``spec``: the standard names of the root modules and the layer list."""
        self._spec, self._spec_source = spec, source
        for name, path in (
            ("embed_tokens", spec.embed_tokens),
            ("ln_final", spec.final_norm),
            ("lm_head", spec.lm_head),
        ):
            if path is None or path == name or hasattr(native_module(self), name):
                continue
            self.__dict__.pop(name, None)
            if module_at(native_module(self), path) is not None:
                object.__setattr__(self, name, envoy_at(self, path))
        stack = self._native(spec.layers)
        if stack is None:
            raise ArchitectureError(self._model_type, "layers", [spec.layers], "no module at that path")
        self._layer_list = LayerList(self, stack)

    def _ensure_bound(self) -> Binding:
        if self._binding is None:
            try:
                self._bind(self._spec, self._spec_source)
            except ArchitectureError as error:
                if self._spec_source != "generated":
                    raise
                logger.info(
                    "uniterp: the generated row of %s did not fit (%s); discovering", self._model_type, error
                )
                self._use_spec(self._discover(), "discovered")
                self._bind(self._spec, self._spec_source)
        return self._binding  # type: ignore[return-value]

    def _bind(self, spec: ArchitectureSpec, source: SpecSource) -> None:
        """Run the binding pipeline, installing each stage's binding (later stages read through it)."""
        try:
            for binding in bind_stages(self, spec, source, self._model_type, self._attention_wanted):
                if self._binding is None:
                    self._name_layer_modules(binding)
                self._binding = binding
        except BaseException:
            self._binding = None
            raise
        if source in CHECKED_SOURCES and binding.lens_unavailable and not spec.lens_unavailable:
            logger.warning(
                "uniterp: %s: project_on_vocab is unavailable: %s", self._model_type, binding.lens_unavailable
            )

    def _name_layer_modules(self, binding: Binding) -> None:
        """Give each block's attention and MLP their standard names (``self_attn``, ``mlp``)."""
        for index, modules in enumerate(binding.layout.modules):
            block = self._layer_list[index]
            for name, rel in modules.items():
                if name not in ("self_attn", "mlp"):
                    continue
                if rel == name or name in block.__dict__ or hasattr(native_module(block), name):
                    continue
                object.__setattr__(block, name, envoy_at(block, rel))

    @property
    def binding(self) -> Binding:
        """How this model maps onto the standard (computed once; see `Binding`)."""
        return self._ensure_bound()

    def _native(self, path: str) -> Any:
        """The envoy at native ``path`` (relative to the causal-LM module), or ``None``."""
        if path not in self._envoys:
            if module_at(native_module(self), path) is None:
                return None
            self._envoys[path] = envoy_at(self, path)
        return self._envoys[path]

    def _envoy(self, path: str) -> Any:
        """The envoy at a native ``path`` known to exist (cached)."""
        envoy = self._envoys.get(path)
        if envoy is None:
            envoy = self._envoys[path] = envoy_at(self, path)
        return envoy

    # -- running ------------------------------------------------------------------------------

    def trace(self, *inputs: Any, **kwargs: Any) -> Any:
        """Open a trace; see nnsight's ``trace``. Refuses inputs it cannot run, up front.

        Example::

            >>> with model.trace(["Hello", "The capital of France is"]):
            ...     probs = model.next_token_probs.save()   # (2, vocab)
        """
        check_trace_inputs(inputs)
        binding = self._prepare(kwargs.get("remote"))
        check_token_ids(inputs, binding.sizes.vocab_size, self._model_type)
        return super().trace(*text_as_encoding(self, inputs, kwargs), **kwargs)

    def _prepare(self, remote: Any) -> Binding:
        if remote:
            from ._tooling import use_remote

            use_remote(remote)
        binding = self._ensure_bound()
        tokenizer = self.tokenizer
        if tokenizer is not None and getattr(tokenizer, "padding_side", "left") != "left":
            # next_token_probs reads the last position of every row: only left padding
            # puts each prompt's last token there.
            logger.warning(
                "uniterp: tokenizer.padding_side was %r; batches are left-padded", tokenizer.padding_side
            )
            tokenizer.padding_side = "left"
        if not remote:
            self.dispatch()
            self._runtime.install(native_module(self), binding)
            self._states_view.located()  # a short forward, once, on models with recurrent mixers
        return binding

    def dispatch(self) -> None:
        """Load the real weights (quietly unless ``show_progress``); see nnsight's ``dispatch``."""
        if self.dispatched:
            return
        with quiet_progress(self._show_progress):
            super().dispatch()

    # -- metadata ---------------------------------------------------------------------------

    @property
    def spec(self) -> ArchitectureSpec:
        """The `ArchitectureSpec` this model is bound with (as the binding settled it)."""
        return self.binding.spec

    @property
    def model_type(self) -> str:
        """The HF ``config.model_type``."""
        return self._model_type

    @property
    def text_config(self) -> Any:
        """The (text) config of the model."""
        return text_config(native_module(self).config)

    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return len(self._layer_list)

    def _size(self, name: str) -> int:
        value = getattr(self.binding.sizes, name)
        if value is None:
            raise UnavailableError(self._model_type, name, "the config does not say")
        return value

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream."""
        return self._size("hidden_size")

    @property
    def num_heads(self) -> int:
        """Number of attention (query) heads."""
        return self._size("num_heads")

    @property
    def num_kv_heads(self) -> int:
        """Number of key/value heads (grouped-query and multi-query attention)."""
        return self._size("num_kv_heads")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self._size("head_dim")

    @property
    def vocab_size(self) -> int:
        """Number of logits (the unembedding's output size)."""
        return self._size("vocab_size")

    @property
    def lens_unavailable(self) -> str | None:
        """Why `project_on_vocab` is unavailable on this model, or ``None`` when it is exact."""
        return self.binding.lens_unavailable
