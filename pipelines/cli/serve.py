"""``mrcnn serve``: online segmentation, a Ray Serve HTTP endpoint and a web page."""

from __future__ import annotations

import argparse
import os

from pipelines.cli.options import add_cluster_options, add_model_options, add_tracking_options, check_model_reference


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="online segmentation: a Ray Serve HTTP endpoint and a web page")
    add_model_options(p, score_help="one global threshold for requests that give none, instead of the per-class "
                      "thresholds stored with the model (default: those, and 0.5 for classes without one)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy binds (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    scaling = p.add_mutually_exclusive_group()
    scaling.add_argument("--replicas", type=int, metavar="N", help="fixed number of replicas (default 1)")
    scaling.add_argument("--autoscale", metavar="MIN:MAX", help="scale replicas between MIN and MAX on load")
    p.add_argument("--gpu", action="store_true", help="one GPU per replica")
    p.add_argument("--cpus-per-replica", type=float, metavar="C", help="CPUs (torch threads) per replica (default 1)")
    p.add_argument("--token", help="bearer token required on every route but /healthz (default: $MRCNN_SERVE_TOKEN)")
    p.add_argument("--max-body-bytes", type=int, metavar="N", help="larger request bodies get 413 (default 20 MiB)")
    p.add_argument("--max-pixels", type=int, metavar="N", help="larger decoded images get 422 (default 25M)")
    p.add_argument("--max-batch-size", type=int, metavar="B", help="images per forward pass; 1 turns batching off (default 8)")
    p.add_argument("--batch-wait-ms", type=float, metavar="MS", help="how long a batch waits to fill (default 50)")
    p.add_argument("--max-ongoing-requests", type=int, metavar="N", help="requests one replica holds at once (default 16)")
    p.add_argument("--max-queued-requests", type=int, metavar="N", help="waiting requests before 503 + Retry-After (default 64)")
    add_tracking_options(p)
    add_cluster_options(p)
    p.add_argument("--name", default="mrcnn", help="Serve application name (default mrcnn)")
    p.add_argument("--detach", action="store_true", help="deploy to the cluster and return (needs --address)")
    p.add_argument("--wait-s", type=float, help=argparse.SUPPRESS)  # test hook: serve this long, then stop
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from pipelines.serve import TOKEN_ENV, ServeConfig, run_server

    options = {
        "model": args.model, "tracking_uri": args.tracking_uri, "gpu": args.gpu, "replicas": args.replicas,
        "autoscale": args.autoscale, "cpus_per_replica": args.cpus_per_replica, "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": None if args.batch_wait_ms is None else args.batch_wait_ms / 1000.0,
        "max_ongoing_requests": args.max_ongoing_requests, "max_queued_requests": args.max_queued_requests,
        "token": args.token or os.environ.get(TOKEN_ENV) or None, "max_body_bytes": args.max_body_bytes,
        "max_pixels": args.max_pixels, "score_threshold": args.score_threshold,
    }  # fmt: skip
    if args.max_batch_size is not None and args.max_ongoing_requests is None:
        options["max_ongoing_requests"] = max(16, 2 * args.max_batch_size)
    config = ServeConfig.from_dict({k: v for k, v in options.items() if v is not None})
    if not (args.detach or args.address or os.environ.get("RAY_ADDRESS")):
        # A local Serve sees this machine's files and store: an unknown alias, version, run or file is one
        # line here, before Ray starts. (On a cluster the replicas resolve the model where they run.)
        check_model_reference(args.model, args.tracking_uri)
    run_server(config, host=args.host, port=args.port, app_name=args.name, ray_address=args.address,
               detach=args.detach, wait_s=args.wait_s)  # fmt: skip
    return 0
