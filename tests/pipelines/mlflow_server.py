"""A real ``mlflow server`` process for integration tests.

Usage, in a fixture::

    from tests.pipelines.mlflow_server import mlflow_server

    @pytest.fixture(scope="module")
    def server(tmp_path_factory):
        with mlflow_server(tmp_path_factory.mktemp("mlflow")) as srv:
            yield srv            # srv.tracking_uri == "http://127.0.0.1:<port>"

The server runs in its own process group on 127.0.0.1 at a free port, with a SQLite backend store
and a local artifact destination (served through the ``mlflow-artifacts:`` proxy), both inside
``root``. On exit the whole process group (the CLI, uvicorn and its workers) is terminated.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 120.0  # the first start migrates a fresh database; slow on a busy machine
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class MlflowServer:
    """A running server.

    tracking_uri: ``http://127.0.0.1:<port>``, for MlflowClient / MLFLOW_TRACKING_URI.
    backend_store_uri: the server's ``sqlite:///...`` database.
    artifacts_dir: where the server writes artifacts (``mlflow-artifacts:/`` resolves here).
    log_path: the server's stdout + stderr.
    """

    tracking_uri: str
    port: int
    root: Path
    backend_store_uri: str
    artifacts_dir: Path
    log_path: Path
    pid: int

    def __str__(self) -> str:
        return self.tracking_uri


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mlflow_executable() -> list[str]:
    """``mlflow`` of the running interpreter's environment (a venv need not be on PATH)."""
    candidate = Path(sys.executable).with_name("mlflow")
    return [str(candidate)] if candidate.is_file() else [sys.executable, "-m", "mlflow"]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, TimeoutError):
        return False


def _stop(process: subprocess.Popen) -> None:
    """Terminate the server's process group; kill it if it does not stop in time."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_S)
    # Workers may outlive the CLI process for a moment; the group id is the CLI's pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _log_tail(path: Path, num_lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-num_lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def mlflow_server(
    root: str | os.PathLike,
    *,
    workers: int = 1,
    start_timeout_s: float = START_TIMEOUT_S,
    extra_env: dict[str, str] | None = None,
) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` with its store under ``root``, wait until ``/health`` answers, stop it on exit.

    Args:
        root: a directory for ``mlflow.db``, ``mlartifacts/`` and ``server.log`` (created if missing).
        workers: uvicorn worker processes (1 keeps a shared machine free).
        start_timeout_s: how long to wait for the first answer.
        extra_env: environment overrides for the server process.

    Raises:
        RuntimeError: the server exited or did not answer in time (the message has the log's tail).
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    artifacts_dir = root / "mlartifacts"
    backend_store_uri = f"sqlite:///{root / 'mlflow.db'}"
    log_path = root / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        *_mlflow_executable(),
        "server",
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", str(artifacts_dir),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # The GenAI job runner starts ~8 huey consumer processes; tracking and the registry do not need them.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env.update(extra_env or {})
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=root,  # anything the server writes relative to its cwd stays in root
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, so _stop reaches the workers
        )
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _answers(url):
            if process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server on port {port} exited with code {process.returncode} before answering; "
                    f"log {log_path}:\n{_log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server on port {port} did not answer /health within {start_timeout_s:.0f} s; "
                    f"log {log_path}:\n{_log_tail(log_path)}"
                )
            time.sleep(0.25)
        yield MlflowServer(
            tracking_uri=url,
            port=port,
            root=root,
            backend_store_uri=backend_store_uri,
            artifacts_dir=artifacts_dir,
            log_path=log_path,
            pid=process.pid,
        )
    finally:
        _stop(process)
