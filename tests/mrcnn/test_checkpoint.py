"""The checkpoint format: round trip, weights_only loading, and clear errors for bad files."""

from __future__ import annotations

import pickle

import pytest
import torch

from mrcnn.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from mrcnn.config import get_preset
from mrcnn.data.categories import Category, CategoryMap
from mrcnn.modeling import build_model

CATEGORIES = CategoryMap(
    categories=(
        Category(id=17, name="cat", supercategory="animal"),
        Category(id=3, name="car", supercategory="vehicle"),
        Category(id=44, name="bottle"),
        Category(id=5, name="airplane", supercategory="vehicle"),
        Category(id=90, name="toothbrush"),
    )
)


@pytest.fixture(scope="module")
def config():
    return get_preset("r18_fpn_small").replace(
        **{
            "model.input.min_size": [96],
            "model.input.max_size": 128,
            "model.box_head.score_thresh": 0.0,
            "model.box_head.detections_per_img": 20,
        }
    )


@pytest.fixture(scope="module")
def model(config):
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():  # make the BN running stats non-trivial so they must be saved too
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 90, 120, generator=g), torch.rand(3, 100, 80, generator=g)]


def test_round_trip(tmp_path, config, model, images):
    metadata = {"step": 1200, "metrics": {"bbox_AP": 12.5}, "git_commit": "abc123", "tags": ["a", "b"]}
    training_state = {"optimizer": {"lr": 0.01}, "iteration": 1200}
    path = save_checkpoint(
        tmp_path / "sub" / "model.pt",
        model=model,
        config=config,
        categories=CATEGORIES,
        metadata=metadata,
        training_state=training_state,
    )
    assert path.is_file() and not path.with_name(path.name + ".tmp").exists()

    raw = torch.load(path, weights_only=True)  # only tensors and builtins inside
    assert raw["format"] == CHECKPOINT_FORMAT and raw["version"] == CHECKPOINT_VERSION
    assert raw["config"] == config.to_dict()

    checkpoint = load_checkpoint(path)
    assert checkpoint.source_format == "mrcnn"
    assert checkpoint.config == config
    assert checkpoint.categories.categories == CATEGORIES.categories
    assert checkpoint.categories.category_ids == [3, 5, 17, 44, 90]
    assert checkpoint.metadata == metadata
    assert checkpoint.training_state == training_state

    restored = checkpoint.build_model().eval()
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    with torch.no_grad():
        expected = model(images).detections
        got = restored(images).detections
    assert len(expected[0]["scores"]) > 0
    for a, b in zip(got, expected):
        for key in ("boxes", "labels", "scores", "masks"):
            assert torch.equal(a[key], b[key]), key


def test_ddp_style_wrapper_is_unwrapped(tmp_path, config, model):
    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    path = save_checkpoint(tmp_path / "m.pt", model=Wrapper(model), config=config, categories=CATEGORIES)
    state = load_checkpoint(path).model_state
    assert set(state) == set(model.state_dict())


def test_num_classes_mismatch_on_save(tmp_path, config, model):
    four = CategoryMap.from_names(["a", "b", "c", "d"])
    with pytest.raises(CheckpointError, match="config has 5 classes but the category map has 4"):
        save_checkpoint(tmp_path / "m.pt", model=model, config=config, categories=four)
    assert not (tmp_path / "m.pt").exists()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00\x01 this is not a checkpoint \xff" * 10)
    with pytest.raises(CheckpointError, match=r"garbage\.pt: not a readable checkpoint"):
        load_checkpoint(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


class _Arbitrary:
    def __init__(self):
        self.value = 3


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda p: p.write_bytes(pickle.dumps({"a": 1, "b": [1, 2]})), id="plain-pickle-dict"),
        pytest.param(lambda p: p.write_bytes(pickle.dumps(_Arbitrary())), id="plain-pickle-object"),
        pytest.param(lambda p: torch.save(_Arbitrary(), p), id="torch-save-object"),
    ],
)
def test_unreadable_pickles(tmp_path, write):
    path = tmp_path / "x.pt"
    write(path)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({"a": 1, "b": "two"}, id="dict"),
        pytest.param([torch.zeros(2)], id="list"),
        pytest.param({"backbone.body.conv1.weight": torch.zeros(2)}, id="other-state-dict"),
        pytest.param({"model": {"layer.weight": torch.zeros(2)}}, id="references-style-other-model"),
    ],
)
def test_readable_but_not_a_checkpoint(tmp_path, obj):
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="neither an mrcnn checkpoint nor a torchvision Mask R-CNN state dict"):
        load_checkpoint(path)


def _resave(tmp_path, good_config, good_model, **changes):
    """A valid checkpoint rewritten with some top-level entries changed."""
    path = save_checkpoint(tmp_path / "good.pt", model=good_model, config=good_config, categories=CATEGORIES)
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    return bad


@pytest.mark.parametrize("version", [2, 0, None, "1"])
def test_wrong_version(tmp_path, config, model, version):
    path = _resave(tmp_path, config, model, version=version)
    with pytest.raises(CheckpointError, match=f"format version {version!r}, this code reads 1"):
        load_checkpoint(path)


def test_bad_config_in_checkpoint(tmp_path, config, model):
    data = config.to_dict()
    data["model"]["box_head"]["pooler"] = "foo"
    path = _resave(tmp_path, config, model, config=data)
    with pytest.raises(CheckpointError, match="bad config or categories.*box_head.pooler"):
        load_checkpoint(path)


def test_state_dict_that_does_not_fit_the_config(tmp_path, config, model):
    # Weights of the per-class mask head under a class-agnostic config: shapes differ.
    agnostic = config.replace(**{"model.mask_head.class_agnostic": True})
    path = _resave(tmp_path, config, model, config=agnostic.to_dict())
    checkpoint = load_checkpoint(path)
    with pytest.raises(CheckpointError, match="weights do not fit preset 'r18_fpn_small'"):
        checkpoint.build_model()


def test_bare_state_dict_with_wrong_or_unknown_arch(tmp_path, model):
    path = tmp_path / "bare.pt"
    torch.save(model.state_dict(), path)  # an r18 layout, as a bare state dict
    checkpoint = load_checkpoint(path, arch="r50_fpn")
    assert checkpoint.source_format == "torchvision"
    assert checkpoint.config.model.num_classes == 5
    assert checkpoint.categories.names == [f"class_{i}" for i in range(1, 6)]
    with pytest.raises(CheckpointError, match="weights do not fit preset 'r50_fpn'"):
        checkpoint.build_model()
    with pytest.raises(CheckpointError, match="unknown preset 'r999'"):
        load_checkpoint(path, arch="r999")
    # With the right preset the bare state dict loads.
    load_checkpoint(path, arch="r18_fpn_small").build_model()


_MISSING = object()


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"model": _MISSING}, id="model-missing"),
        pytest.param({"config": None}, id="config-none"),
        pytest.param({"categories": None}, id="categories-none"),
        pytest.param({"categories": CATEGORIES.to_list()[:3]}, id="3-categories-for-5-classes"),
    ],
)
def test_malformed_mrcnn_payload_is_a_checkpoint_error(tmp_path, config, model, changes):
    path = save_checkpoint(tmp_path / "good.pt", model=model, config=config, categories=CATEGORIES)
    payload = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if value is _MISSING:
            del payload[key]
        else:
            payload[key] = value
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "bad.pt")
