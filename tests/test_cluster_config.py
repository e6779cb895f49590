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
