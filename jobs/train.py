"""Ray Job entrypoint for `mrcnn train` (same flags; `--config` takes a run config: configs/*.yaml, jobs/configs/train.yaml).

    mrcnn submit train --config configs/coco_r50_fpn_1x.yaml --address http://127.0.0.1:8265 --follow
"""

import sys

from pipelines.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("train", sys.argv[1:]))
