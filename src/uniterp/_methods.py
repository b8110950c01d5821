"""Methods every `StandardizedTransformer` has on top of its values (a mixin; see ``_model.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ._interventions import skip_layer_range, steer_layers
from ._readout import project

if TYPE_CHECKING:
    from ._check import CheckResult
    from ._support import SupportReport

__all__ = ["StandardMethods"]


class StandardMethods:
    """Mixin: the lens readout, steering, skipping, ``check()``, ``support()`` and the repr."""

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
        *,
        prompt_positions: int | Sequence[int] | None = None,
    ) -> None:
        """Add ``factor * steering_vector`` to ``layers_output`` of the given layers.

        Call inside a trace. The vector is cast to each layer's dtype and device.

        Example::

            >>> with model.trace("I think that"):
            ...     model.steer([3, 4], direction, factor=4.0, token_positions=-1)
            ...     probs = model.next_token_probs.save()
            >>> with model.trace(["The cat", "A dog sat"]):
            ...     model.steer(2, direction, prompt_positions=0)   # each prompt's first token

        Args:
            layers: One layer index or several (any order; applied in forward order).
            steering_vector: ``(hidden,)``, or ``(n_positions, hidden)`` matching
                ``token_positions``.
            factor: Scale of the added vector.
            token_positions: Columns of the (left-padded) batch to steer, negative
                from the end (``-1`` is every prompt's last token); they count
                padded columns, so a non-negative column lands on different tokens
                of prompts of different lengths. Default: all columns.
            batch_index: Batch rows to steer (default: all).
            prompt_positions: Instead of ``token_positions``: positions within
                each prompt's own tokens (negative from its end, non-negative
                from its first token), as every uniterp tool counts them; a
                position outside a prompt raises `InputError`. Local runs only.

        Raises:
            ShapeError: The vector's last dimension is not ``hidden_size``, or a
                2-D vector's rows do not match ``token_positions``.
            LayerIndexError: A layer index is out of range.
        """
        steer_layers(self, layers, steering_vector, factor, token_positions, batch_index, prompt_positions)

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

    def support(self, *, weights: bool = False) -> SupportReport:
        """Which standardized values this model offers, on which layers, and why not.

        Example::

            >>> print(model.support())
            llama: 16 layers, block layout 'sequential'
              token_embeddings   available
              layers_input       available on every layer
              ...
            >>> model.support(weights=True)["W_Q"].layers      # weights in standard shapes too

        Args:
            weights: Also list the weights in standard shapes (``W_Q`` ... ``W_U``) and
                why any is unavailable; this loads the weights.
        """
        from ._support import support_report

        report = support_report(self)
        if weights:
            from ._weight_views import weight_support

            report.values += weight_support(self)
        return report

    def check(self, prompts: Sequence[str] | None = None, *, internals: bool = False) -> CheckResult:
        """Run the numerical checks on a short real input; see `CheckResult`.

        Example::

            >>> result = model.check()
            >>> result.passed
            True
            >>> model.check(internals=True).passed     # heads, neurons and decompositions too

        Args:
            prompts: Prompts to check with (default: two built-in prompts of
                different lengths, left-padded).
            internals: Also check the values inside the blocks against the weights
                (``head_outputs · W_O + b_O`` and ``mlp_neurons · W_out + b_out`` equal
                the projections' outputs) and that the residual decomposes into its
                parts. Loads the weights; reading the attention kernel's inputs
                instruments the attention forwards.
        """
        from ._check import run_checks

        result = run_checks(self, prompts)
        if internals:
            from ._cache_checks import check_internals

            result.items += check_internals(self, prompts)
        return result

    def __repr__(self) -> str:
        from ._support import describe_tree

        return describe_tree(self)
