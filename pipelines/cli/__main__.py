"""``python -m pipelines.cli ARGS`` is ``mrcnn ARGS``."""

import sys

from pipelines.cli import main

sys.exit(main())
