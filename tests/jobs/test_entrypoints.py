"""jobs/: every entrypoint answers --help in a fresh process, and every YAML run config beside them
parses into the flags of its verb."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import build_parser, config_args, job_main

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted(p.stem for p in (ROOT / "jobs").glob("*.py") if not p.stem.startswith("_"))
CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))


def test_every_verb_that_scales_out_has_a_job():
    assert {"preprocess", "train", "evaluate", "segment", "serve"} <= set(JOBS)
    assert {p.stem for p in CONFIGS} >= {"preprocess", "train", "evaluate", "segment", "serve"}


@pytest.mark.parametrize("job", JOBS)
def test_help(job):
    done = subprocess.run([sys.executable, "-m", f"jobs.{job}", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: mrcnn {job} ")


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem != "train"], ids=lambda p: p.name)
def test_job_configs_parse_as_flags_of_their_verb(path):
    args = build_parser().parse_args([path.stem, *config_args(path)])
    assert args.command == path.stem
    assert "--config" not in config_args(path)


def test_config_args_conversion_and_later_flags_win(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("args: [SRC, OUT]\nnum_shards: 8\nsplit: [train, val]\noverlays: true\ngpu: false\naddress: null\n")
    assert config_args(config) == ["SRC", "OUT", "--num-shards", "8", "--split", "train", "--split", "val", "--overlays"]

    import pipelines.cli

    seen = []
    monkeypatch.setattr(pipelines.cli, "main", lambda argv: seen.append(argv) or 0)
    assert job_main("preprocess", ["--config", str(config), "--num-shards", "2"]) == 0
    assert seen[-1] == ["preprocess", "SRC", "OUT", "--num-shards", "8", "--split", "train", "--split", "val",
                        "--overlays", "--num-shards", "2"]  # fmt: skip
    assert build_parser().parse_args([a for a in seen[-1] if a != "--overlays"]).num_shards == 2  # the last one wins
    assert job_main("train", ["--config", "run.yaml"]) == 0
    assert seen[-1] == ["train", "--config", "run.yaml"], "train's --config is its own run config"


def test_config_errors(tmp_path, capsys):
    assert job_main("segment", ["--config", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"mrcnn: error: --config {tmp_path / 'missing.yaml'}: no such file"
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert job_main("segment", ["--config", str(tmp_path / "list.yaml")]) == 2
    assert "expected a mapping of flag names to values" in capsys.readouterr().err
