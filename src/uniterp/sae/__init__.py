"""Sparse autoencoders and transcoders: plain torch modules, loaded from SAELens, sparsify and
dictionary_learning folders (or the Hub), with no dependency on those packages.

Example::

    >>> from uniterp.sae import load_sae, fvu, l0
    >>> sae = load_sae("saes/blocks.8.hook_resid_pre")    # format detected from the files
    >>> sae.hook_name, sae.architecture, sae.d_in, sae.d_sae
    ('blocks.8.hook_resid_pre', 'jumprelu', 768, 24576)
    >>> latents = sae.encode(acts)                        # (..., d_in) -> (..., d_sae)
    >>> fvu(acts, sae.decode(latents, x=acts)), l0(latents)
    >>> out = sae.reconstruct_with_error(latents, acts)   # == acts bit for bit while latents are unedited

Hook names are kept exactly as each format wrote them; mapping them to a model's
standardized sites happens when an SAE is attached to a model.
"""

from ._architectures import ARCHITECTURES as ARCHITECTURES
from ._architectures import tensor_shapes as tensor_shapes
from ._base import NORMALIZATIONS as NORMALIZATIONS
from ._base import SAEMetadata as SAEMetadata
from ._base import SparseAutoencoder as SparseAutoencoder
from ._load import FORMATS as FORMATS
from ._load import detect_format as detect_format
from ._load import load_sae as load_sae
from ._load import load_saes as load_saes
from ._load import save_sae as save_sae
from ._metrics import SAEMetrics as SAEMetrics
from ._metrics import evaluate_sae as evaluate_sae
from ._metrics import explained_variance as explained_variance
from ._metrics import fvu as fvu
from ._metrics import l0 as l0
from ._transcoder import Transcoder as Transcoder

__all__ = [
    "ARCHITECTURES",
    "FORMATS",
    "NORMALIZATIONS",
    "SAEMetadata",
    "SAEMetrics",
    "SparseAutoencoder",
    "Transcoder",
    "detect_format",
    "evaluate_sae",
    "explained_variance",
    "fvu",
    "l0",
    "load_sae",
    "load_saes",
    "save_sae",
    "tensor_shapes",
]
