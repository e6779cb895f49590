"""``mrcnn synth``: write a synthetic COCO-format dataset (shapes, or houses with keypoints)."""

from __future__ import annotations

import argparse

from pipelines.cli.errors import CLIError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("synth", help="write the synthetic COCO-format shapes (or keypoint houses) dataset")
    p.add_argument("out_dir", metavar="OUT", help="output folder: OUT/<split>/annotations.json and OUT/<split>/images/")
    p.add_argument("--train", type=int, default=200, help="training images (default 200)")
    p.add_argument("--val", type=int, default=50, help="validation images (default 50)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", choices=["default", "hard", "easy"], default="default",
                   help="hard: smaller shapes (5-30%% of the side), 2-6 per image, thin rings and stars; easy: the demo's "
                        "set, 1-3 large (25-60%%), mostly visible shapes on noise-free backgrounds (default: default)")
    p.add_argument("--task", choices=["instances", "keypoints"], default="instances",
                   help="keypoints: houses whose 5 corners are keypoints, COCO person-keypoint format (default: instances)")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    from mrcnn.data.synthetic import make_synthetic_coco

    if args.task == "keypoints":
        from mrcnn.data.synthetic_keypoints import make_synthetic_keypoints_coco

        if args.difficulty != "default":
            raise CLIError("synth --task keypoints draws houses; --difficulty applies to the shapes set only")
        info = make_synthetic_keypoints_coco(args.out_dir, num_train=args.train, num_val=args.val, size=args.size,
                                             seed=args.seed)  # fmt: skip
        for split in ("train", "val"):
            s = info[split]
            print(f"{split}: {s['num_images']} images, {s['num_annotations']} houses with 5 keypoints -> {s['annotations']}")
        return 0
    info = make_synthetic_coco(args.out_dir, num_train=args.train, num_val=args.val, size=args.size, seed=args.seed,
                               difficulty=args.difficulty)  # fmt: skip
    for split in ("train", "val"):
        s = info[split]
        print(f"{split}: {s['num_images']} images, {s['num_annotations']} instances -> {s['annotations']}")
    return 0
