"""Ray Job entrypoint: `mrcnn submit evaluate --model URI --data s3://.../val --out s3://.../eval [--gpu]`
(same flags as `mrcnn evaluate`): COCO AP of a model on a whole split, predicted on the cluster."""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
