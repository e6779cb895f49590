"""cluster.yaml is a valid Ray cluster launcher config (Ray's own JSON schema)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_passes_rays_schema():
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    gpu_types = [t for t in config["available_node_types"].values() if t.get("resources", {}).get("GPU")]
    assert gpu_types and all(t["max_workers"] > t["min_workers"] for t in gpu_types), "GPU workers autoscale"


def test_cluster_yaml_has_what_a_gpu_cluster_needs():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    head = config["available_node_types"][config["head_node_type"]]
    assert not head["resources"].get("GPU") and head["max_workers"] == 0, "a CPU head"
    gpu_types = [t for t in config["available_node_types"].values() if t.get("resources", {}).get("GPU")]
    assert len(gpu_types) >= 2 and all(t["min_workers"] == 0 for t in gpu_types), "GPU nodes only while needed"
    assert all(any(k.startswith("accelerator_type:") for k in t["resources"]) for t in gpu_types)
    # The project and its dependencies on every node; the Ray token too.
    assert config["file_mounts"]["/home/ubuntu/mrcnn"] == "."
    assert "~/.ray/auth_token" in config["file_mounts"].values()
    assert any('-e ".[ray]"' in c and "constraints.txt" in c for c in config["setup_commands"])
    # Ray with token auth, the dashboard on the head only; MLflow on the head's private address, artifacts in S3.
    head_start = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "mlflow server" in head_start and "--artifacts-destination s3://" in head_start
    assert "0.0.0.0" not in (ROOT / "cluster.yaml").read_text()
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert "RAY_AUTH_MODE=token" in start and "MLFLOW_TRACKING_URI=http://" in start
