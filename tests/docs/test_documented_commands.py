"""Every command that README.md and docs/*.md tell a user to run works as written.

The commands are read from the files (tests/docs/documented_commands.py): each ```bash block carries a
``<!-- commands: NAME -->`` line, and every NAME is in exactly one of the tables below, so a new block, or a
changed command, is checked or run here.

- RUN: the keypoint sequence of the README and docs/pipeline.md, then docs/serving.md's curl requests against
  its endpoint, run for real and in order, each command once (a command the README and docs/pipeline.md share
  runs the first time): synth -> preprocess -> train (evaluates at the end and registers models:/mrcnn@best)
  -> evaluate and serve that model -> curl. All in one temporary folder, with one local Ray (the test's
  own) for the in-process commands and the embedded MLflow store (./mlflow.db); `mrcnn serve` runs in its
  own process, as a user starts it, and stops on Ctrl-C.
- SYNOPSES: usage lines (``[--flag X]``): the verb exists and every flag they name is one of its options.
- CHECKED: commands that need a GPU, a cluster, S3, an AWS account or `make demo`'s registered model, with the
  reason: they are parsed, not run (:func:`tests.docs.documented_commands.check_command`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.docs.documented_commands import (
    ROOT,
    check_command,
    documented_blocks,
    program,
    split_commands,
    subcommand_options,
    synopsis_lines,
)
from tests.pipelines.mlflow_server import free_port
from tests.pipelines.serve_endpoint import request

# Run in this order, for real.
RUN = ("pipeline-keypoints", "readme-keypoints", "serve-requests")

SYNOPSES = ("cli-synopsis", "preprocess-synopsis", "train-synopsis", "evaluate-synopsis", "segment-synopsis")

CHECKED = {
    "make": "`make demo` is the ~10-minute demo (tests/pipelines/test_demo.py runs it), `make test` this suite",
    "ablate": "about 50 minutes (tests/pipelines/ablate/test_runner.py runs a small ablation), or a GPU cluster",
    "export": "`make demo`'s registered model, a run id, S3 (tests/pipelines/test_export.py exports for real)",
    "pipeline-keypoints-coco": "COCO person keypoints and GPUs",
    "serve-examples": "`make demo`'s registered model, a run id, a GPU cluster (the README's serve runs here)",
    "serve-run": "Ray's `serve` CLI with `make demo`'s model (the application is built here)",
    "serve-job": "a Ray cluster",
    "segment-job": "a Ray cluster and S3",
    **{name: "an AWS account, a GPU cluster and S3 (docs/cluster.md)" for name in (
        "cluster-setup", "cluster-bucket", "cluster-up", "cluster-pass-role", "cluster-tunnel", "cluster-upload",
        "cluster-preprocess", "cluster-first-run", "cluster-train", "cluster-train-4gpu", "cluster-evaluate",
        "cluster-serve", "cluster-segment", "cluster-teardown")},
}  # fmt: skip

# The only changes made to a documented command before it runs, and why: budgets (a 10-minute training run
# takes about one step), the size of a generated dataset, and the port (8000 may be taken where the tests
# run). (pattern, replacement) on the command's text, in order; {port} is the endpoint's free port. Each
# entry must be used (test_every_substitution_is_used), so a stale one fails.
SUBSTITUTIONS = (
    (r"^(mrcnn train .*)--minutes 10\b", r"\1--minutes 0.01"),
    (r"^(mrcnn synth .*)$", r"\1 --train 4 --val 2 --size 96"),
    (r"^(mrcnn serve .*)$", r"\1 --port {port}"),
    (r"http://127\.0\.0\.1:8000/", "http://127.0.0.1:{port}/"),
)
# What the run commands assume exists in the folder they run in (the user's own files).
PHOTO = ROOT / "tests" / "data" / "photos" / "000000000072.jpg"  # as photo.jpg

SERVE_START_TIMEOUT_S = 300.0


def test_every_bash_block_is_marked_and_classified():
    blocks = documented_blocks()
    classified = [*RUN, *SYNOPSES, *CHECKED]
    assert len(classified) == len(set(classified)), "a block in two tables"
    assert set(blocks) == set(classified), (
        f"marked in the docs but not classified here: {sorted(set(blocks) - set(classified))}; "
        f"classified here but not in the docs: {sorted(set(classified) - set(blocks))}"
    )


def test_split_commands_joins_continuations_and_quotes_and_drops_comments():
    text = "a --x 'one\ntwo' \\\n  --y 3   # note\n# only a comment\nb && c; X=$(d | e)\n"
    assert split_commands(text) == [["a", "--x", "one\ntwo", "--y", "3"], ["b"], ["c"], ["X=$", "(", "d", "|", "e", ")"]]
    assert [program(c) for c in split_commands(text)] == ["a", "b", "c", "VAR="]


@pytest.mark.parametrize("name", SYNOPSES)
def test_synopses_name_only_existing_verbs_and_flags(name):
    for line in synopsis_lines(documented_blocks()[name].text):
        words = line.split()
        assert words[0] == "mrcnn", f"{name}: {line!r}"
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line))
        unknown = sorted(flags - subcommand_options(words[1]))
        assert not unknown, f"{name}: `mrcnn {words[1]}` has no {unknown} ({line!r})"


def test_the_readme_synopsis_lists_every_verb():
    from pipelines.cli import build_parser

    listed = {line.split()[1] for line in synopsis_lines(documented_blocks()["cli-synopsis"].text)}
    verbs = set(build_parser()._subparsers._group_actions[0].choices)
    assert listed == verbs, f"missing from the README: {sorted(verbs - listed)}; not verbs: {sorted(listed - verbs)}"


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_commands_not_run_here_parse(name, monkeypatch):
    block = documented_blocks()[name]
    commands = split_commands(block.text)
    assert commands, block.where
    for command in commands:
        check_command(command, monkeypatch)


def test_every_substitution_is_used():
    blocks = documented_blocks()
    texts = [shlex.join(c) for name in RUN for c in split_commands(blocks[name].text)]
    for pattern, _ in SUBSTITUTIONS:
        assert any(re.search(pattern, t) for t in texts), f"substitution {pattern!r} matches no command to run"


# --- the sequence that runs ----------------------------------------------------------------------------------


@dataclass
class Ran:
    """One command as run: its text after the substitutions, exit code, output and seconds."""

    text: str
    returncode: int
    output: str
    seconds: float


@dataclass
class Workspace:
    folder: Path
    port: int
    ran: dict[str, Ran] = field(default_factory=dict)  # by documented text (as in the docs, comments dropped)
    served: list[tuple[subprocess.Popen, Path]] = field(default_factory=list)  # `mrcnn serve` processes and logs

    def by_verb(self, verb: str) -> list[Ran]:
        return [r for r in self.ran.values() if r.text.split()[:2] == ["mrcnn", verb]]

    def only(self, verb: str) -> Ran:
        [ran] = self.by_verb(verb)
        return ran


def _substituted(command: list[str], port: int) -> list[str]:
    text = shlex.join(command)
    for pattern, replacement in SUBSTITUTIONS:
        text = re.sub(pattern, replacement.replace("{port}", str(port)), text)
    return shlex.split(text)


def _run_in_process(argv: list[str]) -> tuple[int, str]:
    """``mrcnn ARGV`` in this process (the console script's own function), on the test's Ray."""
    from pipelines.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(argv)
    return code, out.getvalue()


def _start_serve(argv: list[str], folder: Path) -> tuple[subprocess.Popen, Path]:
    """``mrcnn serve ARGV`` in its own process (its own local Ray), until it says it is ready."""
    log = folder / "serve.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *argv], cwd=folder, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + SERVE_START_TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline and "mrcnn serve: ready at" not in log.read_text():
        time.sleep(1)
    if process.poll() is not None or "mrcnn serve: ready at" not in log.read_text():
        _stop(process)
        pytest.fail(f"mrcnn {shlex.join(argv)} did not get ready:\n{log.read_text()[-3000:]}")
    return process, log


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)  # Ctrl-C: the CLI deletes the application and stops its Ray
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The RUN blocks, run in order in one temporary folder; `mrcnn serve` keeps serving until the module ends."""
    import ray

    blocks = documented_blocks()
    folder = tmp_path_factory.mktemp("documented")
    shutil.copy(PHOTO, folder / "photo.jpg")
    space = Workspace(folder=folder, port=free_port())
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "MRCNN_SERVE_TOKEN", "MRCNN_TRAIN_HOOKS"):
            patch.delenv(name, raising=False)
        patch.chdir(folder)
        ray.init(address="local", num_cpus=2, include_dashboard=False)
        try:
            for name in RUN:
                for command in split_commands(blocks[name].text):
                    documented = shlex.join(command)
                    if documented in space.ran:
                        continue  # the same command in another document: it ran already
                    argv = _substituted(command, space.port)
                    started = time.monotonic()
                    if program(argv) == "mrcnn" and argv[1] == "serve":
                        process, log = _start_serve(argv[1:], folder)
                        space.served.append((process, log))
                        code, output = 0, log.read_text()
                    elif program(argv) == "mrcnn":
                        code, output = _run_in_process(argv[1:])
                    elif program(argv) == "curl":
                        done = subprocess.run(argv, cwd=folder, capture_output=True, timeout=300, check=False)
                        code, output = done.returncode, done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
                    else:
                        pytest.fail(f"{blocks[name].where}: no way to run {documented!r} here (add it to CHECKED?)")
                    space.ran[documented] = Ran(shlex.join(argv), code, output, time.monotonic() - started)
                    assert code == 0, f"{blocks[name].where}: {shlex.join(argv)} exited {code}:\n{output[-4000:]}"
            print("\n".join(f"{r.seconds:6.1f} s  {r.text}" for r in space.ran.values()))
            yield space
        finally:
            for process, _ in space.served:
                if process.poll() is None:
                    _stop(process)
            ray.shutdown()


def _last_json(output: str) -> dict:
    return json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))


@pytest.mark.slow
def test_train_with_defaults_evaluates_at_the_end_and_registers_by_keypoint_ap(workspace):
    from mlflow.tracking import MlflowClient

    from mrcnn.checkpoint import load_checkpoint
    from mrcnn.data.synthetic_keypoints import HOUSE_KEYPOINTS

    result = _last_json(workspace.only("train").output)
    assert result["iteration"] >= 1
    assert {"keypoints_AP", "keypoints_AR", "segm_AP", "bbox_AP"} <= set(result), "evaluated at the end"
    assert result["tracking_uri"] == f"sqlite:///{workspace.folder / 'mlflow.db'}", "the embedded store in the folder"
    checkpoint = load_checkpoint(result["checkpoint"])
    assert checkpoint.config.model.task == "keypoints" and checkpoint.config.model.keypoint_head.num_keypoints == 5
    assert checkpoint.categories.keypoint_category.keypoints == HOUSE_KEYPOINTS
    assert checkpoint.metadata["keypoints_AP"] == pytest.approx(result["keypoints_AP"])

    client = MlflowClient(result["tracking_uri"])
    run_id = result["mlflow_run_id"]
    for name in ("train/loss_keypoint", "keypoints/AP", "keypoints/AP50", "keypoints_per_category/house"):
        assert client.get_metric_history(run_id, name), name
    assert client.get_metric_history(run_id, "keypoints/AP")[-1].value == pytest.approx(result["keypoints_AP"])
    version = client.get_model_version_by_alias("mrcnn", "best")  # models:/mrcnn@best, as the docs say
    assert version.run_id == run_id
    assert float(version.tags["keypoints_AP"]) == pytest.approx(result["keypoints_AP"])


@pytest.mark.slow
def test_evaluate_scores_the_registered_model_with_keypoint_ap(workspace):
    from mrcnn.evaluation import KEYPOINT_STAT_NAMES, STAT_NAMES

    metrics = json.loads((workspace.folder / "eval-kp" / "metrics.json").read_text())
    assert metrics["model"] == "models:/mrcnn@best" and metrics["num_images"] == 2
    assert set(metrics["metrics"]) == {"bbox", "segm", "keypoints"}
    assert set(metrics["metrics"]["keypoints"]) == {*KEYPOINT_STAT_NAMES, "per_category"}
    assert set(metrics["metrics"]["bbox"]) == {*STAT_NAMES, "per_category"}
    results = json.loads((workspace.folder / "eval-kp" / "detections" / "results.json").read_text())
    assert results and all(len(r["keypoints"]) == 15 for r in results)


@pytest.mark.slow
def test_serve_answers_the_documented_requests_with_keypoints(workspace):
    answers = [r for r in workspace.ran.values() if r.text.startswith("curl ")]
    assert len(answers) == 3
    as_json, as_polygons = (json.loads(r.output) for r in answers[:2])
    for answer in (as_json, as_polygons):
        assert answer["model"]["uri"] == "models:/mrcnn@best" and answer["image"] == {"height": 640, "width": 427}
    assert as_json["score_threshold"] == 0.5 and as_polygons["mask_format"] == "polygon"
    assert (workspace.folder / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The README's promise: the instances of a keypoint model carry keypoints (all of them, at threshold 0).
    reply = request(f"http://127.0.0.1:{workspace.port}/v1/segment?score_threshold=0",
                    data=PHOTO.read_bytes(), content_type="image/jpeg")  # fmt: skip
    instances = reply.json()["instances"]
    assert reply.status == 200 and instances
    assert all(len(i["keypoints"]) == 15 and len(i["keypoint_scores"]) == 5 for i in instances)
    assert request(f"http://127.0.0.1:{workspace.port}/v1/model").json()["task"] == "keypoints"



@pytest.mark.slow
def test_serve_stops_on_ctrl_c(workspace):
    """After the requests (this test runs after the others that use the endpoint): Ctrl-C ends `mrcnn serve`
    cleanly, with the application deleted and its Ray stopped."""
    [(process, log)] = workspace.served
    _stop(process)
    assert process.returncode == 0, log.read_text()[-3000:]
    assert "mrcnn serve: stopping" in log.read_text()


@pytest.mark.parametrize("command", [
    "mrcnn train --data d --minuets 10",                         # a misspelt flag
    "mrcnn submit train --config jobs/configs/missing.yaml",      # a config that is not there
    "mrcnn submit segment --config jobs/configs/segment.yaml --masks",  # a flag the job's verb does not have
    "python -m jobs.nosuchjob --help",
    "make nosuchtarget",
    "wget http://example.com/weights.pth",                        # a program the test does not know
])  # fmt: skip
def test_a_wrong_command_is_refused(command, monkeypatch):
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        check_command(shlex.split(command), monkeypatch)


def test_inline_mrcnn_commands_name_existing_verbs_and_flags():
    """`mrcnn VERB ...` in the prose (outside the blocks): the verb exists and has every flag named (for
    `mrcnn submit JOB`, JOB's flags; its --config is the job's config file)."""
    from tests.docs.documented_commands import DOC_FILES

    spans = []
    for path in DOC_FILES:
        prose = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
        spans += [(path.name, m.group(1)) for m in re.finditer(r"`(mrcnn [a-z]+[^`]*)`", prose)]
    assert len(spans) > 20, "the docs name commands inline"
    for where, span in spans:
        words = span.split()
        known = subcommand_options(words[1])
        if words[1] == "submit" and len(words) > 2 and not words[2].startswith("-"):
            known |= subcommand_options(words[2]) | {"--config"}
        unknown = sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span)) - known)
        assert not unknown, f"{where}: `{span}`: no {unknown}"
