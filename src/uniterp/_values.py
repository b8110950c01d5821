"""The standardized tree and values of a `StandardizedTransformer` (a mixin; see ``_model.py``).

Every per-layer value is a `LayerValues` view (``model.layers_output[i]``); the
whole-model values are properties. Shapes are in each docstring; the view
machinery is in ``_sites.py``.
"""

from __future__ import annotations

from typing import Any

import torch

from ._aliases import NamedValues
from ._errors import UnavailableError
from ._mixer_states import MixerStates
from ._nnsight_compat import OutOfOrderError
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

__all__ = ["StandardValues"]


class StandardValues:
    """Mixin: the standard tree (``layers``) and every standardized value of the model.

    Example::

        >>> with model.trace("The capital of France is"):
        ...     h = model.layers_output[2].save()          # (batch, seq, hidden)
        ...     z = model.head_outputs[2].save()           # (batch, seq, n_heads, head_dim)
        ...     probs = model.next_token_probs.save()      # (batch, vocab)
    """

    _values: dict[str, Any]
    _layer_list: LayerList
    _named: NamedValues
    _probs_view: AttentionProbabilities
    _scores_view: AttentionScores
    _states_view: MixerStates
    _model_type: str
    binding: Any
    output: Any
    inputs: Any

    @property
    def layers(self) -> LayerList:
        """The decoder blocks; ``layers[i].self_attn`` and ``layers[i].mlp`` inside each."""
        return self._layer_list

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
    def residual_mid(self) -> LayerValues:
        """The residual stream between the attention and the MLP of layer ``i`` (the input of the MLP's norm): ``(batch, seq, hidden)``. Not on parallel blocks."""
        return self._values["residual_mid"]

    @property
    def attentions_output_normed(self) -> LayerValues:
        """The attention output after the block's post-attention norm, what it adds to the residual stream (Gemma 2/3, OLMo 2): ``(batch, seq, hidden)``."""
        return self._values["attentions_output_normed"]

    @property
    def mlps_output_normed(self) -> LayerValues:
        """The MLP output after the block's post-MLP norm, what it adds to the residual stream: ``(batch, seq, hidden)``."""
        return self._values["mlps_output_normed"]

    @property
    def queries(self) -> LayerValues:
        """Queries the attention kernel receives at layer ``i`` (after rotary and q/k norms): ``(batch, n_heads, seq, head_dim)``."""
        return self._values["queries"]

    @property
    def keys(self) -> LayerValues:
        """Keys the attention kernel receives (grouped heads kept grouped; cached positions included when generating): ``(batch, n_kv_heads, seq_k, head_dim)``."""
        return self._values["keys"]

    @property
    def values(self) -> LayerValues:
        """Values the attention kernel receives: ``(batch, n_kv_heads, seq_k, head_dim)``."""
        return self._values["values"]

    @property
    def queries_pre_rotary(self) -> LayerValues:
        """Queries before the rotary embedding (after q norms): ``(batch, n_heads, seq, head_dim)``."""
        return self._values["queries_pre_rotary"]

    @property
    def keys_pre_rotary(self) -> LayerValues:
        """Keys before the rotary embedding (after k norms): ``(batch, n_kv_heads, seq, head_dim)``."""
        return self._values["keys_pre_rotary"]

    @property
    def head_outputs(self) -> LayerValues:
        """Each head's output, the input of the attention's output projection split per head: ``(batch, seq, n_heads, head_dim)``."""
        return self._values["head_outputs"]

    @property
    def mlp_neurons(self) -> LayerValues:
        """The MLP's neurons, the input of its down projection (after the activation and the gate product): ``(batch, seq, d_mlp)``."""
        return self._values["mlp_neurons"]

    @property
    def router_logits(self) -> LayerValues:
        """A mixture of experts' router logits: ``(batch, seq, n_experts)``."""
        return self._values["router_logits"]

    @property
    def expert_indices(self) -> LayerValues:
        """The experts each token is routed to: ``(batch, seq, k)`` (long)."""
        return self._values["expert_indices"]

    @property
    def expert_weights(self) -> LayerValues:
        """The routing weights of those experts: ``(batch, seq, k)``."""
        return self._values["expert_weights"]

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
    def mixer_states(self) -> MixerStates:
        """The recurrent state layer ``i``'s state-space or linear-attention mixer leaves after the forward
        (what generation continues from), in the mixer's own shape, batch first. Read-only.

        Unavailable on softmax-attention layers (their state is ``keys[i]``/``values[i]``), with the reason.
        """
        return self._states_view

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
