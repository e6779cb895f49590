"""Per-class score thresholds in the Predictor: stored, per call, overridden, read from a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrcnn.checkpoint import save_checkpoint
from mrcnn.config import get_preset
from mrcnn.data.categories import Category, CategoryMap
from mrcnn.modeling import build_model
from mrcnn.predictor import Predictor
from mrcnn.thresholds import (
    CalibratedThresholds,
    ClassThreshold,
    check_class_thresholds,
    stored_class_thresholds,
)

CATEGORIES = CategoryMap(categories=tuple(Category(id=i, name=n) for i, n in [(23, "triangle"), (7, "circle"),
                                                                               (90, "hexagon"), (11, "square"), (42, "star")]))  # fmt: skip

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@pytest.fixture(scope="module")
def model_and_config():
    torch.manual_seed(0)
    config = get_preset("r18_fpn_small").replace(**{"model.input.min_size": [128], "model.input.max_size": 192})
    return build_model(config), config


@pytest.fixture(scope="module")
def low(model_and_config) -> Predictor:
    """No class thresholds; global 0: every detection the model gives."""
    model, config = model_and_config
    return Predictor(model, config=config, categories=CATEGORIES, score_threshold=0.0)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    first[30:90, 40:110] = (250, 30, 30)
    return [first, rng.integers(0, 256, size=(150, 100, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def all_records(low, images):
    return low.predict(images)


def _thresholds_between(records) -> dict[int, float]:
    """Per class a threshold that keeps some of its detections and drops others (the median score), for the
    classes that have detections but one; that one is left to the predictor's global threshold."""
    by_class: dict[int, list[float]] = {}
    for r in (r for image in records for r in image):
        by_class.setdefault(r["category_id"], []).append(r["score"])
    classes = sorted(by_class, key=lambda c: -len(by_class[c]))
    assert len(classes) >= 3, "the random model should detect several classes"
    return {c: float(np.median(by_class[c])) for c in classes[:-1]}


def _manual(records, thresholds: dict[int, float], default: float):
    return [[r for r in image if r["score"] >= thresholds.get(r["category_id"], default)] for image in records]


def _same(got, expected) -> None:
    assert [len(g) for g in got] == [len(e) for e in expected]
    for g_image, e_image in zip(got, expected):
        for g, e in zip(g_image, e_image):
            assert (g["category_id"], g["segmentation"], g["area"]) == (e["category_id"], e["segmentation"], e["area"])
            assert g["score"] == pytest.approx(e["score"], rel=1e-5) and g["bbox"] == pytest.approx(e["bbox"], abs=1e-3)


def test_class_thresholds_keep_what_a_manual_filter_keeps(model_and_config, low, images, all_records):
    model, config = model_and_config
    thresholds = _thresholds_between(all_records)
    default = float(np.quantile([r["score"] for image in all_records for r in image], 0.3))
    predictor = Predictor(model, config=config, categories=CATEGORIES, score_threshold=default, class_thresholds=thresholds)
    expected = _manual(all_records, thresholds, default)
    assert 0 < sum(map(len, expected)) < sum(map(len, all_records))
    got = predictor.predict(images)
    _same(got, expected)
    # predict_raw, predict_each, and a per-call mapping on a predictor without any give the same detections.
    raw = predictor.predict_raw(images)
    assert [len(d["scores"]) for d in raw] == [len(e) for e in expected]
    low_raw = low.predict_raw(images)
    for d, full in zip(raw, low_raw):
        keep = torch.tensor([float(s) >= thresholds.get(CATEGORIES.category_id_of(int(l)), default)
                             for s, l in zip(full["scores"], full["labels"])], dtype=torch.bool)  # fmt: skip
        assert torch.equal(d["masks"], full["masks"][keep]) and torch.equal(d["labels"], full["labels"][keep])
    _same(predictor.predict_each(images), expected)
    _same(low.predict(images, class_thresholds=thresholds), _manual(all_records, thresholds, 0.0))
    # max_detections counts what the thresholds keep.
    _same(predictor.predict(images, max_detections=2), [e[:2] for e in expected])
    assert predictor.describe_thresholds() == f"score thresholds: per-class for {len(thresholds)} classes (others {default:g})"


def test_explicit_score_threshold_overrides_and_empty_map_disables(model_and_config, low, images, all_records):
    model, config = model_and_config
    thresholds = {c: 1.0 for c in CATEGORIES.category_ids}  # would drop everything
    predictor = Predictor(model, config=config, categories=CATEGORIES, score_threshold=0.0, class_thresholds=thresholds)
    assert predictor.predict(images) == [[], []]
    assert predictor.predict(images, score_threshold=0.0) == all_records  # one global threshold: the map is ignored
    assert predictor.predict(images, class_thresholds={}) == all_records  # {} = none: the global one only
    assert predictor.thresholds_in_force(score_threshold=0.3) == (0.3, {})
    assert predictor.describe_thresholds(class_thresholds={}) == "score threshold: global 0"
    # The filter Serve applies after one run at the lowest threshold of a batch.
    raw = low.predict_raw(images[:1])[0]
    assert len(predictor.filter_detections(raw)["scores"]) == 0
    assert torch.equal(predictor.filter_detections(raw, class_thresholds={})["scores"], raw["scores"][raw["scores"] > 0.0])
    assert predictor.run_threshold() < 1.0 and predictor.run_threshold(score_threshold=0.4) == 0.4


def test_bad_class_thresholds_are_refused(model_and_config, low, images):
    model, config = model_and_config
    with pytest.raises(ValueError, match="unknown category id 5"):
        Predictor(model, config=config, categories=CATEGORIES, class_thresholds={5: 0.5})
    with pytest.raises(ValueError, match=r"category 7 must be a number in \[0, 1\]"):
        low.predict(images, class_thresholds={7: 1.5})
    with pytest.raises(ValueError, match="'x' is not an integer"):
        check_class_thresholds({"x": 0.5}, CATEGORIES, source="t.json")
    assert check_class_thresholds({"7": 0.25, 11: 1}, CATEGORIES, source="t.json") == {7: 0.25, 11: 1.0}


def test_from_checkpoint_reads_the_stored_thresholds(tmp_path, model_and_config, images, all_records):
    model, config = model_and_config
    thresholds = _thresholds_between(all_records)
    calibrated = CalibratedThresholds({c: ClassThreshold(c, t, 0.5, 0.5, 0.5, 10, 10, True) for c, t in thresholds.items()})
    path = save_checkpoint(tmp_path / "m.ckpt", model=model, config=config, categories=CATEGORIES,
                           metadata={"thresholds": calibrated.to_dict()})  # fmt: skip
    loaded = Predictor.from_checkpoint(path, score_threshold=0.0)
    assert loaded.class_thresholds == thresholds
    _same(loaded.predict(images), _manual(all_records, thresholds, 0.0))
    assert Predictor.from_checkpoint(path, score_threshold=0.0, class_thresholds={}).class_thresholds == {}
    assert Predictor.from_checkpoint(path, class_thresholds={7: 0.3}).class_thresholds == {7: 0.3}
    plain = save_checkpoint(tmp_path / "p.ckpt", model=model, config=config, categories=CATEGORIES)
    assert Predictor.from_checkpoint(plain).class_thresholds == {}
    assert stored_class_thresholds({"thresholds": {"7": 0.2}}) == {7: 0.2} and stored_class_thresholds({}) is None
