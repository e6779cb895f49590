"""A real Ray Serve endpoint on 127.0.0.1 for integration tests, and a small HTTP client.

Usage, in a module-scoped fixture::

    from tests.pipelines.serve_endpoint import serve_endpoint

    @pytest.fixture(scope="module")
    def endpoint(small_checkpoint):
        with serve_endpoint({"mrcnn": {"model": str(small_checkpoint)}}) as ep:
            yield ep                 # ep.url("mrcnn") == "http://127.0.0.1:<port>/"

A local Ray (the test's own, shut down on exit) runs Serve's proxy on a free port of 127.0.0.1; each
application is ``pipelines.serve.build_app(args)`` under its own route prefix (the first at ``/``).
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.pipelines.mlflow_server import free_port

START_TIMEOUT_S = 300.0  # replicas load torch and the model; slow on a busy 2-core machine


@dataclass
class Reply:
    """One HTTP answer: status, lower-cased headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str | None:
        """The ``error.code`` of a JSON error body (None for anything else)."""
        try:
            return self.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


def request(
    url: str,
    *,
    data: bytes | None = None,
    content_type: str | None = None,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    method: str | None = None,
    timeout: float = 120.0,
) -> Reply:
    """One HTTP request with urllib; 4xx/5xx come back as a Reply, not an exception."""
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    if content_type is not None:
        req.add_header("Content-Type", content_type)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


@dataclass
class ServeEndpoint:
    """A running Serve instance with its applications."""

    port: int
    prefixes: dict[str, str] = field(default_factory=dict)

    def url(self, app: str, path: str = "") -> str:
        """``http://127.0.0.1:<port><prefix><path>`` (``path`` without its leading slash)."""
        return f"http://127.0.0.1:{self.port}{self.prefixes[app]}{path.lstrip('/')}"


def _wait_until_answers(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if request(url, timeout=5).status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 in time")


@contextlib.contextmanager
def serve_endpoint(apps: Mapping[str, Mapping[str, Any]], *, num_cpus: int = 4) -> Iterator[ServeEndpoint]:
    """Start a local Ray and Serve on 127.0.0.1, deploy ``apps`` (name -> build_app args), stop all on exit.

    Args:
        apps: application name -> :func:`pipelines.serve.build_app` args; the first is served at ``/``,
            the others at ``/<name>/``.
        num_cpus: Ray's logical CPUs (replicas reserve ``cpus_per_replica`` each).
    """
    import ray
    from ray import serve

    from pipelines.serve import build_app

    if ray.is_initialized():
        raise RuntimeError("serve_endpoint starts its own Ray, but Ray is already initialised in this process")
    # address="local": a new Ray of this test's own, even while another process runs one on this machine.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        endpoint = ServeEndpoint(port=port)
        for index, (name, args) in enumerate(apps.items()):
            prefix = "/" if index == 0 else f"/{name}/"
            endpoint.prefixes[name] = prefix
            serve.run(build_app(dict(args)), name=name, route_prefix=prefix.rstrip("/") or "/", blocking=False)
        deadline = time.monotonic() + START_TIMEOUT_S
        for name in apps:
            _wait_until_answers(endpoint.url(name, "healthz"), deadline)
        yield endpoint
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
