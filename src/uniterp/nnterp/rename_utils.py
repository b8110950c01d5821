"""nnterp's renaming vocabulary, refused with what to use in uniterp instead.

nnterp maps each architecture onto llama's module names with nnsight's
``rename=`` (a `RenameConfig`, `get_rename_dict`). uniterp describes an
architecture with one `uniterp.ArchitectureSpec` (paths to the embedding, the
blocks, the attention and MLP inside a block, the final norm, the unembedding)
and checks the layout of every layer at load. A `RenameConfig` can be built so
ported code imports, but using it raises `uniterp.UnavailableError` naming the
replacement.

Example::

    >>> from uniterp.nnterp.rename_utils import RenameConfig
    >>> StandardizedTransformer("my-model", rename_config=RenameConfig(layers_name="blocks"))
    Traceback (most recent call last):
    ...
    uniterp._errors.UnavailableError: uniterp.nnterp: 'rename_config' is unavailable: ...
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from .._errors import ArchitectureError
from ._compat import unavailable

__all__ = ["AttnProbFunction", "RenameConfig", "RenamingError", "get_rename_dict"]

#: nnterp's error for a model it cannot rename; uniterp raises `uniterp.ArchitectureError`.
RenamingError = ArchitectureError


class AttnProbFunction(ABC):
    """nnterp's hook for locating attention probabilities; uniterp locates them itself.

    uniterp finds the probabilities inside each attention forward by what they
    are (the softmax and the dropout after it) and verifies them; a subclass of
    this class is accepted in a `RenameConfig` only to be refused with that
    explanation.
    """

    @abstractmethod
    def get_attention_prob_source(self, attention_module: Any, return_module_source: bool = False) -> Any:
        """Where the probabilities are in ``attention_module``'s forward (nnterp's contract)."""

    def __call__(self, attention_module: Any, return_module_source: bool = False) -> Any:
        return self.get_attention_prob_source(attention_module, return_module_source)


@dataclass
class RenameConfig:
    """nnterp's module-name mapping; constructible, refused where it would be used.

    Attributes are nnterp's (``model_name``, ``layers_name``, ``attn_name``,
    ``mlp_name``, ``ln_final_name``, ``lm_head_name``, ``attn_prob_source``,
    ``ignore_mlp``, ``ignore_attn`` and the ``*_config_key`` overrides).
    Their uniterp equivalents are the fields of `uniterp.ArchitectureSpec`:
    ``layers`` (full path of the block list), ``attention`` and ``mlp``
    (relative to a block), ``final_norm``, ``lm_head``, ``embed_tokens``, and
    ``config_keys`` for the sizes.
    """

    attn_name: str | list[str] | None = None
    mlp_name: str | list[str] | None = None
    ln_final_name: str | list[str] | None = None
    lm_head_name: str | list[str] | None = None
    model_name: str | list[str] | None = None
    layers_name: str | list[str] | None = None
    attn_prob_source: AttnProbFunction | None = None
    ignore_mlp: bool | None = None
    ignore_attn: bool | None = None
    attn_head_config_key: str | list[str] | int | None = None
    hidden_size_config_key: str | list[str] | int | None = None
    vocab_size_config_key: str | list[str] | int | None = None


def get_rename_dict(rename_config: RenameConfig | None = None) -> dict[str, str]:
    """Refused: uniterp has no global alias dictionary for nnsight's ``rename=``.

    Raises:
        UnavailableError: Always, saying what to use instead.
    """
    raise unavailable(
        "get_rename_dict",
        "uniterp does not standardize through one alias dictionary passed to nnsight's rename=; it "
        "binds each model from its own layout, checked per layer",
        "wrap the model: uniterp.nnterp.StandardizedTransformer(name_or_hf_model) for the standard "
        "names inside traces, ModuleAccessor(hf_model) for the torch modules",
    )
