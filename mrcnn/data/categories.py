"""The category map: COCO category id <-> contiguous training label <-> name.

COCO ids are sparse (1..90 for 80 classes). The model predicts contiguous labels
``1..K`` with ``0`` reserved for background. Label ``i + 1`` belongs to the ``i``-th
category in ascending COCO id order. The map is written once per dataset and travels in
every checkpoint and served response (``to_list()`` / ``from_list()``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Category", "CategoryMap"]


@dataclass(frozen=True)
class Category:
    """One object category.

    Attributes:
        id (int): the dataset's (COCO) category id; any int, need not be contiguous.
        name (str): human name, e.g. ``"person"``.
        supercategory (str): COCO supercategory, ``""`` if none.
    """

    id: int
    name: str
    supercategory: str = ""


@dataclass(frozen=True)
class CategoryMap:
    """Categories sorted by id, with contiguous labels ``1..K`` (0 = background).

    Build with ``CategoryMap(categories=(...))`` (any order; stored sorted by id),
    :meth:`from_coco`, :meth:`from_list`, :meth:`from_names` or :meth:`load_json`.

    Raises:
        ValueError: duplicate category ids, or an entry that is not a :class:`Category`.
    """

    categories: tuple[Category, ...]
    _label_by_id: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        categories = tuple(self.categories)
        for category in categories:
            if not isinstance(category, Category):
                raise ValueError(f"CategoryMap entries must be Category, got {type(category).__name__}")
            if not isinstance(category.id, int) or isinstance(category.id, bool):
                raise ValueError(f"category id must be an int, got {category.id!r} ({category.name!r})")
        ordered = tuple(sorted(categories, key=lambda c: c.id))
        seen: dict[int, str] = {}
        for category in ordered:
            if category.id in seen:
                raise ValueError(
                    f"duplicate category id {category.id}: {seen[category.id]!r} and {category.name!r}"
                )
            seen[category.id] = category.name
        object.__setattr__(self, "categories", ordered)
        object.__setattr__(self, "_label_by_id", {c.id: index + 1 for index, c in enumerate(ordered)})

    @property
    def num_classes(self) -> int:
        """K, the number of categories, not counting background."""
        return len(self.categories)

    def __len__(self) -> int:
        return len(self.categories)

    @property
    def names(self) -> list[str]:
        """Category names; ``names[label - 1]`` is the name of ``label``."""
        return [c.name for c in self.categories]

    @property
    def category_ids(self) -> list[int]:
        """COCO ids in label order; ``category_ids[label - 1]`` is the id of ``label``."""
        return [c.id for c in self.categories]

    def __contains__(self, category_id: object) -> bool:
        return category_id in self._label_by_id

    def label_of(self, category_id: int) -> int:
        """Contiguous label (1..K) of a COCO category id.

        Raises:
            ValueError: the id is not in the map.
        """
        try:
            return self._label_by_id[category_id]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown category id {category_id!r}; known ids: {self.category_ids}"
            ) from None

    def _check_label(self, label: int) -> None:
        if isinstance(label, bool) or not isinstance(label, int) or not 1 <= label <= len(self.categories):
            raise ValueError(
                f"label must be an int in 1..{len(self.categories)} (0 is background), got {label!r}"
            )

    def category_id_of(self, label: int) -> int:
        """COCO category id of a contiguous label (1..K).

        Raises:
            ValueError: label outside 1..K.
        """
        self._check_label(label)
        return self.categories[label - 1].id

    def name_of_label(self, label: int) -> str:
        """Name of a contiguous label (1..K).

        Raises:
            ValueError: label outside 1..K.
        """
        self._check_label(label)
        return self.categories[label - 1].name

    def to_list(self) -> list[dict]:
        """``[{"id", "name", "supercategory", "label"}, ...]`` in label order (json-ready)."""
        return [
            {"id": c.id, "name": c.name, "supercategory": c.supercategory, "label": index + 1}
            for index, c in enumerate(self.categories)
        ]

    @classmethod
    def from_list(cls, entries: Iterable[Mapping], *, source: str = "<list>") -> CategoryMap:
        """Build from dicts with ``id`` and ``name`` (``supercategory``, ``label`` optional).

        Args:
            entries: COCO ``categories`` entries or the output of :meth:`to_list`.
            source (str): where the entries came from; used in error messages.

        Raises:
            ValueError: missing/ill-typed fields, duplicate ids, or a ``label`` that disagrees
                with the label this map assigns (a map saved by another convention).
        """
        entries = list(entries)
        categories = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or "id" not in entry or "name" not in entry:
                raise ValueError(f"{source}: category entry {index} needs 'id' and 'name', got {entry!r}")
            category_id, name = entry["id"], entry["name"]
            if isinstance(category_id, bool) or not isinstance(category_id, int) or not isinstance(name, str):
                raise ValueError(
                    f"{source}: category entry {index} needs an int id and a str name, got {entry!r}"
                )
            supercategory = str(entry.get("supercategory") or "")
            categories.append(Category(id=category_id, name=name, supercategory=supercategory))
        try:
            result = cls(categories=tuple(categories))
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        for entry in entries:
            if "label" in entry and entry["label"] != result.label_of(entry["id"]):
                raise ValueError(
                    f"{source}: category {entry['id']} ({entry['name']!r}) has label {entry['label']}, but "
                    f"sorting by id gives label {result.label_of(entry['id'])}"
                )
        return result

    @classmethod
    def from_coco(cls, coco: Mapping, *, source: str = "<dict>") -> CategoryMap:
        """Build from a COCO dataset dict (its ``categories`` list).

        Raises:
            ValueError: no ``categories`` list, or see :meth:`from_list`.
        """
        if not isinstance(coco, Mapping) or not isinstance(coco.get("categories"), list):
            raise ValueError(f"{source}: expected a COCO dict with a 'categories' list")
        return cls.from_list(coco["categories"], source=source)

    @classmethod
    def from_names(cls, names: Sequence[str], *, supercategory: str = "") -> CategoryMap:
        """Categories with ids ``1..K`` in the given order (so label == id)."""
        return cls(
            categories=tuple(Category(id=i + 1, name=n, supercategory=supercategory) for i, n in enumerate(names))
        )

    def save_json(self, path: str | os.PathLike) -> None:
        """Write ``{"categories": to_list()}``; also a valid COCO ``categories`` block."""
        Path(path).write_text(json.dumps({"categories": self.to_list()}, indent=1) + "\n")

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> CategoryMap:
        """Read a file written by :meth:`save_json`, a bare list, or any COCO json.

        Raises:
            ValueError: not json, or no category list (the message names the file).
        """
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid json ({exc})") from None
        if isinstance(data, list):
            return cls.from_list(data, source=str(path))
        return cls.from_coco(data, source=str(path))
