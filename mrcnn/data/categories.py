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
        keypoints (tuple[str, ...]): names of the category's K keypoints (COCO keypoint json); empty if none.
        skeleton (tuple[tuple[int, int], ...]): keypoint pairs joined when drawn, 1-based as in COCO.
        keypoint_sigmas (tuple[float, ...]): OKS sigma per keypoint; empty = COCO's for its person
            keypoints, else ``mrcnn.data.keypoints.DEFAULT_KEYPOINT_SIGMA`` (see :attr:`oks_sigmas`).
    """

    id: int
    name: str
    supercategory: str = ""
    keypoints: tuple[str, ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()
    keypoint_sigmas: tuple[float, ...] = ()

    @property
    def oks_sigmas(self) -> tuple[float, ...]:
        """The OKS sigma of each keypoint: the category's own, else the default for its keypoint names."""
        from mrcnn.data.keypoints import default_keypoint_sigmas

        return self.keypoint_sigmas or default_keypoint_sigmas(self.keypoints)

    def check_keypoints(self) -> None:
        """Raise ValueError (naming the category) on ill-formed keypoint names, skeleton or sigmas."""
        where = f"category {self.id} ({self.name!r})"
        K = len(self.keypoints)
        if not all(isinstance(n, str) and n for n in self.keypoints) or len(set(self.keypoints)) != K:
            raise ValueError(f"{where}: keypoints must be distinct non-empty names, got {list(self.keypoints)}")
        for pair in self.skeleton:
            if len(pair) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= K for i in pair):
                raise ValueError(f"{where}: skeleton pair {list(pair)} must be two keypoint numbers in 1..{K} (1-based)")
        if self.keypoint_sigmas and (
            len(self.keypoint_sigmas) != K or not all(isinstance(v, float) and v > 0 for v in self.keypoint_sigmas)
        ):
            raise ValueError(f"{where}: keypoint_sigmas must be {K} positive numbers, got {list(self.keypoint_sigmas)}")

    def to_dict(self) -> dict:
        """COCO category fields; ``keypoints``, ``skeleton``, ``keypoint_sigmas`` only when the category has them."""
        entry: dict = {"id": self.id, "name": self.name, "supercategory": self.supercategory}
        if self.keypoints:
            entry["keypoints"] = list(self.keypoints)
            entry["skeleton"] = [list(pair) for pair in self.skeleton]
        if self.keypoint_sigmas:
            entry["keypoint_sigmas"] = list(self.keypoint_sigmas)
        return entry


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
            if not -(2**63) <= category.id < 2**63:
                raise ValueError(f"category id must fit in int64 (ids are stored as int64), got {category.id} ({category.name!r})")
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
        for category in ordered:
            category.check_keypoints()
        counts = {len(c.keypoints) for c in ordered if c.keypoints}
        if len(counts) > 1:
            raise ValueError(
                "categories with keypoints must all have the same number (one keypoint head predicts them), got "
                + ", ".join(f"{c.name!r}: {len(c.keypoints)}" for c in ordered if c.keypoints)
            )

    @property
    def keypoint_category(self) -> Category | None:
        """The first category that has keypoints (all such categories have K of them), or None."""
        return next((c for c in self.categories if c.keypoints), None)

    @property
    def num_keypoints(self) -> int:
        """K, the keypoints per instance of a keypoint category; 0 when no category has keypoints."""
        category = self.keypoint_category
        return len(category.keypoints) if category else 0

    @property
    def skeletons(self) -> dict[int, tuple[tuple[int, int], ...]]:
        """``{category id: skeleton}`` (1-based pairs) of the categories with keypoints."""
        return {c.id: c.skeleton for c in self.categories if c.keypoints}

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
        """``[{"id", "name", "supercategory", "label"}, ...]`` in label order (json-ready); keypoint categories
        also carry ``keypoints``, ``skeleton`` and, when set, ``keypoint_sigmas``."""
        return [c.to_dict() | {"label": index + 1} for index, c in enumerate(self.categories)]

    @classmethod
    def from_list(cls, entries: Iterable[Mapping], *, source: str = "<list>") -> CategoryMap:
        """Build from dicts with ``id`` and ``name`` (``supercategory``, ``label``, and COCO keypoint json's
        ``keypoints`` and ``skeleton`` plus our ``keypoint_sigmas`` optional).

        Args:
            entries: COCO ``categories`` entries or the output of :meth:`to_list`.
            source (str): where the entries came from; used in error messages.

        Raises:
            ValueError: missing/ill-typed fields, duplicate ids, a ``label`` that disagrees
                with the label this map assigns (a map saved by another convention), ill-formed
                keypoint names, skeleton or sigmas, or keypoint categories with different K.
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
            keypoint_fields = _keypoint_fields(entry, source=source, index=index)
            categories.append(Category(id=category_id, name=name, supercategory=supercategory, **keypoint_fields))
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


def _keypoint_fields(entry: Mapping, *, source: str, index: int) -> dict:
    """``keypoints``, ``skeleton``, ``keypoint_sigmas`` of a category entry as Category fields (checked later)."""
    fields: dict = {}
    where = f"{source}: category entry {index} ({entry.get('name')!r})"
    names = entry.get("keypoints") or []
    skeleton = entry.get("skeleton") or []
    sigmas = entry.get("keypoint_sigmas") or []
    for key, value in (("keypoints", names), ("skeleton", skeleton), ("keypoint_sigmas", sigmas)):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: '{key}' must be a list, got {value!r:.100}")
    if skeleton and not names:
        raise ValueError(f"{where}: has a skeleton but no keypoints")
    if not all(isinstance(pair, (list, tuple)) for pair in skeleton):
        raise ValueError(f"{where}: 'skeleton' must be a list of [a, b] pairs, got {skeleton!r:.100}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sigmas):
        raise ValueError(f"{where}: 'keypoint_sigmas' must be numbers, got {sigmas!r:.100}")
    if names:
        fields["keypoints"] = tuple(names)
        fields["skeleton"] = tuple(tuple(pair) for pair in skeleton)
    if sigmas:
        fields["keypoint_sigmas"] = tuple(float(v) for v in sigmas)
    return fields
