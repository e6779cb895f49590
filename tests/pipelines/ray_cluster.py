"""A real multi-node Ray cluster started with ``ray start`` for integration tests.

Usage, in a fixture::

    from tests.pipelines.ray_cluster import ray_start_cluster

    @pytest.fixture(scope="module")
    def cluster(tmp_path_factory):
        with ray_start_cluster(num_nodes=2, cpus_per_node=2) as c:
            yield c               # c.dashboard_url == "http://127.0.0.1:<port>" (the Jobs API)

Every node is a ``ray start --block`` process on 127.0.0.1 in its own session, with a private
``--temp-dir`` and ports the OS picked, so the cluster never collides with another Ray on the
machine: ``ray.init()`` elsewhere does not find it (its address file is in the private temp dir),
and stopping it never touches another Ray (no ``ray stop``, which stops every Ray of the user). On
exit every node gets SIGTERM (``--block`` then stops the processes it started); anything still alive
in the nodes' sessions after that is killed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.pipelines.mlflow_server import _log_tail, free_port

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 8.0


@dataclass(frozen=True)
class RayStartCluster:
    """A running cluster.

    address: the GCS address ``127.0.0.1:<port>`` (``ray.init(address=...)``).
    dashboard_url: ``http://127.0.0.1:<port>``, the dashboard and the Jobs API.
    temp_dir: the cluster's private Ray temp dir (session logs under ``session_latest/logs``).
    env: the environment the nodes run with (job drivers inherit it).
    client_env: what a client (``mrcnn submit``, ``ray job``) needs on top of its own environment:
        ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` (the cluster's token).
    """

    address: str
    dashboard_url: str
    temp_dir: Path
    log_dir: Path
    env: dict[str, str]
    client_env: dict[str, str]
    pids: tuple[int, ...]


def _ray_executable() -> str:
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.is_file() else "ray"


def _session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (Linux /proc), this process excluded."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the command (which may hold spaces) start after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid:  # state, ppid, pgrp, session
            pids.append(int(entry))
    return pids


def _stop_nodes(processes: list[subprocess.Popen]) -> None:
    """SIGTERM every ``ray start --block`` process at once (each then stops what it started), wait a
    little, then kill whatever is left in their sessions."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
    for process in processes:
        sid = process.pid  # start_new_session: the session id is the leader's pid
        for pid in [process.pid, *_session_pids(sid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
    deadline = time.monotonic() + 10  # killed processes take a moment to go
    while any(_session_pids(p.pid) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.2)


def _get(url: str, token: str, timeout: float):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    return urllib.request.urlopen(request, timeout=timeout)


def _jobs_api_answers(url: str, token: str) -> bool:
    try:
        with _get(f"{url}/api/version", token, 3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, TimeoutError):
        return False


def _alive_nodes(url: str, token: str) -> int:
    import json

    try:
        with _get(f"{url}/nodes?view=summary", token, 5) as response:
            data = json.loads(response.read())
    except (urllib.error.URLError, OSError, TimeoutError, ValueError):
        return 0
    summary = data.get("data", {}).get("summary", [])
    return sum(1 for node in summary if node.get("raylet", {}).get("state") == "ALIVE")


@contextlib.contextmanager
def ray_start_cluster(
    *,
    num_nodes: int = 2,
    cpus_per_node: int = 2,
    extra_env: dict[str, str] | None = None,
    start_timeout_s: float = START_TIMEOUT_S,
) -> Iterator[RayStartCluster]:
    """Start a head node (dashboard + Jobs API on 127.0.0.1) and ``num_nodes - 1`` worker nodes.

    Args:
        num_nodes: nodes in all, head included.
        cpus_per_node: logical CPUs each node advertises.
        extra_env: environment overrides for the nodes (and so for the job drivers they start).
        start_timeout_s: how long to wait for the Jobs API and every node.

    Raises:
        RuntimeError: a node exited or the cluster did not come up in time (with the log's tail).
    """
    # A short path: Ray's unix sockets live under the temp dir (limit ~107 characters).
    temp_dir = Path(tempfile.mkdtemp(prefix="mrcnn-ray-", dir="/tmp"))
    log_dir = temp_dir / "cli-logs"
    log_dir.mkdir()
    env = dict(os.environ)
    for name in ("RAY_ADDRESS", "RAY_JOB_ID", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    # Job entrypoints run `python`: the interpreter of this environment.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Token authentication (Ray's default for new clusters) with a token of this cluster's own:
    # clients need RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH, as they would for a real cluster.
    token = secrets.token_hex(32)
    token_path = temp_dir / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    env.pop("RAY_AUTH_TOKEN", None)
    env.update(extra_env or {})
    gcs_port, dashboard_port = free_port(), free_port()
    address = f"127.0.0.1:{gcs_port}"
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    processes: list[subprocess.Popen] = []

    def node_ports() -> list[str]:
        return [
            "--node-manager-port", str(free_port()),
            "--object-manager-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
        ]  # fmt: skip

    def launch(args: list[str], name: str) -> None:
        with open(log_dir / f"{name}.log", "ab") as log:
            processes.append(subprocess.Popen(
                [_ray_executable(), "start", "--block", "--node-ip-address", "127.0.0.1",
                 "--num-cpus", str(cpus_per_node), "--num-gpus", "0", "--temp-dir", str(temp_dir),
                 "--disable-usage-stats", "--log-style", "record", *node_ports(), *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            ))  # fmt: skip

    def check_alive() -> None:
        for index, process in enumerate(processes):
            if process.poll() is not None:
                name = "head" if index == 0 else f"worker{index}"
                raise RuntimeError(
                    f"ray start ({name}) exited with code {process.returncode}; "
                    f"log {log_dir / (name + '.log')}:\n{_log_tail(log_dir / (name + '.log'))}"
                )

    try:
        launch(["--head", "--port", str(gcs_port), "--include-dashboard", "true",
                "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
                "--ray-client-server-port", str(free_port())], "head")  # fmt: skip
        deadline = time.monotonic() + start_timeout_s
        while not _jobs_api_answers(dashboard_url, token):
            check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Jobs API at {dashboard_url} did not answer within {start_timeout_s:.0f} s; "
                                   f"log {log_dir / 'head.log'}:\n{_log_tail(log_dir / 'head.log')}")
            time.sleep(0.5)
        for index in range(1, num_nodes):
            launch(["--address", address], f"worker{index}")
        while _alive_nodes(dashboard_url, token) < num_nodes:
            check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{_alive_nodes(dashboard_url, token)} of {num_nodes} Ray nodes up after {start_timeout_s:.0f} s")
            time.sleep(0.5)
        yield RayStartCluster(
            address=address,
            dashboard_url=dashboard_url,
            temp_dir=temp_dir,
            log_dir=log_dir,
            env=env,
            client_env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)},
            pids=tuple(p.pid for p in processes),
        )
    finally:
        _stop_nodes(processes)
        shutil.rmtree(temp_dir, ignore_errors=True)
