"""Ray Job entrypoint: `ray job submit --working-dir . -- python -m jobs.preprocess [ARGS]` (same flags as `mrcnn preprocess`)."""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
