"""``python -m sparsellm``: the ``sparsellm`` command line (see cli.py)."""
import sys

from sparsellm.cli import main

sys.exit(main())
