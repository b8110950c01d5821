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
    "MixerStates": "._mixer_states",
    "StandardizedTransformer": "._model",
    "SAELatents": "._sae_attach",
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
    "LayerWeights": "._weight_views",
    "expand_kv": "._weights",
    "ActivationStore": ".activation_store",
    "collect_activations": ".activation_store",
    "load_activations": ".activation_store",
    "collect_token_activations_batched": ".activations",
    "get_token_activations": ".activations",
    "load_token_activations": ".activations",
    "attribution_patching": ".attribution",
    "AttributionResult": ".attribution",
    "ActivationCache": ".cache",
    "run_with_cache": ".cache",
    "plot_logit_lens": ".display",
    "plot_topk_tokens": ".display",
    "prompts_to_df": ".display",
    "edge_attribution_patching": ".edges",
    "EdgeScores": ".edges",
    "GradientResult": ".grads",
    "gradients": ".grads",
    "integrated_gradients": ".grads",
    "IntegratedGradients": ".grads",
    "logit_lens": ".lens",
    "TopTokens": ".lens",
    "last_token_metric": ".metrics",
    "LastTokenMetric": ".metrics",
    "logit_diff": ".metrics",
    "patch_attention_outputs": ".patching",
    "patch_heads": ".patching",
    "patch_heads_by_position": ".patching",
    "patch_mlp_outputs": ".patching",
    "patch_residual": ".patching",
    "patch_sweep": ".patching",
    "PatchResult": ".patching",
    "it_repeat_prompt": ".patchscope",
    "patch_object_attn_lens": ".patchscope",
    "patchscope_generate": ".patchscope",
    "patchscope_lens": ".patchscope",
    "repeat_prompt": ".patchscope",
    "TargetPrompt": ".patchscope",
    "TargetPromptBatch": ".patchscope",
    "path_patch": ".path_patching",
    "get_first_tokens": ".prompts",
    "Prompt": ".prompts",
    "results_to_dataframe": ".prompts",
    "run_prompts": ".prompts",
    "load_sae": ".sae",
    "load_saes": ".sae",
    "save_sae": ".sae",
    "SparseAutoencoder": ".sae",
    "Transcoder": ".sae",
    "AttachReport": ".sae_tools",
    "generate_with_latent_steering": ".sae_tools",
    "latent_attribution": ".sae_tools",
    "LatentAttribution": ".sae_tools",
    "steer_latents": ".sae_tools",
    "top_latents": ".sae_tools",
    "TopLatents": ".sae_tools",
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
    from ._mixer_states import MixerStates as MixerStates
    from ._model import StandardizedTransformer as StandardizedTransformer
    from ._sae_attach import SAELatents as SAELatents
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
    from ._weight_views import LayerWeights as LayerWeights
    from ._weights import expand_kv as expand_kv
    from .activation_store import ActivationStore as ActivationStore
    from .activation_store import collect_activations as collect_activations
    from .activation_store import load_activations as load_activations
    from .activations import collect_token_activations_batched as collect_token_activations_batched
    from .activations import get_token_activations as get_token_activations
    from .activations import load_token_activations as load_token_activations
    from .attribution import AttributionResult as AttributionResult
    from .attribution import attribution_patching as attribution_patching
    from .cache import ActivationCache as ActivationCache
    from .cache import run_with_cache as run_with_cache
    from .display import plot_logit_lens as plot_logit_lens
    from .display import plot_topk_tokens as plot_topk_tokens
    from .display import prompts_to_df as prompts_to_df
    from .edges import EdgeScores as EdgeScores
    from .edges import edge_attribution_patching as edge_attribution_patching
    from .grads import GradientResult as GradientResult
    from .grads import IntegratedGradients as IntegratedGradients
    from .grads import gradients as gradients
    from .grads import integrated_gradients as integrated_gradients
    from .lens import TopTokens as TopTokens
    from .lens import logit_lens as logit_lens
    from .metrics import LastTokenMetric as LastTokenMetric
    from .metrics import last_token_metric as last_token_metric
    from .metrics import logit_diff as logit_diff
    from .patching import PatchResult as PatchResult
    from .patching import patch_attention_outputs as patch_attention_outputs
    from .patching import patch_heads as patch_heads
    from .patching import patch_heads_by_position as patch_heads_by_position
    from .patching import patch_mlp_outputs as patch_mlp_outputs
    from .patching import patch_residual as patch_residual
    from .patching import patch_sweep as patch_sweep
    from .patchscope import TargetPrompt as TargetPrompt
    from .patchscope import TargetPromptBatch as TargetPromptBatch
    from .patchscope import it_repeat_prompt as it_repeat_prompt
    from .patchscope import patch_object_attn_lens as patch_object_attn_lens
    from .patchscope import patchscope_generate as patchscope_generate
    from .patchscope import patchscope_lens as patchscope_lens
    from .patchscope import repeat_prompt as repeat_prompt
    from .path_patching import path_patch as path_patch
    from .prompts import Prompt as Prompt
    from .prompts import get_first_tokens as get_first_tokens
    from .prompts import results_to_dataframe as results_to_dataframe
    from .prompts import run_prompts as run_prompts
    from .sae import SparseAutoencoder as SparseAutoencoder
    from .sae import Transcoder as Transcoder
    from .sae import load_sae as load_sae
    from .sae import load_saes as load_saes
    from .sae import save_sae as save_sae
    from .sae_tools import AttachReport as AttachReport
    from .sae_tools import LatentAttribution as LatentAttribution
    from .sae_tools import TopLatents as TopLatents
    from .sae_tools import generate_with_latent_steering as generate_with_latent_steering
    from .sae_tools import latent_attribution as latent_attribution
    from .sae_tools import steer_latents as steer_latents
    from .sae_tools import top_latents as top_latents
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
    "ActivationCache",
    "ActivationStore",
    "ArchitectureError",
    "ArchitectureSpec",
    "AttachReport",
    "AttentionProbabilities",
    "AttentionScores",
    "attribution_patching",
    "AttributionResult",
    "Binding",
    "BlockLayout",
    "CheckFailedError",
    "CheckItem",
    "CheckResult",
    "collect_activations",
    "collect_token_activations_batched",
    "ConfigSwitch",
    "edge_attribution_patching",
    "EdgeScores",
    "expand_kv",
    "generate_with_latent_steering",
    "generate_with_steering",
    "get_first_tokens",
    "get_spec",
    "get_token_activations",
    "GradientResult",
    "gradients",
    "InPlaceEditError",
    "InputError",
    "integrated_gradients",
    "IntegratedGradients",
    "it_repeat_prompt",
    "last_token_metric",
    "LastTokenMetric",
    "latent_attribution",
    "LatentAttribution",
    "LayerIndexError",
    "LayerList",
    "LayerValues",
    "LayerWeights",
    "Layout",
    "load_activations",
    "load_sae",
    "load_saes",
    "load_token_activations",
    "Locator",
    "logit_diff",
    "logit_lens",
    "lookup_spec",
    "MixerStates",
    "NamedValues",
    "OrderError",
    "OutsideTraceError",
    "patch_attention_outputs",
    "patch_heads",
    "patch_heads_by_position",
    "patch_mlp_outputs",
    "patch_object_attn_lens",
    "patch_residual",
    "patch_sweep",
    "PatchResult",
    "patchscope_generate",
    "patchscope_lens",
    "path_patch",
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
    "run_with_cache",
    "SAELatents",
    "save_sae",
    "ShapeError",
    "SiteRef",
    "Sizes",
    "SparseAutoencoder",
    "StandardizedTransformer",
    "steer_latents",
    "steering_vector",
    "SupportReport",
    "TargetPrompt",
    "TargetPromptBatch",
    "top_latents",
    "TopLatents",
    "TopTokens",
    "Transcoder",
    "UnavailableError",
    "UniterpError",
    "ValueSupport",
]
