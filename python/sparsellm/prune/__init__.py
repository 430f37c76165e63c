"""One-shot pruning of linear weights to unstructured (or N:M) sparsity.

Per weight W [out, in]: ``magnitude_prune``, ``wanda_prune``, ``sparsegpt_prune`` or
``prune_weight(W, method, ...)``, each returning ``PruneResult(weight, mask)``; the
calibration accumulators ``ColumnNormAccumulator`` and ``HessianAccumulator`` collect
what Wanda and SparseGPT need. Per model: ``prune_model`` prunes a Hugging Face
Llama-family or OPT model layer by layer, with uniform, OWL or mapped per-layer
sparsity; ``prune_layer_by_layer`` does the same over a ``StreamedModel`` that reads one
decoder layer at a time from the weight files. Computation is in float32 on the weight's
device. See docs/pruning.md.
"""

from .calibration import default_calibration_ids, load_calibration_ids, sample_sequences
from .layerwise import StreamedModel
from .magnitude import magnitude_prune
from .model import (
    PruneReport, ResidentLayers, TensorReport, decoder_layers, layer_linears, prune_layer_by_layer, prune_model,
)
from .owl import load_sparsity_map, outlier_ratio, owl_layer_sparsity
from .selection import PruneResult
from .sparsegpt import sparsegpt_prune
from .statistics import ColumnNormAccumulator, HessianAccumulator
from .wanda import wanda_prune, wanda_scores
from .weight import METHODS, prune_weight, statistics_for

__all__ = [
    "METHODS",
    "ColumnNormAccumulator",
    "HessianAccumulator",
    "PruneReport",
    "PruneResult",
    "ResidentLayers",
    "StreamedModel",
    "TensorReport",
    "decoder_layers",
    "default_calibration_ids",
    "layer_linears",
    "load_calibration_ids",
    "load_sparsity_map",
    "magnitude_prune",
    "outlier_ratio",
    "owl_layer_sparsity",
    "prune_layer_by_layer",
    "prune_model",
    "prune_weight",
    "sample_sequences",
    "sparsegpt_prune",
    "statistics_for",
    "wanda_prune",
    "wanda_scores",
]
