"""``mrcnn predict`` applies the per-class score thresholds stored with a model; ``--class-thresholds
none|FILE`` and ``--score-threshold`` override them (in process: ``pipelines.cli.main``)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mrcnn.thresholds import CalibratedThresholds, ClassThreshold
from pipelines.cli import main
from tests.conftest import PHOTO

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@pytest.fixture()
def setup(tmp_path, small_checkpoint, monkeypatch):
    """(image path, a run of ``mrcnn predict`` returning (records, stderr), all records at threshold 0)."""
    monkeypatch.setenv("MRCNN_KEEP_FREED_MEMORY", "0")  # the test process keeps its malloc settings
    image = tmp_path / "photo.png"
    Image.open(PHOTO).convert("RGB").resize((96, 128)).save(image)

    def predict(model, *flags: str, capsys=None) -> list[dict]:
        out = tmp_path / "out.json"
        assert main(["predict", str(image), "--model", str(model), "--out", str(out), *flags]) == 0
        return json.loads(out.read_text())

    everything = predict(small_checkpoint, "--score-threshold", "0")
    assert len(everything) > 10
    return predict, everything


def _between(scores: list[float], fraction: float) -> float:
    """A threshold between two neighbouring distinct scores, ``fraction`` of the way up the sorted scores (the
    results json rounds scores: a threshold equal to one would cut where the rounding falls)."""
    distinct = sorted(set(scores))
    index = min(max(1, int(len(distinct) * fraction)), len(distinct) - 1)
    return (distinct[index - 1] + distinct[index]) / 2


def _key(records: list[dict]) -> list[tuple]:
    return [(r["category_id"], round(r["score"], 6), json.dumps(r["segmentation"])) for r in records]


def _filtered(records: list[dict], thresholds: dict[int, float], default: float, strict_default: bool = False) -> list[tuple]:
    if strict_default:  # the one global threshold: score > it
        return _key([r for r in records if r["score"] > default])
    return _key([r for r in records if r["score"] >= thresholds.get(r["category_id"], default)])


def test_predict_applies_stored_thresholds_unless_told_otherwise(tmp_path, setup, small_checkpoint, capsys):
    from mrcnn.checkpoint import load_checkpoint, save_checkpoint

    predict, everything = setup
    scores = sorted(r["score"] for r in everything)
    by_class: dict[int, list[float]] = {}
    for r in everything:
        by_class.setdefault(r["category_id"], []).append(r["score"])
    # Two classes at their median score (half kept), the rest left to the global default (0.5 here: most dropped).
    stored = {c: _between(s, 0.5) for c, s in sorted(by_class.items(), key=lambda item: -len(item[1]))[:2]}
    checkpoint = load_checkpoint(small_checkpoint)
    calibrated = CalibratedThresholds({c: ClassThreshold(c, t, 0.5, 0.5, 0.5, 10, 10, True) for c, t in stored.items()})
    model = save_checkpoint(tmp_path / "calibrated.ckpt", model=checkpoint.build_model(), config=checkpoint.config,
                            categories=checkpoint.categories, metadata={"thresholds": calibrated.to_dict()})  # fmt: skip
    capsys.readouterr()

    default = predict(model)
    assert 0 < len(default) < len(everything)
    assert _key(default) == _filtered(everything, stored, 0.5)
    assert "score thresholds: stored per-class for 2 classes (others 0.5)" in capsys.readouterr().err

    assert _key(predict(model, "--class-thresholds", "stored")) == _key(default)
    assert _key(predict(model, "--class-thresholds", "none")) == _filtered(everything, {}, 0.5, strict_default=True)
    assert "score threshold: global 0.5" in capsys.readouterr().err

    given = {c: _between(scores, 0.3) for c in by_class}
    file = tmp_path / "thresholds.json"
    file.write_text(json.dumps({str(c): t for c, t in given.items()}))
    from_file = predict(model, "--class-thresholds", str(file))
    assert 0 < len(from_file) < len(everything) and _key(from_file) == _filtered(everything, given, 0.5)
    assert f"score thresholds: given per-class for {len(given)} classes" in capsys.readouterr().err

    threshold = _between(scores, 0.5)
    assert _key(predict(model, "--score-threshold", str(threshold))) == _filtered(everything, {}, threshold, strict_default=True)
    assert f"score threshold: global {threshold:g}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--score-threshold", "0.3", "--class-thresholds", "stored"], "--score-threshold sets one global threshold"),
        (["--class-thresholds", "missing.json"], "no such file"),
        (["--class-thresholds", "{bad}"], "expected a json object"),
        (["--class-thresholds", "{unknown}"], "unknown category id 77"),
    ],
    ids=["with-score-threshold", "missing-file", "not-json", "unknown-category"],
)
def test_bad_class_thresholds_flag_gives_one_line_error(tmp_path, small_checkpoint, capsys, monkeypatch, flags, message):
    monkeypatch.setenv("MRCNN_KEEP_FREED_MEMORY", "0")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "{bad}").write_text("[1, 2]")
    (tmp_path / "{unknown}").write_text('{"77": 0.5}')
    assert main(["predict", str(PHOTO), "--model", str(small_checkpoint), "--out", "o.json", *flags]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mrcnn: error:")]
    assert len(errors) == 1 and message in errors[0] and "--class-thresholds" in errors[0]
