"""Ray Job entrypoint for `mrcnn ablate` (same flags; `--config jobs/configs/ablate.yaml` gives them from a file):
the paper's ablations, every variant trained on the cluster as an MLflow child run of one parent run.

    mrcnn submit ablate --config jobs/configs/ablate.yaml --address http://127.0.0.1:8265 --follow
"""

import sys

from pipelines.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("ablate", sys.argv[1:]))
