"""pipelines.common.session: one Ray-session policy for every stage."""

from __future__ import annotations

import re
from pathlib import Path

import ray

from pipelines.common.session import ray_session, session_is_local

PIPELINES = Path(__file__).resolve().parents[3] / "pipelines"


def test_starts_a_local_ray_and_stops_only_what_it_started(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    assert session_is_local(None)
    with ray_session(num_cpus=1, include_dashboard=False, log_to_driver=False) as started:
        assert started and ray.is_initialized()
        with ray_session() as inner:  # a stage called from inside another reuses the session
            assert inner is False
        assert ray.is_initialized()  # ...and does not end it
        assert not session_is_local(None)
    assert not ray.is_initialized()


def test_no_other_module_starts_ray_itself():
    calls = [
        f"{path.relative_to(PIPELINES.parent)}:{number}"
        for path in PIPELINES.rglob("*.py")
        if path.name != "session.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if re.search(r"\bray\.init\(", line)
    ]
    assert calls == [], f"use pipelines.common.session.ray_session instead of ray.init: {calls}"
