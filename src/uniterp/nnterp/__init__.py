"""nnterp's module paths and argument names, on uniterp.

Code written for nnterp runs after changing its import root from ``nnterp`` to
``uniterp.nnterp``::

    >>> from uniterp.nnterp import StandardizedTransformer
    >>> from uniterp.nnterp.interventions import logit_lens, patchscope_lens, TargetPrompt
    >>> from uniterp.nnterp.prompt_utils import Prompt, run_prompts
    >>> model = StandardizedTransformer("gpt2")
    >>> probs = logit_lens(model, ["The capital of France is"])       # (1, n_layers, vocab)

Every name is a thin wrapper over uniterp's tools, so values are uniterp's:
validated on every layer, exact or refused. What nnterp has and uniterp does
not (renaming dictionaries, TransformerLens loading, plain nnsight models in
the helpers) raises `uniterp.UnavailableError` naming the replacement. The
list is in the documentation ("Migrating from nnterp").

Modules: `uniterp.nnterp.interventions`, `uniterp.nnterp.nnsight_utils`,
`uniterp.nnterp.prompt_utils`, `uniterp.nnterp.display`,
`uniterp.nnterp.rename_utils`.
"""

from __future__ import annotations

from .nnsight_utils import ModuleAccessor as ModuleAccessor
from .nnsight_utils import load_model as load_model
from .rename_utils import get_rename_dict as get_rename_dict
from .standardized_transformer import StandardizedTransformer as StandardizedTransformer

__all__ = ["ModuleAccessor", "StandardizedTransformer", "get_rename_dict", "load_model"]
