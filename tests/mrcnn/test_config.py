"""Config dataclasses: dict round trip, validation errors, dotted overrides, presets, flattening."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mrcnn.config import PRESETS, Config, ConfigError, SolverConfig, flatten, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_round_trips_through_plain_dicts_and_json(name):
    cfg = get_preset(name)
    assert cfg.name == name
    data = cfg.to_dict()
    assert isinstance(data["model"]["rpn"]["anchor_sizes"], list)  # tuples become lists
    text = json.dumps(data)  # json/YAML-ready, as for Ray's train_loop_config
    restored = Config.from_dict(json.loads(text))
    assert restored == cfg
    assert isinstance(restored.model.rpn.anchor_sizes, tuple)
    assert restored.to_dict() == data


def test_presets_differ_where_they_should():
    r50, v2, r101, small = (get_preset(n) for n in ("r50_fpn", "r50_fpn_v2", "r101_fpn", "r18_fpn_small"))
    assert (r50.model.backbone.depth, r101.model.backbone.depth, small.model.backbone.depth) == (50, 101, 18)
    assert v2.model.box_head.head == "4conv1fc" and v2.model.rpn.head_conv_depth == 2
    assert r50.model.num_classes == 90 and small.model.num_classes == 5
    assert r50.model.box_head.aligned is False  # torchvision's model


def test_partial_dict_fills_defaults():
    cfg = Config.from_dict({"model": {"num_classes": 3, "rpn": {"nms_thresh": 0.6}}})
    assert cfg.model.num_classes == 3
    assert cfg.model.rpn.nms_thresh == 0.6
    assert cfg.model.rpn.fg_iou_thresh == 0.7 and cfg.solver == SolverConfig()


def test_unknown_key_names_the_key_and_where():
    with pytest.raises(ConfigError, match=r"config\.model\.rpn: unknown key\(s\) \['nms_threshold'\]"):
        Config.from_dict({"model": {"rpn": {"nms_threshold": 0.6}}})
    with pytest.raises(ConfigError, match=r"config: unknown key\(s\) \['modle'\]"):
        Config.from_dict({"modle": {}})


def test_bad_choice_is_rejected():
    with pytest.raises(ConfigError, match=r"box_head\.pooler: expected one of \['roi_align', 'roi_pool'\], got 'foo'"):
        get_preset("r50_fpn").replace(**{"model.box_head.pooler": "foo"})
    with pytest.raises(ConfigError, match="backbone.depth"):
        Config.from_dict({"model": {"backbone": {"depth": 152}}})
    with pytest.raises(ConfigError, match="mask_head.loss"):
        Config.from_dict({"model": {"mask_head": {"loss": "dice"}}})


def test_wrong_types_are_rejected_and_numbers_coerced():
    with pytest.raises(ConfigError, match=r"config\.model\.num_classes: expected int, got 'five'"):
        Config.from_dict({"model": {"num_classes": "five"}})
    with pytest.raises(ConfigError, match=r"config\.model\.rpn: expected a mapping"):
        Config.from_dict({"model": {"rpn": 3}})
    with pytest.raises(ConfigError, match=r"min_size: expected a list"):
        Config.from_dict({"model": {"input": {"min_size": 320}}})
    cfg = Config.from_dict({"model": {"num_classes": 7.0, "rpn": {"nms_thresh": 1}}})
    assert cfg.model.num_classes == 7 and isinstance(cfg.model.num_classes, int)
    assert isinstance(cfg.model.rpn.nms_thresh, float)


def test_replace_with_dotted_keys():
    base = get_preset("r50_fpn")
    cfg = base.replace(**{"model.input.min_size": [320, 352], "model.box_head.pooler": "roi_pool", "solver.base_lr": 0.01})
    assert cfg.model.input.min_size == (320, 352)
    assert cfg.model.box_head.pooler == "roi_pool"
    assert cfg.solver.base_lr == 0.01
    assert cfg.name == "r50_fpn"
    assert base.model.box_head.pooler == "roi_align"  # the original is unchanged (frozen)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.model.num_classes = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"override 'model\.box_head\.poler': no key 'poler'"):
        base.replace(**{"model.box_head.poler": "roi_pool"})
    with pytest.raises(ConfigError, match=r"override 'model\.boxhead\.pooler': no section 'boxhead'"):
        base.replace(**{"model.boxhead.pooler": "roi_pool"})


def test_replace_validates():
    with pytest.raises(ConfigError, match="max_size"):
        get_preset("r50_fpn").replace(**{"model.input.min_size": [900], "model.input.max_size": 800})
    with pytest.raises(ConfigError, match="solver.steps"):
        get_preset("r50_fpn").replace(**{"solver.steps": [0.5, 1.5]})


def test_get_preset_unknown_lists_presets():
    with pytest.raises(ConfigError) as info:
        get_preset("r152_fpn")
    message = str(info.value)
    assert "r152_fpn" in message
    for name in PRESETS:
        assert name in message


def test_flatten():
    assert flatten({"model": {"rpn": {"nms_thresh": 0.7}, "num_classes": 3}, "name": "x"}) == {
        "model.rpn.nms_thresh": 0.7,
        "model.num_classes": 3,
        "name": "x",
    }
    flat = flatten(get_preset("r50_fpn").to_dict())
    assert flat["model.box_head.pooler"] == "roi_align"
    assert flat["solver.base_lr"] == 0.02
    assert not any(isinstance(v, dict) for v in flat.values())
    # Every flattened key is a valid dotted override.
    assert get_preset("r50_fpn").replace(**flat) == get_preset("r50_fpn")


def test_softmax_with_class_agnostic_is_rejected():
    with pytest.raises(ConfigError, match="class_agnostic must be False"):
        get_preset("r50_fpn").replace(**{"model.mask_head.loss": "softmax", "model.mask_head.class_agnostic": True})
    # Each alone is fine.
    get_preset("r50_fpn").replace(**{"model.mask_head.loss": "softmax"})
    get_preset("r50_fpn").replace(**{"model.mask_head.class_agnostic": True})


def test_scaled_lr_linear_scaling_rule():
    solver = SolverConfig(base_lr=0.02, reference_batch_size=16, batch_size=8)
    assert solver.scaled_lr() == pytest.approx(0.01)  # default: the config's own batch
    assert solver.scaled_lr(16) == pytest.approx(0.02)
    assert solver.scaled_lr(64) == pytest.approx(0.08)
    assert solver.scaled_lr(2) == pytest.approx(0.0025)
    small = get_preset("r18_fpn_small").solver
    assert small.scaled_lr(32) == pytest.approx(1e-3 * 32 / 8)


def test_mask_resolution_is_twice_the_pooler():
    assert get_preset("r50_fpn").model.mask_head.resolution == 28
    assert get_preset("r50_fpn").replace(**{"model.mask_head.pooler_resolution": 7}).model.mask_head.resolution == 14


# ---------------------------------------------------------------- numbers as people write them (issue 16, A.5)
def test_load_yaml_reads_yaml12_floats(tmp_path):
    from mrcnn.config import load_yaml

    path = tmp_path / "run.yaml"
    path.write_text("a: 1e-4\nb: 2E-4\nc: .5\nd: 1_000\ne: 1.0e-3\nf: 3\ng: -1e+2\nh: '1e-4'\ni: 1e\n")
    data = load_yaml(path)
    assert data == {"a": 1e-4, "b": 2e-4, "c": 0.5, "d": 1000, "e": 1e-3, "f": 3, "g": -100.0, "h": "1e-4", "i": "1e"}
    assert [type(data[k]) for k in "abcdefg"] == [float, float, float, int, float, int, float]


@pytest.mark.parametrize("text, expected", [("1e-4", 1e-4), ("2E-4", 2e-4), (".5", 0.5), ("1_000", 1000), ("+3", 3),
                                            ("1.", 1.0), ("abc", None), ("1e", None), ("0x10", None), ("", None)])  # fmt: skip
def test_parse_number(text, expected):
    from mrcnn.config import parse_number

    assert parse_number(text) == expected and type(parse_number(text)) is type(expected)


def test_replace_takes_numbers_written_as_strings():
    """A YAML 1.1 reader leaves ``2e-4`` a string; the config still reads it as the number, and refuses a non-number."""
    from mrcnn.config import ConfigError, get_preset

    cfg = get_preset("r18_fpn_small").replace(**{"solver.base_lr": "2e-4", "solver.max_iters": "1e3"})
    assert cfg.solver.base_lr == pytest.approx(2e-4) and cfg.solver.max_iters == 1000
    with pytest.raises(ConfigError, match="solver.base_lr: expected float, got 'fast'"):
        get_preset("r18_fpn_small").replace(**{"solver.base_lr": "fast"})
    with pytest.raises(ConfigError, match="solver.max_iters: expected int"):
        get_preset("r18_fpn_small").replace(**{"solver.max_iters": "1.5"})
