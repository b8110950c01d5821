"""uniterp: one standardized interface over every HuggingFace causal LM, on nnsight 0.8.

Example::

    >>> from uniterp import StandardizedTransformer
    >>> model = StandardizedTransformer("gpt2")
    >>> with model.trace("The Eiffel Tower is in the city of"):
    ...     h = model.layers_output[5].save()
"""

from ._check import CheckItem as CheckItem
from ._check import CheckResult as CheckResult
from ._errors import ArchitectureError as ArchitectureError
from ._errors import CheckFailedError as CheckFailedError
from ._errors import InputError as InputError
from ._errors import LayerIndexError as LayerIndexError
from ._errors import OutsideTraceError as OutsideTraceError
from ._errors import ShapeError as ShapeError
from ._errors import UnavailableError as UnavailableError
from ._errors import UniterpError as UniterpError
from ._families import get_spec as get_spec
from ._families import register_spec as register_spec
from ._families import registered_model_types as registered_model_types
from ._model import StandardizedTransformer as StandardizedTransformer
from ._spec import ArchitectureSpec as ArchitectureSpec
from ._spec import BlockLayout as BlockLayout

__version__ = "0.1.0"

__all__ = [
    "ArchitectureError",
    "ArchitectureSpec",
    "BlockLayout",
    "CheckFailedError",
    "CheckItem",
    "CheckResult",
    "InputError",
    "LayerIndexError",
    "OutsideTraceError",
    "ShapeError",
    "StandardizedTransformer",
    "UnavailableError",
    "UniterpError",
    "get_spec",
    "register_spec",
    "registered_model_types",
]
