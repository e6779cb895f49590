"""``mrcnn submit`` and ``mrcnn jobs``: run ``python -m jobs.JOB`` on a Ray cluster through the Jobs API, and
list, inspect, follow or stop its jobs.

Their ``--address`` is the cluster's Jobs API (``http://HEAD:8265``), not the Ray address of the other verbs.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "submit", help="run a job (python -m jobs.JOB ARGS) on a Ray cluster through the Jobs API",
        description="Submit `python -m jobs.JOB ARGS` with this project as the job's working_dir. Submit's options "
        "may come before or after JOB; arguments after `--` go to the job untouched (e.g. the job's own --address). "
        "The last line printed is JSON: the job id and its status (final with --follow).",
    )  # fmt: skip
    p.add_argument("job", metavar="JOB", help="preprocess, train, evaluate, segment, serve, export, ablate or demo (the modules of jobs/)")
    p.add_argument("job_args", nargs=argparse.REMAINDER, metavar="ARGS", help="the job's arguments, as on its command line")
    _add_submit_options(p)
    p.set_defaults(func=cmd_submit)

    p = subparsers.add_parser("jobs", help="list, inspect, follow or stop the jobs of a Ray cluster")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text in (("list", "every job, newest first"), ("status", "one job's status"),
                            ("logs", "one job's logs"), ("stop", "stop a job")):  # fmt: skip
        a = actions.add_parser(name, help=help_text)
        if name != "list":
            a.add_argument("job_id", metavar="JOB_ID")
        a.add_argument("--address", metavar="URL", help="http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)")
        if name in ("list", "status"):
            a.add_argument("--json", action="store_true", help="print JSON instead of text")
        if name == "logs":
            a.add_argument("--follow", action="store_true", help="stream until the job ends")
        if name == "stop":
            a.add_argument("--wait", action="store_true", help="return once the job has ended")
        a.set_defaults(func=cmd_jobs)


def _add_submit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", metavar="URL", help="the cluster's dashboard / Jobs API, http://HEAD:8265 "
                   "(default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends; exit 1 unless it succeeded")
    p.add_argument("--env", action="append", default=None, metavar="KEY[=VALUE]",
                   help="environment variable for the job (KEY alone: this machine's value); repeatable")
    p.add_argument("--working-dir", metavar="DIR", help="the code to upload (default: this project)")


def cmd_submit(args: argparse.Namespace) -> int:
    from pipelines.submit import PROJECT_DIR, print_outcome, submit

    # Submit's own options may also come after JOB; what follows a `--` goes to the job untouched.
    job_args = list(args.job_args)
    verbatim: list[str] = []
    if "--" in job_args:
        cut = job_args.index("--")
        job_args, verbatim = job_args[:cut], job_args[cut + 1 :]
    late = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_submit_options(late)
    options, job_args = late.parse_known_args(job_args)
    outcome = submit(
        args.job, [*job_args, *verbatim], address=options.address or args.address,
        env=[*(args.env or []), *(options.env or [])], follow=args.follow or options.follow,
        working_dir=options.working_dir or args.working_dir or PROJECT_DIR,
    )  # fmt: skip
    print_outcome(outcome)
    if outcome.status in ("FAILED", "STOPPED"):
        print(f"mrcnn: error: job {outcome.job_id} {outcome.status}: {outcome.message}".rstrip(": "), file=sys.stderr)
        return 1
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from pipelines import submit as jobs

    if args.action == "list":
        rows = jobs.list_jobs(args.address)
        print(json.dumps(rows) if args.json else jobs.format_jobs_table(rows))
        return 0
    if args.action == "status":
        info = jobs.job_info(args.address, args.job_id)
        print(json.dumps(info) if args.json else f"{info['job_id']} {info['status']} {info['message']}".rstrip())
        return 0
    if args.action == "logs":
        outcome = jobs.job_logs(args.address, args.job_id, follow=args.follow)
        if args.follow:
            jobs.print_outcome(outcome, sys.stderr)
        return 1 if args.follow and outcome.status in ("FAILED", "STOPPED") else 0
    outcome = jobs.stop_job(args.address, args.job_id, wait=args.wait)
    jobs.print_outcome(outcome)
    return 0
