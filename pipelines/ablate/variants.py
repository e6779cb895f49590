"""The ablation variants: the baseline with one switch flipped, and the paper's numbers for each comparison
(He et al., "Mask R-CNN", Table 2 and the multi-task comparison of Table 3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BASELINE = "baseline"
PAPER = 'He, Gkioxari, Dollár, Girshick, "Mask R-CNN", ICCV 2017 (arXiv:1703.06870v3)'


@dataclass(frozen=True)
class Variant:
    """One ablation variant: the baseline's config with ``overrides`` (dotted keys of ``mrcnn.config.Config``)."""

    name: str
    overrides: Mapping[str, Any]
    description: str


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(BASELINE, {}, "Mask R-CNN: RoIAlign, per-class sigmoid masks, FCN mask head, mask branch on"),
        Variant("roi_pool", {"model.box_head.pooler": "roi_pool"},
                "RoIPool: RoI and bin edges rounded to the feature grid, max per bin (box and mask poolers)"),
        Variant("softmax", {"model.mask_head.loss": "softmax"},
                "per-pixel softmax across classes (multinomial masks: mask and class coupled)"),
        Variant("mlp", {"model.mask_head.head": "mlp"}, "MLP mask head: fc-1024, fc-1024, fc-(K+1)x28x28"),
        Variant("mask_off", {"model.mask_head.enabled": False}, "Faster R-CNN with RoIAlign: the mask branch off"),
    )
}  # fmt: skip


@dataclass(frozen=True)
class PaperResult:
    """The paper's numbers for one comparison: (AP, AP50, AP75) of the ablated variant and of Mask R-CNN's choice."""

    table: str
    setting: str
    variant: tuple[float, float, float]
    reference: tuple[float, float, float]


@dataclass(frozen=True)
class Comparison:
    """One row of the paper's ablations: ``variant`` against ``reference`` (Mask R-CNN's choice) on ``iou_type``."""

    name: str
    title: str
    variant: str
    reference: str
    iou_type: str
    paper: tuple[PaperResult, ...]


COMPARISONS: tuple[Comparison, ...] = (
    Comparison("alignment", "RoIPool vs RoIAlign", "roi_pool", BASELINE, "segm", (
        PaperResult("2c", "ResNet-50-C4 (stride 16)", (26.9, 48.8, 26.4), (30.3, 51.2, 31.5)),
        PaperResult("2d", "ResNet-50-C5 (stride 32)", (23.6, 46.5, 21.6), (30.9, 51.8, 32.1)),
    )),
    Comparison("mask_output", "softmax vs per-class sigmoid", "softmax", BASELINE, "segm", (
        PaperResult("2b", "ResNet-50-C4", (24.8, 44.1, 25.1), (30.3, 51.2, 31.5)),
    )),
    Comparison("mask_head", "MLP vs FCN mask head", "mlp", BASELINE, "segm", (
        PaperResult("2e", "ResNet-50-FPN", (31.5, 53.7, 32.8), (33.6, 55.2, 35.3)),
    )),
    Comparison("multi_task", "Faster R-CNN vs Mask R-CNN (box AP)", "mask_off", BASELINE, "bbox", (
        PaperResult("3", "ResNet-101-FPN, test-dev", (37.3, 59.6, 40.3), (38.2, 60.3, 41.7)),
    )),
)  # fmt: skip


def parse_variants(names: str | Sequence[str] | None) -> list[Variant]:
    """Variants by name (comma-separated string or list), in the canonical order; None or "all": every one.

    Raises:
        ValueError: an unknown name (the message lists the known ones), or an empty selection.
    """
    if names is None or names == "all" or names == ["all"]:
        return list(VARIANTS.values())
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"variants: unknown {unknown}; known: {list(VARIANTS)}")
    if not names:
        raise ValueError(f"variants: none selected; known: {list(VARIANTS)}")
    return [v for v in VARIANTS.values() if v.name in set(names)]

