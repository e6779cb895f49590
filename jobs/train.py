"""Ray Job entrypoint: `ray job submit --working-dir . -- python -m jobs.train [ARGS]` (same flags as `mrcnn train`)."""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
