"""``mrcnn submit`` and ``mrcnn jobs``: run the ``jobs/`` entrypoints on a Ray cluster through the Jobs API.

A submitted job is ``python -m jobs.<JOB> ARGS`` run by the cluster's job supervisor, with this
project's folder as the job's ``working_dir``: Ray zips it (without the ``EXCLUDES`` below and what
``.gitignore`` lists), uploads it through the Jobs API, and unpacks it on every node that runs a part
of the job, so the driver and every Ray worker run the submitted version of the code. The cluster's
Python environment provides the dependencies (``cluster.yaml`` installs them).

The job's environment is the node's plus ``runtime_env.env_vars``:

- the variables of ``PASS_THROUGH_ENV`` that are set here (``MLFLOW_TRACKING_URI``, the NCCL and
  gloo interface settings, ...);
- every ``--env KEY=VALUE`` (or ``--env KEY``: this machine's value), which wins.

The client talks HTTP to the dashboard port (8265) of the head node, normally through an SSH tunnel
(``ray dashboard cluster.yaml``). With Ray's token authentication on (``RAY_AUTH_MODE=token``), the
client sends the token Ray finds in ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = [
    "EXCLUDES",
    "PASS_THROUGH_ENV",
    "TERMINAL_STATUSES",
    "JobOutcome",
    "SubmitError",
    "available_jobs",
    "build_entrypoint",
    "build_runtime_env",
    "connect",
    "follow_job",
    "job_info",
    "list_jobs",
    "parse_env",
    "stop_job",
    "submit",
]

PROJECT_DIR = Path(__file__).resolve().parents[1]

# Never uploaded with the code (gitignore syntax, relative to the project folder; a leading "/" anchors
# at its top). Ray also skips what .gitignore lists.
EXCLUDES = (
    ".git",
    "/.venv/",
    "**/__pycache__/",
    "*.pyc",
    ".pytest_cache/",
    "*.egg-info/",
    "/build/",
    "/dist/",
    "/data/",
    "/work/",
    "/runs/",
    "/mrcnn-demo/",
    "/ray_results/",
    "mlruns/",
    "mlartifacts/",
    "mlflow.db",
    "*.ckpt",
)

# Set on this machine, these reach the job: the tracking server, and the network interfaces NCCL (GPU
# all-reduce) and gloo (CPU all-reduce, rendezvous) should use on multi-homed nodes.
PASS_THROUGH_ENV = (
    "MLFLOW_TRACKING_URI",
    "NCCL_SOCKET_IFNAME",
    "GLOO_SOCKET_IFNAME",
    "NCCL_DEBUG",
    "NCCL_IB_DISABLE",
    "MRCNN_DEBUG",
)

TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
JOB_METADATA_KEY = "mrcnn_job"
GIT_COMMIT_ENV = "MRCNN_GIT_COMMIT"
CONNECT_TIMEOUT_S = 10.0
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SubmitError(ValueError):
    """A user-facing error of submit or jobs (the CLI prints it as one line)."""


@dataclass(frozen=True)
class JobOutcome:
    """A submitted job: its id, and its status when the submit call returned (final with ``follow``)."""

    job_id: str
    status: str
    message: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    def to_dict(self) -> dict[str, str]:
        return {"job_id": self.job_id, "status": self.status, "message": self.message}


# ----------------------------------------------------------------------------------------------
# What a job is made of


def available_jobs(root: str | os.PathLike = PROJECT_DIR) -> list[str]:
    """The entrypoints of ``root/jobs`` (``preprocess``, ``train``, ...), sorted."""
    folder = Path(root) / "jobs"
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def build_entrypoint(job: str, args: Sequence[str] = (), *, root: str | os.PathLike = PROJECT_DIR) -> str:
    """The shell command the cluster runs: ``python -m jobs.<job> <args, quoted>``.

    Raises:
        SubmitError: ``job`` is not one of ``root/jobs/*.py``.
    """
    known = available_jobs(root)
    if job not in known:
        raise SubmitError(f"unknown job {job!r}; known jobs: {', '.join(known)} (the modules of {Path(root) / 'jobs'})")
    return shlex.join(["python", "-m", f"jobs.{job}", *args])


def parse_env(pairs: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``KEY=VALUE`` pairs, or ``KEY`` alone for this machine's value of KEY.

    Raises:
        SubmitError: a bad name, or ``KEY`` alone when KEY is not set here.
    """
    environ = os.environ if environ is None else environ
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not _ENV_NAME.fullmatch(key):
            raise SubmitError(f"--env {pair!r}: expected KEY=VALUE or KEY (a variable name), e.g. NCCL_SOCKET_IFNAME=ens5")
        if not sep:
            if key not in environ:
                raise SubmitError(f"--env {key}: not set in this environment; give a value with --env {key}=VALUE")
            value = environ[key]
        env[key] = value
    return env


def _git_commit(root: Path) -> str:
    """``git rev-parse HEAD`` of ``root`` (``+dirty`` when there are uncommitted changes); '' without git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)  # fmt: skip
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def build_runtime_env(
    *,
    working_dir: str | os.PathLike = PROJECT_DIR,
    env: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    excludes: Sequence[str] = EXCLUDES,
) -> dict[str, Any]:
    """The job's ``runtime_env``: the project as ``working_dir`` and the environment variables.

    Args:
        working_dir: the folder to upload (the project).
        env: explicit variables (``--env``); they win over the pass-through ones.
        environ: where ``PASS_THROUGH_ENV`` is read (default ``os.environ``).
        excludes: gitignore-style patterns left out of the upload.
    """
    environ = os.environ if environ is None else environ
    env_vars = {key: environ[key] for key in PASS_THROUGH_ENV if environ.get(key)}
    env_vars.update(env or {})
    return {"working_dir": str(Path(working_dir).resolve()), "excludes": list(excludes), "env_vars": env_vars}


# ----------------------------------------------------------------------------------------------
# The Jobs API


def _normalise_address(address: str | None) -> str:
    address = (address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or "").strip()
    if not address or address == "auto":
        raise SubmitError(
            "no cluster address: give --address http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS); "
            "`ray dashboard cluster.yaml` tunnels a launched cluster's to http://127.0.0.1:8265"
        )
    if address.startswith("ray://"):
        raise SubmitError(f"--address {address}: that is a Ray Client address; jobs go to the dashboard's, e.g. http://HEAD:8265")
    if "://" not in address:
        address = f"http://{address}"
    return address.rstrip("/")


def _check_reachable(address: str) -> None:
    """Fail fast, with one clear line, when nothing answers at ``address`` (the Jobs API has no timeout)."""
    parsed = urllib.parse.urlsplit(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SubmitError(f"--address {address}: expected http://HOST:PORT (the dashboard, port 8265 by default)")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise SubmitError(
            f"cannot reach the Ray Jobs API at {address} ({reason}); is the cluster up, and the dashboard "
            "tunnelled (`ray dashboard cluster.yaml`)?"
        ) from None


def connect(address: str | None):
    """A ``JobSubmissionClient`` for the dashboard at ``address`` (default ``RAY_API_SERVER_ADDRESS``/``RAY_ADDRESS``).

    Raises:
        SubmitError: no address, nothing answering there, or the token is missing or wrong.
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = _normalise_address(address)
    _check_reachable(address)
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as exc:
        raise SubmitError(f"{address}: {_auth_hint(exc)}") from None
    except (ConnectionError, RuntimeError) as exc:
        raise SubmitError(f"{address} does not answer as a Ray Jobs API: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _auth_hint(exc: BaseException) -> str:
    return (
        f"{_first_line(exc)} (the cluster uses Ray token authentication: set RAY_AUTH_MODE=token here, "
        "with the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN_PATH)"
    )


def _call(what: str, function, *args):
    """Run one Jobs API call; its errors become one-line ``SubmitError``s."""
    from ray.exceptions import AuthenticationError

    try:
        return function(*args)
    except AuthenticationError as exc:
        raise SubmitError(f"{what}: {_auth_hint(exc)}") from None
    except RuntimeError as exc:
        text = str(exc)
        if "404" in text or "does not exist" in text:
            raise SubmitError(f"{what}: no such job") from None
        raise SubmitError(f"{what}: {_first_line(exc)}") from None


def _loopback(uri: str) -> bool:
    host = urllib.parse.urlsplit(uri).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def submit(
    job: str,
    args: Sequence[str] = (),
    *,
    address: str | None = None,
    env: Iterable[str] = (),
    working_dir: str | os.PathLike = PROJECT_DIR,
    follow: bool = False,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> JobOutcome:
    """Submit ``python -m jobs.<job> args`` to the cluster at ``address``.

    Args:
        job: a module of ``jobs/`` (``preprocess``, ``train``, ``evaluate``, ``segment``, ``serve``, ``demo``).
        args: its arguments, as on its command line.
        address: the dashboard / Jobs API, ``http://HEAD:8265``.
        env: ``KEY=VALUE`` (or ``KEY``) for the job's environment.
        working_dir: the folder uploaded as the job's code (this project).
        follow: stream the job's logs to ``out`` until it ends, and return its final status.

    Returns:
        The job id and status (``PENDING``/``RUNNING`` without ``follow``).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    working_dir = Path(working_dir)
    entrypoint = build_entrypoint(job, args, root=working_dir)
    env_vars = parse_env(env)
    commit = _git_commit(working_dir)
    if commit and GIT_COMMIT_ENV not in env_vars:
        env_vars[GIT_COMMIT_ENV] = commit
    runtime_env = build_runtime_env(working_dir=working_dir, env=env_vars)
    client = connect(address)
    tracking_uri = runtime_env["env_vars"].get("MLFLOW_TRACKING_URI", "")
    if tracking_uri and _loopback(tracking_uri) and not _loopback(client.get_address()):
        print(f"mrcnn submit: warning: MLFLOW_TRACKING_URI={tracking_uri} names this machine; on the cluster it "
              "names each node itself (unset it to use the cluster's, or --env MLFLOW_TRACKING_URI=...)", file=err)  # fmt: skip
    submission_id = f"mrcnn-{job}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    job_id = _call(
        f"submit {job} to {client.get_address()}",
        lambda: client.submit_job(
            entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env,
            metadata={JOB_METADATA_KEY: job, "git_commit": commit},
        ),
    )  # fmt: skip
    print(f"mrcnn submit: job {job_id} submitted to {client.get_address()}: {entrypoint}", file=err)
    if not follow:
        print(f"mrcnn submit: follow it with `mrcnn jobs logs {job_id} --follow`, stop it with `mrcnn jobs stop {job_id}`",
              file=err)  # fmt: skip
        return JobOutcome(job_id, str(_call(f"job {job_id}", client.get_job_status, job_id)))
    try:
        return follow_job(client, job_id, out=out)
    except KeyboardInterrupt:
        print(f"\nmrcnn submit: stopped following job {job_id}; it goes on running "
              f"(`mrcnn jobs logs {job_id} --follow`, `mrcnn jobs stop {job_id}`)", file=err)  # fmt: skip
        raise


def follow_job(client, job_id: str, *, out: IO[str] | None = None, poll_s: float = 1.0) -> JobOutcome:
    """Stream the job's logs to ``out`` until it ends; its final status.

    The log stream is a websocket; when it breaks, the rest of the logs are fetched once the job ends.
    """
    out = out or sys.stdout
    written = 0

    async def tail() -> None:
        nonlocal written
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()
            written += len(chunk)

    _call(f"job {job_id}", client.get_job_status, job_id)  # an unknown id is one clear error
    try:
        asyncio.run(tail())
    except (RuntimeError, OSError) as exc:
        print(f"mrcnn: log stream of {job_id} broke ({_first_line(exc)}); waiting for the job to end", file=sys.stderr)
    while (info := _call(f"job {job_id}", client.get_job_info, job_id)).status not in TERMINAL_STATUSES:
        time.sleep(poll_s)
    logs = _call(f"job {job_id}", client.get_job_logs, job_id)
    if len(logs) > written:  # what the stream did not deliver
        out.write(logs[written:])
        out.flush()
    # A failed job's message ends with the last lines of its logs, printed above: keep its first line.
    message = (info.message or "").strip().splitlines()
    return JobOutcome(job_id, str(info.status), message[0] if message else "")


# ----------------------------------------------------------------------------------------------
# mrcnn jobs list | status | logs | stop


def list_jobs(address: str | None) -> list[dict[str, Any]]:
    """Every job the cluster knows, newest first: id, status, start/end time (unix s), entrypoint, message."""
    client = connect(address)
    rows = []
    for details in _call(f"list jobs on {client.get_address()}", client.list_jobs):
        rows.append({
            "job_id": details.submission_id or details.job_id,
            "status": str(details.status),
            "start_time": (details.start_time or 0) / 1000.0,
            "end_time": (details.end_time or 0) / 1000.0 or None,
            "entrypoint": details.entrypoint,
            "message": details.message or "",
            "job": (details.metadata or {}).get(JOB_METADATA_KEY, ""),
        })  # fmt: skip
    return sorted(rows, key=lambda row: row["start_time"], reverse=True)


def format_jobs_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of :func:`list_jobs` rows."""
    lines = [f"{'JOB ID':40} {'STATUS':10} {'STARTED':19}  ENTRYPOINT"]
    for row in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["start_time"])) if row["start_time"] else "-"
        entrypoint = row["entrypoint"] if len(row["entrypoint"]) <= 80 else row["entrypoint"][:77] + "..."
        lines.append(f"{row['job_id']:40} {row['status']:10} {started:19}  {entrypoint}")
    return "\n".join(lines)


def job_info(address: str | None, job_id: str) -> dict[str, Any]:
    """One job: id, status, message, entrypoint, start/end time (unix s)."""
    client = connect(address)
    info = _call(f"job {job_id}", client.get_job_info, job_id)
    return {
        "job_id": info.submission_id or job_id,
        "status": str(info.status),
        "message": info.message or "",
        "entrypoint": info.entrypoint,
        "start_time": (info.start_time or 0) / 1000.0,
        "end_time": (info.end_time or 0) / 1000.0 or None,
    }


def job_logs(address: str | None, job_id: str, *, follow: bool = False, out: IO[str] | None = None) -> JobOutcome:
    """Print the job's logs (all of them so far, or streamed until it ends with ``follow``)."""
    out = out or sys.stdout
    client = connect(address)
    if follow:
        return follow_job(client, job_id, out=out)
    out.write(_call(f"job {job_id}", client.get_job_logs, job_id))
    out.flush()
    return JobOutcome(job_id, str(_call(f"job {job_id}", client.get_job_status, job_id)))


def stop_job(address: str | None, job_id: str, *, wait: bool = False, timeout_s: float = 120.0) -> JobOutcome:
    """Ask the cluster to stop the job (SIGTERM, then SIGKILL); with ``wait``, until it has ended."""
    client = connect(address)
    status = str(_call(f"job {job_id}", client.get_job_status, job_id))
    if status not in TERMINAL_STATUSES:
        _call(f"stop job {job_id}", client.stop_job, job_id)
    deadline = time.monotonic() + timeout_s
    while wait and status not in TERMINAL_STATUSES and time.monotonic() < deadline:
        time.sleep(1.0)
        status = str(_call(f"job {job_id}", client.get_job_status, job_id))
    if not wait:
        status = str(_call(f"job {job_id}", client.get_job_status, job_id))
    return JobOutcome(job_id, status)


def print_outcome(outcome: JobOutcome, out: IO[str] | None = None) -> None:
    """The last line of ``mrcnn submit``/``jobs``: one JSON object with the job id and status."""
    print(json.dumps(outcome.to_dict()), file=out or sys.stdout)
