"""Ray Job entrypoint for `mrcnn demo` (same flags): the laptop demo, end to end, on a cluster.

    mrcnn submit demo --out /tmp/mrcnn-demo --minutes 8 --address http://127.0.0.1:8265 --follow
"""

import sys

from pipelines.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("demo", sys.argv[1:]))
