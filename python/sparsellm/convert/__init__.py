"""Checkpoint conversion: importers of other formats and the converter to sparsellm checkpoints."""

from .checkpoint import FORMAT_VERSION, dense_weights, load_checkpoint, read_config
from .converter import convert, convert_random
from .encoding import TILED_CSL_MIN_SPARSITY
from .generated import write_generated
from .random_model import NAMED_CONFIGS

__all__ = [
    "FORMAT_VERSION",
    "NAMED_CONFIGS",
    "TILED_CSL_MIN_SPARSITY",
    "convert",
    "convert_random",
    "dense_weights",
    "load_checkpoint",
    "read_config",
    "write_generated",
]
