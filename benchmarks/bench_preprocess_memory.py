"""Preprocessing as the dataset grows: throughput and peak memory at 1x, 4x and 16x the images.

    python benchmarks/bench_preprocess_memory.py                # 600, 2400, 9600 COCO JPEGs
    python benchmarks/bench_preprocess_memory.py --base 120 --scales 1 4

Each size runs `mrcnn preprocess`'s function (`pipelines.preprocess.preprocess_coco`, Ray Data, 2 CPUs)
in a fresh Python process with its own local Ray instance, on coco_mini's 6 real JPEGs repeated
(every image entry repeated under new ids, pointing at the same files: real decoding work, no extra
disk). This script samples, every 0.2 s, the proportional set size (PSS: shared pages such as Ray's
object store divided among the processes that map them, so nothing is counted twice) of that
process and all its descendants (Ray's GCS, raylet, workers) from /proc, and reports the peak. The
row "after start-up" is the same measurement with Ray started and the workers warmed up on 6 images,
before the timed run: the difference is what the data costs. Flat means the peak does not grow with
the number of images beyond the json's own size (which is read once, by the driver).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COCO_MINI = ROOT / "tests" / "data" / "coco_mini"


def _children(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def _pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_child(num_images: int, object_store_mb: int | None) -> None:
    """In the measured process: start Ray, warm up, signal, preprocess, print a json line."""
    from pipelines.common.session import ray_session
    from pipelines.preprocess import preprocess_coco

    work = Path(tempfile.mkdtemp(prefix="bench_mem_"))
    data = json.loads((COCO_MINI / "annotations.json").read_text())
    repeat = max(1, num_images // len(data["images"]))
    images, annotations = [], []
    for copy in range(repeat):
        images += [image | {"id": copy * 10**7 + image["id"]} for image in data["images"]]
        annotations += [ann | {"id": copy * 10**8 + ann["id"], "image_id": copy * 10**7 + ann["image_id"]} for ann in data["annotations"]]
    annotations_path = work / "annotations.json"
    annotations_path.write_text(json.dumps(data | {"images": images, "annotations": annotations}))
    with ray_session(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     object_store_memory=object_store_mb * 2**20 if object_store_mb else None):
        preprocess_coco(annotations=COCO_MINI / "annotations.json", images=COCO_MINI / "images", out=work / "warm",
                        split="val", num_shards=2, batch_size=1, progress=False)
        print("READY", flush=True)
        sys.stdin.readline()  # the parent has taken the after-start-up sample
        summary = preprocess_coco(annotations=annotations_path, images=COCO_MINI / "images", out=work / "out", split="train", progress=False)
        print(json.dumps({"images": summary.num_images, "rows": summary.num_rows, "seconds": summary.seconds,
                          "json_mb": annotations_path.stat().st_size / 2**20}), flush=True)


def measure(num_images: int, object_store_mb: int | None) -> dict:
    command = [sys.executable, __file__, "--child", str(num_images)]
    if object_store_mb:
        command += ["--object-store-mb", str(object_store_mb)]
    process = subprocess.Popen(command, cwd=ROOT, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    peak = {"value": 0.0, "driver": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["value"] = max(peak["value"], sum(_pss_mb(pid) for pid in _children(process.pid)))
            peak["driver"] = max(peak["driver"], _pss_mb(process.pid))
            time.sleep(0.2)

    def next_line(prefix: str) -> str:  # Ray may print to stdout too: skip its lines
        for line in process.stdout:
            if line.startswith(prefix):
                return line
        raise RuntimeError(f"the measured process exited (code {process.wait()}) before printing {prefix!r}")

    next_line("READY")
    time.sleep(1.0)
    idle = sum(_pss_mb(pid) for pid in _children(process.pid))
    idle_driver = _pss_mb(process.pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    process.stdin.write("go\n")
    process.stdin.flush()
    result = json.loads(next_line("{"))
    stop.set()
    sampler.join()
    process.stdout.read()
    process.wait(timeout=120)
    return {**result, "idle_mb": idle, "peak_mb": peak["value"], "idle_driver_mb": idle_driver, "peak_driver_mb": peak["driver"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=600, help="images at 1x (a multiple of 6)")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--object-store-mb", type=int, default=None,
                        help="cap Ray's object store (default: Ray's, 30%% of the machine's memory)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.object_store_mb)
        return
    print("| scale | images | json MB | seconds | images/s | PSS after start-up MB | peak PSS MB | peak - start-up MB | of which driver MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scale in args.scales:
        r = measure(args.base * scale, args.object_store_mb)
        print(f"| {scale}x | {r['images']} | {r['json_mb']:.1f} | {r['seconds']:.1f} | {r['images'] / r['seconds']:.0f} | "
              f"{r['idle_mb']:.0f} | {r['peak_mb']:.0f} | {r['peak_mb'] - r['idle_mb']:.0f} | "
              f"{r['peak_driver_mb'] - r['idle_driver_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
