"""``mrcnn demo``: end to end on the embedded default (data, train, evaluate, segment) in one folder."""

from __future__ import annotations

import argparse
import json

from pipelines.cli.options import add_cluster_options


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="end to end on the embedded default: data, train, evaluate, segment")
    # --out as every verb names its output folder; --workdir is the older name. args.workdir either way.
    p.add_argument("--out", "--workdir", dest="workdir", default="mrcnn-demo", metavar="DIR",
                   help="everything goes under this folder (default mrcnn-demo)")  # fmt: skip
    p.add_argument("--task", choices=["instances", "keypoints"], default="instances",
                   help="instances: the synthetic shapes, boxes + masks (default); keypoints: the synthetic houses, "
                        "boxes + 5 corner keypoints, OKS AP on a holdout from an unseen seed")  # fmt: skip
    p.add_argument("--iters", type=int, default=None,
                   help="training steps (default: 250 for instances, 200 for keypoints; with --minutes alone: none)")
    p.add_argument("--minutes", type=float, default=None,
                   help="a training time budget in minutes instead (with --iters too: whichever ends first)")
    p.add_argument("--train", type=int, default=400, help="synthetic training images")
    p.add_argument("--val", type=int, default=100, help="synthetic validation images")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    add_cluster_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)


def _iters(args: argparse.Namespace, default: int) -> int | None:
    """The step budget: --iters, else the task's default, else none when only --minutes is given."""
    if args.iters is not None:
        if args.iters < 1:
            raise SystemExit("mrcnn demo: --iters must be >= 1")
        return args.iters
    return None if args.minutes else default


def cmd_demo(args: argparse.Namespace) -> int:
    if args.minutes is not None and args.minutes <= 0:
        raise SystemExit("mrcnn demo: --minutes must be > 0")
    if args.task == "keypoints":
        from pipelines import demo_keypoints as demo

        run = demo.run_keypoint_demo
    else:
        from pipelines import demo

        run = demo.run_demo
    summary = run(
        workdir=args.workdir, iters=_iters(args, demo.DEMO_ITERS), minutes=args.minutes, seed=args.seed,
        num_train=args.train, num_val=args.val, workers=args.workers, ray_address=args.address,
    )  # fmt: skip
    print(json.dumps(summary))
    return 0
