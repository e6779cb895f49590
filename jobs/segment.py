"""Ray Job entrypoint: `ray job submit --working-dir . -- python -m jobs.segment [ARGS]` (same flags as `mrcnn segment`)."""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["segment", *sys.argv[1:]]))
