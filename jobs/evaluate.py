"""Ray Job entrypoint for `mrcnn evaluate` (same flags; `--config jobs/configs/evaluate.yaml` gives them from a file):
COCO AP of a model URI on a whole split, predicted on the cluster.

    mrcnn submit evaluate --config jobs/configs/evaluate.yaml --model models:/coco-r50-fpn@best --address http://127.0.0.1:8265
"""

import sys

from pipelines.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("evaluate", sys.argv[1:]))
