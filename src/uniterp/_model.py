"""`StandardizedTransformer`: one interface over every HuggingFace causal LM.

Load -> bind -> validate. The binding (`Binding`) is computed once and read by
everything else; this module is the only one that installs it on the model.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from nnsight.modeling.transformers import TransformersModel

from ._aliases import NamedValues
from ._binding import CHECKED_SOURCES, Binding, bind_stages
from ._discovery import discover_spec
from ._errors import ArchitectureError, UnavailableError
from ._families import SpecSource, lookup_spec
from ._inputs import check_token_ids, check_trace_inputs
from ._internals import INTERNAL_SITES
from ._interventions import skip_layer_range, steer_layers
from ._layout import LAYER_SITES
from ._loading import load_config, load_tokenizer, quiet_progress, resolve_source
from ._nnsight_compat import OutOfOrderError, envoy_at, native_module
from ._norms import NORM_SITES
from ._paths import module_at
from ._readout import project
from ._runtime import Runtime
from ._sites import (
    AttentionProbabilities,
    AttentionScores,
    LayerList,
    LayerValues,
    conform,
    raise_order_error,
    read_value,
    require_trace,
    write_value,
)
from ._sizes import text_config
from ._spec import ArchitectureSpec

if TYPE_CHECKING:
    from ._check import CheckResult
    from ._support import SupportReport

__all__ = ["StandardizedTransformer"]

logger = logging.getLogger("uniterp")


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
        return super().trace(*inputs, **kwargs)

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
        layout = binding.layout
        if not remote and (layout.has_flat_sites or layout.has_copies or binding.sizes.context_limit):
            self.dispatch()
            self._runtime.install(native_module(self), binding)
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

    # -- the standard tree and values -----------------------------------------------------

    @property
    def layers(self) -> LayerList:
        """The decoder blocks; ``layers[i].self_attn`` and ``layers[i].mlp`` inside each."""
        return self._layer_list

    layers_input = property(
        lambda self: self._values["layers_input"],
        doc="Residual stream entering layer ``i``: ``(batch, seq, hidden)``.",
    )
    layers_output = property(
        lambda self: self._values["layers_output"],
        doc="Residual stream leaving layer ``i``: ``(batch, seq, hidden)``.",
    )
    attentions_input = property(
        lambda self: self._values["attentions_input"],
        doc="Hidden states entering the attention of layer ``i`` (after its norm): ``(batch, seq, hidden)``.",
    )
    attentions_output = property(
        lambda self: self._values["attentions_output"],
        doc="Attention contribution of layer ``i`` (after the output projection): ``(batch, seq, hidden)``.",
    )
    mlps_input = property(
        lambda self: self._values["mlps_input"],
        doc="Hidden states entering the MLP of layer ``i`` (after its norm): ``(batch, seq, hidden)``.",
    )
    mlps_output = property(
        lambda self: self._values["mlps_output"],
        doc="MLP (or MoE block) contribution of layer ``i``: ``(batch, seq, hidden)``.",
    )

    residual_mid = property(
        lambda self: self._values["residual_mid"],
        doc="The residual stream between the attention and the MLP of layer ``i`` (the input of the MLP's "
        "norm): ``(batch, seq, hidden)``. Not on parallel blocks.",
    )
    attentions_output_normed = property(
        lambda self: self._values["attentions_output_normed"],
        doc="The attention output after the block's post-attention norm, what it adds to the residual stream "
        "(Gemma 2/3, OLMo 2): ``(batch, seq, hidden)``.",
    )
    mlps_output_normed = property(
        lambda self: self._values["mlps_output_normed"],
        doc="The MLP output after the block's post-MLP norm, what it adds to the residual stream: "
        "``(batch, seq, hidden)``.",
    )
    queries = property(
        lambda self: self._values["queries"],
        doc="Queries the attention kernel receives at layer ``i`` (after rotary and q/k norms): "
        "``(batch, n_heads, seq, head_dim)``.",
    )
    keys = property(
        lambda self: self._values["keys"],
        doc="Keys the attention kernel receives (grouped heads kept grouped; cached positions included "
        "when generating): ``(batch, n_kv_heads, seq_k, head_dim)``.",
    )
    values = property(
        lambda self: self._values["values"],
        doc="Values the attention kernel receives: ``(batch, n_kv_heads, seq_k, head_dim)``.",
    )
    queries_pre_rotary = property(
        lambda self: self._values["queries_pre_rotary"],
        doc="Queries before the rotary embedding (after q norms): ``(batch, n_heads, seq, head_dim)``.",
    )
    keys_pre_rotary = property(
        lambda self: self._values["keys_pre_rotary"],
        doc="Keys before the rotary embedding (after k norms): ``(batch, n_kv_heads, seq, head_dim)``.",
    )
    head_outputs = property(
        lambda self: self._values["head_outputs"],
        doc="Each head's output, the input of the attention's output projection split per head: "
        "``(batch, seq, n_heads, head_dim)``.",
    )
    mlp_neurons = property(
        lambda self: self._values["mlp_neurons"],
        doc="The MLP's neurons, the input of its down projection (after the activation and the gate "
        "product): ``(batch, seq, d_mlp)``.",
    )
    router_logits = property(
        lambda self: self._values["router_logits"],
        doc="A mixture of experts' router logits: ``(batch, seq, n_experts)``.",
    )
    expert_indices = property(
        lambda self: self._values["expert_indices"],
        doc="The experts each token is routed to: ``(batch, seq, k)`` (long).",
    )
    expert_weights = property(
        lambda self: self._values["expert_weights"],
        doc="The routing weights of those experts: ``(batch, seq, k)``.",
    )

    @property
    def attention_probabilities(self) -> AttentionProbabilities:
        """Attention probabilities of layer ``i``: ``(batch, heads, q, k)``. Writable.

        Opt-in: load with ``enable_attention_probs=True`` (eager attention).
        Unavailable on layers without softmax attention, with the reason.
        """
        return self._probs_view

    @property
    def sites(self) -> NamedValues:
        """Every value by any of its names: standardized (``"layers_output.3"``), TransformerLens
        (``"blocks.3.hook_resid_post"``) or native module path (``"model.layers.3"``); see `NamedValues`."""
        return self._named

    @property
    def attention_scores(self) -> AttentionScores:
        """Attention scores of layer ``i``, the softmax's input: ``(batch, heads, q, k)``. Writable.

        Opt-in like `attention_probabilities` (``enable_attention_probs=True``).
        """
        return self._scores_view

    @property
    def token_embeddings(self) -> torch.Tensor:
        """Token embeddings entering the first layer's residual stream: ``(batch, seq, hidden)``. Writable.

        The embedding's output, or the projection to the hidden size after it where
        the model has one (OPT's ``project_in``); position embeddings are not added.
        """
        require_trace("token_embeddings")
        return read_value(self, "token_embeddings", self.binding.layout.token_embeddings)

    @token_embeddings.setter
    def token_embeddings(self, value: torch.Tensor) -> None:
        require_trace("token_embeddings")
        write_value(self, "token_embeddings", self.binding.layout.token_embeddings, value)

    @property
    def logits(self) -> torch.Tensor:
        """The model's output logits: ``(batch, seq, vocab)``. Writable; read it last."""
        require_trace("logits")
        try:
            return self.output.logits
        except OutOfOrderError as error:
            raise_order_error("logits", error)

    @logits.setter
    def logits(self, value: torch.Tensor) -> None:
        require_trace("logits")
        out = self.output
        out["logits"] = conform("logits", self._model_type, value, out["logits"])
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
        require_trace(name)
        try:
            args, kwargs = self.inputs
        except OutOfOrderError as error:
            raise_order_error(name, error)
        if name in kwargs:
            return kwargs[name]
        if name == "input_ids" and args:
            return args[0]
        raise UnavailableError(self._model_type, name, "the forward call did not receive it")

    # -- methods ------------------------------------------------------------------------------

    def project_on_vocab(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, unembedding and logit post-processing applied to ``hidden``.

        ``project_on_vocab(layers_output[-1])`` equals ``logits`` on every family
        (softcapping and logit scaling included).

        Example::

            >>> with model.trace("The capital of France is"):
            ...     lens = model.project_on_vocab(model.layers_output[3]).save()

        Args:
            hidden: ``(..., hidden)`` residual-stream states (``(..., n_streams,
                hidden)`` on models with several streams).

        Returns:
            ``(..., vocab)`` logits.

        Raises:
            ShapeError: The last dimension is not ``hidden_size``.
            UnavailableError: The model's readout is not a function of one layer's output.
        """
        return project(self, hidden)

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
            token_positions: Columns of the (left-padded) batch to steer, negative
                from the end (``-1`` is every prompt's last token); default: all.
            batch_index: Batch rows to steer (default: all).

        Raises:
            ShapeError: The vector's last dimension is not ``hidden_size``, or a
                2-D vector's rows do not match ``token_positions``.
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

    def support(self) -> SupportReport:
        """Which standardized values this model offers, on which layers, and why not.

        Example::

            >>> print(model.support())
            llama: 16 layers, block layout 'sequential'
              token_embeddings   available
              layers_input       available on every layer
              ...
        """
        from ._support import support_report

        return support_report(self)

    def check(self, prompts: Sequence[str] | None = None) -> CheckResult:
        """Run the numerical checks on a short real input; see `CheckResult`.

        Example::

            >>> result = model.check()
            >>> result.passed
            True

        Args:
            prompts: Prompts to check with (default: two built-in prompts of
                different lengths, left-padded).
        """
        from ._check import run_checks

        return run_checks(self, prompts)

    def __repr__(self) -> str:
        from ._support import describe_tree

        return describe_tree(self)
