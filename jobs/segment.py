"""Ray Job entrypoint for `mrcnn segment` (same flags; `--config jobs/configs/segment.yaml` gives them from a file).

    mrcnn submit segment --config jobs/configs/segment.yaml --address http://127.0.0.1:8265
"""

import sys

from pipelines.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("segment", sys.argv[1:]))
