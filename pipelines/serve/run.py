"""``mrcnn serve``: start Serve on a Ray session, deploy the application, serve until told to stop."""

from __future__ import annotations

import os
import time

from ray import serve

from pipelines.serve.app import build_app
from pipelines.serve.config import TOKEN_ENV, ServeConfig


def run_server(
    config: ServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    app_name: str = "mrcnn",
    ray_address: str | None = None,
    detach: bool = False,
    wait_s: float | None = None,
) -> str:
    """``mrcnn serve``: deploy the application and serve until interrupted.

    Args:
        host, port: where Serve's HTTP proxy listens (127.0.0.1 unless told otherwise; used only when
            this call starts Serve on the cluster).
        ray_address: a running cluster (``auto``: the one ``ray start`` started here); default
            ``RAY_ADDRESS``, else a new local Ray that stops with this call.
        detach: return once deployed and leave the application running (on a cluster).
        wait_s: serve this long and stop (None: until Ctrl-C).

    Returns:
        The endpoint's URL.

    Raises:
        ValueError: ``detach`` without a running cluster.
    """
    from pipelines.common.session import ray_session, session_is_local

    local = session_is_local(ray_address)
    if detach and local:
        raise ValueError("serve --detach needs a running cluster (--address or RAY_ADDRESS): a local Ray ends with this process")
    url = f"http://{host}:{port}/"
    leave_running = False
    with ray_session(ray_address):
        try:
            serve.start(http_options={"host": host, "port": port})
            print(f"mrcnn serve: deploying {config.model} ({_scaling_text(config)}) ...", flush=True)
            serve.run(build_app(config), name=app_name, route_prefix="/")
            token_note = " (bearer token required)" if config.token or os.environ.get(TOKEN_ENV) else ""
            print(f"mrcnn serve: ready at {url} (web page), POST {url}v1/segment, GET {url}v1/model{token_note}", flush=True)
            if detach:
                leave_running = True
                return url
            _wait(wait_s)
        except KeyboardInterrupt:
            print("mrcnn serve: stopping", flush=True)
        finally:
            if not leave_running:
                if local:
                    serve.shutdown()
                else:
                    serve.delete(app_name)
    return url


def _wait(wait_s: float | None) -> None:
    """Sleep ``wait_s`` seconds (None: until KeyboardInterrupt), waking twice a second."""
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.5 if deadline is None else min(0.5, max(0.0, deadline - time.monotonic())))


def _scaling_text(config: ServeConfig) -> str:
    scaling = f"autoscale {config.autoscale[0]}-{config.autoscale[1]}" if config.autoscale else f"{config.replicas} replica(s)"
    return f"{scaling}, batches of up to {config.max_batch_size}, {'GPU' if config.gpu else 'CPU'}"
