"""Ray Job entrypoint: `ray job submit --working-dir . -- python -m jobs.serve --model URI [--detach] [ARGS]`
(same flags as `mrcnn serve`; inside a job RAY_ADDRESS names the cluster, and --detach leaves the
application running after the job ends)."""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
