"""The shell commands of README.md and docs/*.md, read from the files: the marked ```bash blocks, split into
commands, and the checks that need no Ray (argparse, job configs, Serve configs, make targets).

A documented command sequence is a fenced ```bash block with a marker line just above it, at the same
indentation::

    <!-- commands: readme-keypoints -->
    ```bash
    mrcnn synth houses --task keypoints
    ```

tests/docs/test_documented_commands.py says what is done with each NAME.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

_MARKED = re.compile(
    r"^(?P<indent>[ \t]*)<!-- commands: (?P<name>[\w-]+) -->\n(?P=indent)```bash[ \t]*\n(?P<body>.*?)\n(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_FENCE = re.compile(r"^[ \t]*```bash[ \t]*$", re.MULTILINE)
_SEPARATORS = {"&&", ";", "||", "&"}

# Programs whose documented commands are never run here, and why. `ray job submit ... -- python -m jobs.X`
# is not in this list's sense "not run": its entrypoint is parsed as the job (see check_command).
NOT_RUN_PROGRAMS = {
    "aws": "the AWS CLI: an AWS account (bucket, IAM role, instances)",
    "ray": "Ray's cluster launcher and CLI (up, exec, dashboard, get-head-ip, rsync, down, get-auth-token): a cloud account",
    "ssh": "a tunnel to the cluster's head node",
    "pip": "installs into the project's venv, which the tests already run in",
    "export": "sets a variable of the user's shell",
    "VAR=": "a shell variable read from the cluster",
}


@dataclass(frozen=True)
class Block:
    """One marked ```bash block: its name, file, first line (1-based) and text (dedented)."""

    name: str
    path: Path
    line: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} ({self.name})"


def documented_blocks() -> dict[str, Block]:
    """Every marked block of README.md and docs/*.md by name.

    Raises:
        AssertionError: a ```bash block without a marker, or a name used twice.
    """
    blocks: dict[str, Block] = {}
    for path in DOC_FILES:
        text = path.read_text()
        found = list(_MARKED.finditer(text))
        fences = [text.count("\n", 0, m.start()) + 1 for m in _FENCE.finditer(text)]
        marked = {text.count("\n", 0, m.start("body")) for m in found}  # the fence's line number (1-based)
        unmarked = [n for n in fences if n not in marked]
        assert not unmarked, f"{path.relative_to(ROOT)}: ```bash block(s) at line(s) {unmarked} have no `<!-- commands: NAME -->` line above"
        for m in found:
            name = m.group("name")
            assert name not in blocks, f"commands {name!r} marked twice: {blocks[name].where} and {path.name}"
            body = "\n".join(line[len(m.group("indent")) :] for line in m.group("body").splitlines())
            blocks[name] = Block(name, path, text.count("\n", 0, m.start("body")) + 1, body)
    return blocks


def split_commands(text: str) -> list[list[str]]:
    """Shell text -> commands as argument lists: backslash continuations and quotes that span lines are
    joined, comments dropped, and ``&&``, ``;``, ``||``, ``&`` separate commands (a pipe stays in its command)."""
    commands: list[list[str]] = []
    pending = ""
    for line in text.splitlines():
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        try:
            lexer = shlex.shlex(pending, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            tokens = list(lexer)
        except ValueError:  # a quote that goes on on the next line
            pending += "\n"
            continue
        pending = ""
        tokens = _without_comments(tokens)
        command: list[str] = []
        for token in tokens + [";"]:
            if token in _SEPARATORS:
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(token)
    assert not pending.strip(), f"unterminated shell text: {pending!r}"
    return commands


def _without_comments(tokens: list[str]) -> list[str]:
    # shlex's own comment handling does not combine with punctuation_chars: drop from a token that starts with #.
    for i, token in enumerate(tokens):
        if token.startswith("#"):
            return tokens[:i]
    return tokens


def synopsis_lines(text: str) -> list[str]:
    """Usage lines: an indented line continues the line above; comments are dropped."""
    lines: list[str] = []
    for raw in text.splitlines():
        line = raw.split("  #")[0].rstrip()
        if not line.strip() or line.strip().startswith("#"):
            continue
        if raw[:1].isspace() and lines:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line.strip())
    return lines


def program(command: list[str]) -> str:
    """The program a command runs: the base name of its first word, or ``VAR=`` for an assignment."""
    first = command[0]
    if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", first):
        return "VAR="
    return first.rsplit("/", 1)[-1]


# --- checks that start nothing ------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    """``mrcnn ARGV`` through the CLI's own parser; a refusal fails the test with argparse's message."""
    from pipelines.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"mrcnn {shlex.join(argv)}: {err.getvalue().strip()}")


def subcommand_options(verb: str) -> set[str]:
    """Every option string of a verb, with those of its own subcommands (``mrcnn jobs logs --follow``)."""
    from pipelines.cli import build_parser

    def options(parser: argparse.ArgumentParser) -> Iterator[str]:
        for action in parser._actions:
            yield from action.option_strings
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from options(sub)

    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert verb in verbs, f"no verb `mrcnn {verb}` (the CLI has {sorted(verbs)})"
    return set(options(verbs[verb]))


def check_command(command: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Check a command that is not run; returns what was checked (for the failure messages).

    - ``mrcnn ...``: argparse accepts it; ``submit``'s job arguments are parsed by the job (below);
    - ``python -m jobs.X ...`` and ``ray job submit ... -- python -m jobs.X ...``: the job exists and its
      arguments, with its ``--config`` file expanded, are parsed by verb X; a train run config is read;
    - ``serve run|deploy``: the Serve config file validates and its application builds (nothing is loaded);
    - ``make TARGET``: the target exists (``make -n``) and the ``mrcnn`` command it runs parses;
    - other programs: named in :data:`NOT_RUN_PROGRAMS`.
    Every ``.yaml`` file a command names exists in the project.
    """
    for token in command:
        if token.endswith((".yaml", ".yml")) and "=" not in token:
            assert (ROOT / token).is_file(), f"{shlex.join(command)}: {token} is not a file of the project"
    name = program(command)
    if name == "mrcnn":
        _check_mrcnn(command[1:], monkeypatch)
        return "parsed"
    if name == "python" and command[1:2] == ["-m"] and command[2].startswith("jobs."):
        _check_job(command[2].removeprefix("jobs."), command[3:], monkeypatch)
        return "parsed as a job"
    if command[:3] == ["ray", "job", "submit"]:
        assert "--" in command, f"{shlex.join(command)}: no `-- ENTRYPOINT`"
        return check_command(command[command.index("--") + 1 :], monkeypatch)
    if name == "serve":
        _check_serve_cli(command[1:])
        return "Serve config built"
    if name == "make":
        _check_make(command[1:])
        return "make target checked"
    assert name in NOT_RUN_PROGRAMS, f"{shlex.join(command)}: a program the test neither runs nor lists in NOT_RUN_PROGRAMS"
    return f"not run: {NOT_RUN_PROGRAMS[name]}"


def _check_mrcnn(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    args = parse(argv)
    if args.command != "submit":
        return
    import pipelines.submit

    submitted: list[tuple[str, list[str]]] = []

    def record(job, job_args=(), **_):
        submitted.append((job, list(job_args)))
        return pipelines.submit.JobOutcome(job_id="docs-check", status="SUCCEEDED")

    with monkeypatch.context() as patch, contextlib.redirect_stdout(io.StringIO()):
        patch.setattr(pipelines.submit, "submit", record)  # what would go to the cluster
        assert args.func(args) == 0
    [(job, job_args)] = submitted
    _check_job(job, job_args, monkeypatch)


def _check_job(job: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.cli

    assert (ROOT / "jobs" / f"{job}.py").is_file(), f"no job jobs/{job}.py"
    seen: list[list[str]] = []
    with monkeypatch.context() as patch:
        patch.chdir(ROOT)  # a --config path is the project's
        patch.setattr(pipelines.cli, "main", lambda a: seen.append(list(a)) or 0)
        assert pipelines.cli.job_main(job, argv) == 0, f"python -m jobs.{job} {shlex.join(argv)}"
    args = parse(seen[-1])
    if job == "train" and args.config:
        from pipelines.train import TrainRunConfig

        TrainRunConfig.from_yaml(ROOT / args.config).validate()


def _check_serve_cli(argv: list[str]) -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    action, target, *pairs = argv
    assert action in ("run", "deploy"), f"serve {action}: not a `serve` action the docs should use"
    if target.endswith(".yaml"):
        config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / target).read_text()))
        apps = [(app.import_path, app.args) for app in config.applications]
    else:
        apps = [(target, dict(pair.split("=", 1) for pair in pairs))]
    for import_path, app_args in apps:
        module, attr = import_path.split(":")
        importlib.import_module(module).__dict__[attr](dict(app_args))  # builds the application; loads nothing


def _check_make(argv: list[str]) -> None:
    [target] = argv
    done = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"make {target}: {done.stderr.strip()}"
    for line in done.stdout.splitlines():
        if line.split(" ", 1)[0].endswith("/bin/mrcnn"):
            parse(shlex.split(line)[1:])
