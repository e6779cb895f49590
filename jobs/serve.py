"""Ray Job entrypoint for `mrcnn serve` (same flags; `--config jobs/configs/serve.yaml` gives them from a file).
Inside a job RAY_ADDRESS names the cluster, and --detach leaves the application running after the job ends.

    mrcnn submit serve --config jobs/configs/serve.yaml --env MRCNN_SERVE_TOKEN --address http://127.0.0.1:8265
"""

import sys

from pipelines.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("serve", sys.argv[1:]))
