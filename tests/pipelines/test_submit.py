"""`mrcnn submit` / `mrcnn jobs` against a real Ray cluster: two `ray start` nodes on 127.0.0.1 with the
dashboard's Jobs API and token authentication, and a real `mlflow server`, both started and stopped here.

The jobs run as they would on a cloud cluster: the project is uploaded as the job's working_dir, the
entrypoint is `python -m jobs.<JOB>`, MLFLOW_TRACKING_URI comes from the submitting environment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mrcnn.data.synthetic import make_synthetic_coco
from pipelines.cli import main
from tests.pipelines.mlflow_server import free_port, mlflow_server
from tests.pipelines.ray_cluster import ray_start_cluster
from tests.pipelines.test_train import LIGHT

ROOT = Path(__file__).resolve().parents[2]
NUM_TRAIN, NUM_VAL = 16, 4


@pytest.fixture(scope="module")
def cluster():
    with ray_start_cluster(num_nodes=2, cpus_per_node=2) as c:
        yield c


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as srv:
        yield srv


def mrcnn(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the CLI in a new process (as a user would), from the project folder."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], check=False, cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_submit_preprocess_and_train_through_the_jobs_api(cluster, server, tmp_path):
    from mlflow.tracking import MlflowClient

    env = {**cluster.client_env, "MLFLOW_TRACKING_URI": server.tracking_uri}
    make_synthetic_coco(tmp_path / "synth", num_train=NUM_TRAIN, num_val=NUM_VAL, size=96, seed=0)
    shards = tmp_path / "shards"

    # 1. Preprocessing, as a job.
    done = mrcnn("submit", "preprocess", str(tmp_path / "synth"), str(shards), "--num-shards", "4",
                 "--address", cluster.dashboard_url, "--follow", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    outcome = last_json(done.stdout)
    assert outcome["status"] == "SUCCEEDED" and outcome["job_id"].startswith("mrcnn-preprocess-")
    assert f"train: {NUM_TRAIN} rows" in done.stdout  # the job's own output, streamed
    assert len(list((shards / "train").glob("part-*.parquet"))) == 4

    # 2. Training, as a job: a YAML run config, 2 workers spread over the 2 nodes, 2 epochs; the
    # data as a file:// URI (the code path of s3://), gloo's interface set through the job's env.
    dump = tmp_path / "dump"
    run_config = tmp_path / "run.yaml"
    run_config.write_text(yaml.safe_dump({
        "preset": "r18_fpn_small", "overrides": LIGHT, "data": f"file://{shards}", "workers": 2, "batch_size": 2,
        "epochs": 2, "cpus_per_worker": 1, "checkpoint_every": 4, "eval_every": 8, "num_val_overlays": 0,
        "storage_path": str(tmp_path / "ray_results"), "name": "submitted", "placement_strategy": "SPREAD",
        "experiment": "submit-test", "model_name": "submit-test",
    }))  # fmt: skip
    dump_hook = json.dumps([{"factory": "tests.pipelines.train_hooks:DumpSeenImages", "kwargs": {"out_dir": str(dump)}}])
    done = mrcnn("submit", "train", "--config", str(run_config), "--address", cluster.dashboard_url, "--follow",
                 "--env", "GLOO_SOCKET_IFNAME=lo", "--env", f"MRCNN_TRAIN_HOOKS={dump_hook}", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    outcome = last_json(done.stdout)
    assert outcome["status"] == "SUCCEEDED"
    # The driver disconnects from Ray before printing its summary; Ray Data's progress bars then leave
    # cursor movements (ESC [ A) at the start of the summary's line.
    lines = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line) for line in done.stdout.splitlines()]
    train_summary = next(json.loads(line) for line in reversed(lines) if line.startswith('{"iteration"'))
    assert train_summary["iteration"] == 8  # 2 epochs x 16 images / (2 workers x 2 images)

    # Sharding: both ranks on different nodes; in each epoch every training image exactly once.
    assert len({(dump / f"node_rank{r}.txt").read_text() for r in (0, 1)}) == 2
    seen: dict[int, list[int]] = {}
    per_rank: dict[tuple[int, int], int] = {}
    for rank in (0, 1):
        for line in (dump / f"images_rank{rank}.jsonl").read_text().splitlines():
            step = json.loads(line)
            seen.setdefault(step["epoch"], []).extend(step["image_ids"])
            per_rank[rank, step["epoch"]] = per_rank.get((rank, step["epoch"]), 0) + len(step["image_ids"])
    train_ids = sorted(json.loads((tmp_path / "synth" / "train" / "annotations.json").read_text())["images"],
                       key=lambda im: im["id"])  # fmt: skip
    assert sorted(seen) == [0, 1]
    for epoch, ids in seen.items():
        assert sorted(ids) == [im["id"] for im in train_ids], f"epoch {epoch}: duplicates or gaps"
    assert set(per_rank.values()) == {NUM_TRAIN // 2}, per_rank

    # Tracked in the MLflow server the submitting environment named.
    client = MlflowClient(server.tracking_uri)
    run = client.get_run(train_summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 8
    assert client.get_metric_history(run.info.run_id, "segm/AP")
    assert run.data.params["run.epochs"] == "2.0"  # a float field: YAML's 2 is parsed to its type (issue 16, case 5)
    assert re.fullmatch(r"[0-9a-f]{40}", run.data.tags["mlflow.source.git.commit"]), "the commit it was submitted from"
    assert client.get_model_version_by_alias("submit-test", "best").run_id == run.info.run_id

    # The job carried the project (not .venv/.git) and the environment.
    info = mrcnn("jobs", "status", outcome["job_id"], "--json", "--address", cluster.dashboard_url, env=env)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["status"] == "SUCCEEDED"
    listed = mrcnn("jobs", "list", "--json", "--address", cluster.dashboard_url, env=env)
    rows = {row["job_id"]: row for row in json.loads(listed.stdout)}
    assert rows[outcome["job_id"]]["job"] == "train"
    assert rows[outcome["job_id"]]["entrypoint"].startswith("python -m jobs.train --config ")
    logs = mrcnn("jobs", "logs", outcome["job_id"], "--address", cluster.dashboard_url, env=env)
    assert "[train] iteration 1" in logs.stdout
    unpacked = [p for p in cluster.temp_dir.glob("session_*/runtime_resources/working_dir_files/*") if p.is_dir()]
    assert unpacked, "no working_dir was unpacked on the nodes"
    for folder in unpacked:
        assert (folder / "jobs" / "train.py").is_file() and (folder / "pipelines" / "submit.py").is_file()
        assert (folder / "tests" / "data").is_dir(), "only the top-level data/ folder is left out"
        assert not (folder / ".venv").exists() and not (folder / ".git").exists()


def test_a_failing_job_gives_a_non_zero_exit_and_its_status(cluster):
    done = mrcnn("submit", "train", "--data", "/nonexistent/shards", "--address", cluster.dashboard_url, "--follow",
                 env=cluster.client_env)  # fmt: skip
    assert done.returncode == 1
    assert last_json(done.stdout)["status"] == "FAILED"
    assert "shard" in done.stdout or "categories" in done.stdout  # the job's own one-line error, streamed
    assert done.stderr.strip().splitlines()[-1].startswith("mrcnn: error: job mrcnn-train-")


def test_stop_a_running_job(cluster, tmp_path):
    started = mrcnn("submit", "demo", "--workdir", str(tmp_path / "demo"), "--minutes", "5",
                    "--address", cluster.dashboard_url, env=cluster.client_env)  # fmt: skip
    assert started.returncode == 0, started.stderr
    job_id = last_json(started.stdout)["job_id"]
    stopped = mrcnn("jobs", "stop", job_id, "--wait", "--address", cluster.dashboard_url, env=cluster.client_env)
    assert stopped.returncode == 0, stopped.stderr
    assert last_json(stopped.stdout) == {"job_id": job_id, "status": "STOPPED", "message": ""}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["submit", "nope"], "unknown job 'nope'; known jobs: ablate, demo, evaluate, export, preprocess, segment, serve, train"),
        (["jobs", "status", "mrcnn-train-nosuchjob"], "job mrcnn-train-nosuchjob: no such job"),
        (["submit", "train", "--env", "NOT_SET_ANYWHERE_XYZ"], "--env NOT_SET_ANYWHERE_XYZ: not set in this environment"),
    ],
)
def test_errors_are_one_clear_line(cluster, args, expected):
    done = mrcnn(*args, "--address", cluster.dashboard_url, env=cluster.client_env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mrcnn: error: {expected}"), done.stderr


def test_unreachable_address_and_missing_token(cluster):
    closed = f"http://127.0.0.1:{free_port()}"
    done = mrcnn("jobs", "list", "--address", closed)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"mrcnn: error: cannot reach the Ray Jobs API at {closed} (Connection refused); "
                                   "is the cluster up, and the dashboard tunnelled (`ray dashboard cluster.yaml`)?")  # fmt: skip
    no_token = mrcnn("jobs", "list", "--address", cluster.dashboard_url, env={"RAY_AUTH_MODE": "disabled"})
    assert no_token.returncode == 2
    assert len(no_token.stderr.strip().splitlines()) == 1 and "token" in no_token.stderr, no_token.stderr
    no_address = mrcnn("jobs", "list")
    assert no_address.returncode == 2 and "--address http://HEAD:8265" in no_address.stderr


# ---------------------------------------------------------------- no cluster needed
def test_submit_options_may_come_after_the_job_and_dash_dash_passes_the_rest(monkeypatch, capsys):
    import pipelines.submit
    from pipelines.submit import JobOutcome

    calls = []

    def fake_submit(job, args, **kw):
        calls.append((job, args, kw))
        return JobOutcome("mrcnn-x-1", "SUCCEEDED")

    monkeypatch.setattr(pipelines.submit, "submit", fake_submit)
    argv = ["submit", "--env", "A=1", "segment", "--model", "m.ckpt", "--address", "http://head:8265", "--follow",
            "--env", "B", "--", "--address", "auto", "--follow"]  # fmt: skip
    assert main(argv) == 0
    (job, args, kw), = calls
    assert job == "segment"
    assert args == ["--model", "m.ckpt", "--address", "auto", "--follow"]  # after `--`: the job's own flags
    assert kw["address"] == "http://head:8265" and kw["follow"] is True and kw["env"] == ["A=1", "B"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "SUCCEEDED"


def test_entrypoint_and_runtime_env():
    from pipelines.submit import (
        EXCLUDES,
        build_entrypoint,
        build_runtime_env,
        parse_env,
    )

    assert build_entrypoint("train", ["--set", "model.box_head.pooler=roi_pool", "--name", "two words"]) == (
        "python -m jobs.train --set model.box_head.pooler=roi_pool --name 'two words'"
    )
    environ = {"MLFLOW_TRACKING_URI": "http://10.0.0.5:5000", "NCCL_SOCKET_IFNAME": "ens5", "HOME": "/root", "TOKEN": "t"}
    env = parse_env(["GLOO_SOCKET_IFNAME=ens5", "TOKEN", "X=a=b"], environ)
    assert env == {"GLOO_SOCKET_IFNAME": "ens5", "TOKEN": "t", "X": "a=b"}
    runtime_env = build_runtime_env(working_dir=ROOT, env={"NCCL_SOCKET_IFNAME": "eth1"}, environ=environ)
    assert runtime_env["working_dir"] == str(ROOT)
    assert runtime_env["env_vars"] == {"MLFLOW_TRACKING_URI": "http://10.0.0.5:5000", "NCCL_SOCKET_IFNAME": "eth1"}
    assert runtime_env["excludes"] == list(EXCLUDES) and "/.venv/" in EXCLUDES and ".git" in EXCLUDES
    for bad in ("1X=2", "=3", "A-B=1"):
        with pytest.raises(ValueError, match="expected KEY=VALUE or KEY"):
            parse_env([bad], environ)
