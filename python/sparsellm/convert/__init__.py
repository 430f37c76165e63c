"""Checkpoint conversion: importers of other formats and the converter to sparsellm checkpoints."""
