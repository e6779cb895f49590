"""Ray Job entrypoint for `mrcnn export` (same flags; `--config jobs/configs/export.yaml` gives them from a file):
a registered model to an ONNX or TorchScript file on shared storage, checked against PyTorch before it is written.

    mrcnn submit export --config jobs/configs/export.yaml --model models:/coco-r50-fpn@best --address http://127.0.0.1:8265
"""

import sys

from pipelines.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("export", sys.argv[1:]))
