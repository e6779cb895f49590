"""Category map: COCO id <-> contiguous label <-> name."""

from __future__ import annotations

import json

import pytest

from mrcnn.data.categories import Category, CategoryMap

from .conftest import COCO_MINI_JSON


def test_sorted_by_id_and_labels_are_contiguous():
    categories = CategoryMap(
        categories=(Category(id=7, name="c"), Category(id=2, name="a", supercategory="s"), Category(id=4, name="b"))
    )
    assert [c.id for c in categories.categories] == [2, 4, 7]
    assert len(categories) == categories.num_classes == 3
    assert [categories.label_of(i) for i in (2, 4, 7)] == [1, 2, 3]
    assert [categories.category_id_of(label) for label in (1, 2, 3)] == [2, 4, 7]
    assert categories.names == ["a", "b", "c"]
    assert categories.name_of_label(3) == "c"
    assert categories.to_list()[0] == {"id": 2, "name": "a", "supercategory": "s", "label": 1}


def test_errors():
    categories = CategoryMap.from_names(["x", "y"])
    with pytest.raises(ValueError, match="unknown category id 5"):
        categories.label_of(5)
    for bad_label in (0, 3, -1, True):
        with pytest.raises(ValueError, match="1..2"):
            categories.category_id_of(bad_label)
    with pytest.raises(ValueError, match="duplicate category id 1"):
        CategoryMap(categories=(Category(id=1, name="a"), Category(id=1, name="b")))
    with pytest.raises(ValueError, match="needs 'id' and 'name'"):
        CategoryMap.from_list([{"id": 1}])
    with pytest.raises(ValueError, match="has label 1, but sorting by id gives label 2"):
        CategoryMap.from_list([{"id": 5, "name": "a", "label": 1}, {"id": 3, "name": "b", "label": 2}])


def test_coco_categories_roundtrip(tmp_path):
    coco = json.loads(COCO_MINI_JSON.read_text())
    categories = CategoryMap.from_coco(coco)
    assert categories.num_classes == 80
    assert categories.label_of(1) == 1 and categories.name_of_label(1) == "person"
    assert categories.label_of(90) == 80 and categories.name_of_label(80) == "toothbrush"
    assert CategoryMap.from_list(categories.to_list()) == categories
    path = tmp_path / "categories.json"
    categories.save_json(path)
    assert CategoryMap.load_json(path) == categories
    assert CategoryMap.load_json(COCO_MINI_JSON) == categories
    with pytest.raises(ValueError, match="categories"):
        CategoryMap.from_coco({"images": []}, source="x.json")
