"""pipelines.common.logs: Ray's lines and other libraries' warnings go to the log file; our [stage] lines and
errors stay on the console. (The whole path, through a real Ray, is in preprocess's test_cli_preprocess.)"""

from __future__ import annotations

import logging
import warnings

import pytest

from pipelines.common import logs


@pytest.fixture
def log_file(tmp_path, monkeypatch):
    """A fresh log file under tmp_path for this test (the module keeps one per process)."""
    monkeypatch.setenv(logs.LOG_DIR_ENV, str(tmp_path / "logs"))
    monkeypatch.setattr(logs, "_handler", None)
    monkeypatch.setattr(logs, "_announced", False)
    yield lambda: logs.log_path().read_text()
    logs._file_handler().close()


def _batch(lines, *, is_err=False, pid=4242, actor_name="RayTrainWorker"):
    return {"lines": lines, "is_err": is_err, "pid": pid, "actor_name": actor_name, "ip": "10.0.0.1",
            "localhost": "10.0.0.1"}  # fmt: skip


def test_worker_lines_go_to_the_file_and_ours_to_the_console(log_file, capsys):
    from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

    router = logs.WorkerLogRouter(logs._worker_logger())
    router(_batch(["[train] iteration 25  loss 1.234", "Failed to query Ray Train Controller actor state"]))
    router(_batch(["2026-11-29 19:36:35,955\tINFO streaming_executor.py:215 -- Starting execution",
                   "Traceback (most recent call last):", "ConnectionError: Found multiple active Ray instances",
                   "[segment] 4 images", f'{{"{RAY_TQDM_MAGIC}": true, "x": 1}}'],
                  is_err=True, actor_name="PlacementGroupCleaner"))  # fmt: skip
    router({"lines": ["WARNING: 8 PYTHON worker processes have been started"], "pid": "raylet", "is_err": False})
    router({"lines": ["Task was killed due to the node running low on memory."], "pid": "raylet", "is_err": False},
           ignore_prefix=False)  # fmt: skip
    printed = capsys.readouterr()
    assert printed.out == "[train] iteration 25  loss 1.234\n", "our line once, as the worker wrote it"
    assert printed.err.splitlines() == [
        f"[logs] messages of Ray and other libraries go to {logs.log_path()}",
        "[segment] 4 images",
        "(raylet) Task was killed due to the node running low on memory.",
    ]
    written = log_file()
    for line in ("(RayTrainWorker pid=4242) [train] iteration 25",
                 "(RayTrainWorker pid=4242) Failed to query Ray Train Controller",
                 "(PlacementGroupCleaner pid=4242) 2026-11-29 19:36:35,955\tINFO streaming_executor.py",
                 "(PlacementGroupCleaner pid=4242) ConnectionError: Found multiple active Ray instances",
                 "(raylet) WARNING: 8 PYTHON worker processes", "(raylet) Task was killed"):  # fmt: skip
        assert line in written
    assert RAY_TQDM_MAGIC not in written, "Ray's progress bars drawn in workers are dropped"


def test_ray_driver_loggers_keep_only_errors_on_the_console_while_the_block_lasts(log_file, capsys):
    console = logging.StreamHandler()  # as Ray's PlainRayHandler: the console
    ray_data = logging.getLogger("ray.data")
    ray_data.addHandler(console)
    try:
        with logs.ray_logs_to_file():
            ray_data.info("Starting execution of Dataset dataset_0")
            logging.getLogger("ray.train.v2").warning("PlacementGroupCleaner: nothing to clean")
            ray_data.error("Dataset dataset_0 failed: disk full")
        assert console.level == logging.NOTSET, "restored"
    finally:
        ray_data.removeHandler(console)
    err = capsys.readouterr().err
    assert "Starting execution" not in err and "PlacementGroupCleaner" not in err
    assert "Dataset dataset_0 failed: disk full" in err
    written = log_file()
    assert "Starting execution of Dataset dataset_0" in written and "PlacementGroupCleaner" in written


def test_library_warnings_go_to_the_file_and_ours_stay(log_file, monkeypatch):
    shown = []  # what the console would show (Python's showwarning, as the block found it)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", lambda message, *args, **kwargs: shown.append(str(message)))
        with logs.library_warnings_to_file():
            warnings.warn_explicit("`dict` is deprecated", DeprecationWarning, "/site-packages/pydantic/main.py", 10)
            warnings.warn_explicit("no val shards", UserWarning, logs.__file__, 20)
    assert shown == ["no val shards"]
    assert "pydantic/main.py:10: DeprecationWarning: `dict` is deprecated" in log_file()
