"""Where the tests find the real trained weights: ``../shared/models`` beside the
repository, or the folder named by ``SPARSELLM_TEST_MODELS``."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

MODELS = Path(os.environ.get("SPARSELLM_TEST_MODELS")
              or Path(__file__).resolve().parents[2] / ".." / "shared" / "models")
STORIES260K = MODELS / "stories260K" / "stories260K.bin"
needs_stories260k = pytest.mark.skipif(
    not STORIES260K.is_file(),
    reason=f"stories260K checkpoint not found at {STORIES260K} (../shared/models, or set SPARSELLM_TEST_MODELS)")
