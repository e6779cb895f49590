"""Ray Job entrypoint for `mrcnn preprocess` (same flags; `--config jobs/configs/preprocess.yaml` gives them from a file).

    mrcnn submit preprocess --config jobs/configs/preprocess.yaml --address http://127.0.0.1:8265 --follow
"""

import sys

from pipelines.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("preprocess", sys.argv[1:]))
