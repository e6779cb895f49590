"""Ray Job entrypoint: `ray job submit --working-dir . -- python -m jobs.demo [ARGS]` (same flags as `mrcnn demo`)."""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
