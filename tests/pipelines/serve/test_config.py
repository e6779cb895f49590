"""``pipelines.serve.config`` (ServeConfig, builder args, deployment options) and serve_config.yaml, without Serve."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.serve import ServeConfig, build_app, deployment_options

PROJECT = Path(__file__).resolve().parents[3]


def test_import_loads_no_model_torch_or_mlflow():
    code = "import sys, pipelines.serve; bad = {'torch', 'mlflow'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=PROJECT)


def test_config_from_builder_args_and_deployment_options():
    config = ServeConfig.from_dict({"model": "m.ckpt", "replicas": "3", "gpu": "true", "max_batch_size": "4",
                                    "batch_wait_timeout_s": "0.01", "token": "none"})  # fmt: skip
    assert (config.replicas, config.gpu, config.max_batch_size, config.token) == (3, True, 4, None)
    options = deployment_options(config)
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1}
    assert options["max_queued_requests"] == 64
    assert options["backpressure_config"] == {"status_code": 503, "retry_after_s": 1.0}

    scaled = deployment_options(ServeConfig.from_dict({"model": "m.ckpt", "autoscale": "0:5"}))
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"]["min_replicas"] == 0 and scaled["autoscaling_config"]["max_replicas"] == 5
    assert scaled["autoscaling_config"]["target_ongoing_requests"] == 8.0
    assert ServeConfig.from_dict(ServeConfig(model="m", autoscale=(1, 2)).to_dict()).autoscale == (1, 2)

    for bad, match in [
        ({"model": "m", "replicas": "two"}, "replicas: expected int"),
        ({"model": "m", "replicas": 0}, "replicas: expected a positive integer"),
        ({"model": "m", "max_batch_size": 32}, "max_ongoing_requests .* must be >= max_batch_size"),
        ({"model": "m", "autoscale": "4:2"}, "autoscale"),
        ({"model": "m", "modle": "x"}, r"unknown key\(s\) \['modle'\]"),
        ({"model": ""}, "model"),
        ({"model": "m", "score_threshold": 1.5}, "score_threshold"),
    ]:
        with pytest.raises(ValueError, match=match):
            ServeConfig.from_dict(bad)


def test_serve_config_yaml_is_valid_and_builds(small_checkpoint):
    from ray.serve.deployment import Application
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load((PROJECT / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(data)
    (app,) = schema.applications
    assert app.import_path == "pipelines.serve:build_app"
    assert schema.http_options.host == "127.0.0.1"
    args = {**app.args, "model": str(small_checkpoint)}
    config = ServeConfig.from_dict(args)
    assert config.autoscale == (1, 4) and config.max_batch_size == 8
    assert isinstance(build_app(args), Application)

