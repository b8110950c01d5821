"""uniterp: one standardized interface over every HuggingFace causal LM, on nnsight 0.8.

Example::

    >>> from uniterp import StandardizedTransformer
    >>> model = StandardizedTransformer("gpt2")
    >>> with model.trace("The Eiffel Tower is in the city of"):
    ...     h = model.layers_output[5].save()

The public names are imported on first use (PEP 562), so ``import uniterp``
and the ``uniterp`` command's help and argument errors do not pay for torch,
transformers and nnsight. Type checkers and documentation tools read the
explicit re-exports under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

#: Public name -> the module that defines it (imported on first access).
_EXPORTS: dict[str, str] = {
    "NamedValues": "._aliases",
    "resolve_name": "._aliases",
    "SiteRef": "._aliases",
    "Binding": "._binding",
    "CheckItem": "._check",
    "CheckResult": "._check",
    "ArchitectureError": "._errors",
    "CheckFailedError": "._errors",
    "InPlaceEditError": "._errors",
    "InputError": "._errors",
    "LayerIndexError": "._errors",
    "OrderError": "._errors",
    "OutsideTraceError": "._errors",
    "ShapeError": "._errors",
    "UnavailableError": "._errors",
    "UniterpError": "._errors",
    "get_spec": "._families",
    "lookup_spec": "._families",
    "register_spec": "._families",
    "registered_model_types": "._families",
    "Layout": "._layout",
    "Locator": "._layout",
    "StandardizedTransformer": "._model",
    "AttentionProbabilities": "._sites",
    "AttentionScores": "._sites",
    "LayerList": "._sites",
    "LayerValues": "._sites",
    "Sizes": "._sizes",
    "ArchitectureSpec": "._spec",
    "BlockLayout": "._spec",
    "ConfigSwitch": "._spec",
    "SupportReport": "._support",
    "ValueSupport": "._support",
    "collect_token_activations_batched": ".activations",
    "get_token_activations": ".activations",
    "load_token_activations": ".activations",
    "plot_logit_lens": ".display",
    "plot_topk_tokens": ".display",
    "prompts_to_df": ".display",
    "logit_lens": ".lens",
    "TopTokens": ".lens",
    "it_repeat_prompt": ".patchscope",
    "patch_object_attn_lens": ".patchscope",
    "patchscope_generate": ".patchscope",
    "patchscope_lens": ".patchscope",
    "repeat_prompt": ".patchscope",
    "TargetPrompt": ".patchscope",
    "TargetPromptBatch": ".patchscope",
    "get_first_tokens": ".prompts",
    "Prompt": ".prompts",
    "results_to_dataframe": ".prompts",
    "run_prompts": ".prompts",
    "generate_with_steering": ".steering",
    "steering_vector": ".steering",
}

if TYPE_CHECKING:
    from ._aliases import NamedValues as NamedValues
    from ._aliases import SiteRef as SiteRef
    from ._aliases import resolve_name as resolve_name
    from ._binding import Binding as Binding
    from ._check import CheckItem as CheckItem
    from ._check import CheckResult as CheckResult
    from ._errors import ArchitectureError as ArchitectureError
    from ._errors import CheckFailedError as CheckFailedError
    from ._errors import InPlaceEditError as InPlaceEditError
    from ._errors import InputError as InputError
    from ._errors import LayerIndexError as LayerIndexError
    from ._errors import OrderError as OrderError
    from ._errors import OutsideTraceError as OutsideTraceError
    from ._errors import ShapeError as ShapeError
    from ._errors import UnavailableError as UnavailableError
    from ._errors import UniterpError as UniterpError
    from ._families import get_spec as get_spec
    from ._families import lookup_spec as lookup_spec
    from ._families import register_spec as register_spec
    from ._families import registered_model_types as registered_model_types
    from ._layout import Layout as Layout
    from ._layout import Locator as Locator
    from ._model import StandardizedTransformer as StandardizedTransformer
    from ._sites import AttentionProbabilities as AttentionProbabilities
    from ._sites import AttentionScores as AttentionScores
    from ._sites import LayerList as LayerList
    from ._sites import LayerValues as LayerValues
    from ._sizes import Sizes as Sizes
    from ._spec import ArchitectureSpec as ArchitectureSpec
    from ._spec import BlockLayout as BlockLayout
    from ._spec import ConfigSwitch as ConfigSwitch
    from ._support import SupportReport as SupportReport
    from ._support import ValueSupport as ValueSupport
    from .activations import collect_token_activations_batched as collect_token_activations_batched
    from .activations import get_token_activations as get_token_activations
    from .activations import load_token_activations as load_token_activations
    from .display import plot_logit_lens as plot_logit_lens
    from .display import plot_topk_tokens as plot_topk_tokens
    from .display import prompts_to_df as prompts_to_df
    from .lens import TopTokens as TopTokens
    from .lens import logit_lens as logit_lens
    from .patchscope import TargetPrompt as TargetPrompt
    from .patchscope import TargetPromptBatch as TargetPromptBatch
    from .patchscope import it_repeat_prompt as it_repeat_prompt
    from .patchscope import patch_object_attn_lens as patch_object_attn_lens
    from .patchscope import patchscope_generate as patchscope_generate
    from .patchscope import patchscope_lens as patchscope_lens
    from .patchscope import repeat_prompt as repeat_prompt
    from .prompts import Prompt as Prompt
    from .prompts import get_first_tokens as get_first_tokens
    from .prompts import results_to_dataframe as results_to_dataframe
    from .prompts import run_prompts as run_prompts
    from .steering import generate_with_steering as generate_with_steering
    from .steering import steering_vector as steering_vector


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'uniterp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "ArchitectureError",
    "ArchitectureSpec",
    "AttentionProbabilities",
    "AttentionScores",
    "Binding",
    "BlockLayout",
    "CheckFailedError",
    "CheckItem",
    "CheckResult",
    "collect_token_activations_batched",
    "ConfigSwitch",
    "generate_with_steering",
    "get_first_tokens",
    "get_spec",
    "get_token_activations",
    "InPlaceEditError",
    "InputError",
    "it_repeat_prompt",
    "LayerIndexError",
    "LayerList",
    "LayerValues",
    "Layout",
    "load_token_activations",
    "Locator",
    "logit_lens",
    "lookup_spec",
    "NamedValues",
    "OrderError",
    "OutsideTraceError",
    "patch_object_attn_lens",
    "patchscope_generate",
    "patchscope_lens",
    "plot_logit_lens",
    "plot_topk_tokens",
    "Prompt",
    "prompts_to_df",
    "register_spec",
    "registered_model_types",
    "repeat_prompt",
    "resolve_name",
    "results_to_dataframe",
    "run_prompts",
    "ShapeError",
    "SiteRef",
    "Sizes",
    "StandardizedTransformer",
    "steering_vector",
    "SupportReport",
    "TargetPrompt",
    "TargetPromptBatch",
    "TopTokens",
    "UnavailableError",
    "UniterpError",
    "ValueSupport",
]
