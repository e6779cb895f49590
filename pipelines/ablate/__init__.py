"""``mrcnn ablate``: the Mask R-CNN paper's ablations (Table 2 and the multi-task comparison of Table 3),
reproduced with this project's training pipeline.

Every variant is the baseline (RoIAlign, per-class sigmoid masks, FCN mask head, mask branch on) with one
switch flipped, trained by ``pipelines.train.train`` (Ray Train, the code users train with) on the same
data, with the same seed(s), schedule and number of steps, then evaluated (COCO AP, bbox and segm) on the
val split. Each training run is an MLflow child run under one parent run, which holds the settings, the
comparison table (markdown and json) and a bar plot as artifacts.

The budget is equal in steps, as in the paper: ``steps_per_variant`` gives it directly (default 150); with
``minutes_per_variant`` the first variant trained (the baseline) trains for that long and its step count
becomes every other variant's budget (its learning rate decays at 80% of its minutes, the others' at 80%
of those steps: the same iteration when the speed is steady).

- :mod:`~pipelines.ablate.variants`: the variants and the paper's numbers.
- :mod:`~pipelines.ablate.report`: aggregation over seeds, the comparison with the paper, markdown, json, plot.
- :mod:`~pipelines.ablate.runner`: the data, training every (variant, seed), the MLflow parent run.
"""

from pipelines.ablate.report import (
    IOU_TYPES,
    PLOT_PNG,
    TABLE_JSON,
    TABLE_MD,
    TIE,
    SeedResult,
    aggregate,
    build_report,
    format_markdown,
    stat_names,
    write_plot,
    write_report,
)
from pipelines.ablate.runner import (
    DEFAULT_STEPS_PER_VARIANT,
    AblationConfig,
    AblationResult,
    failure_reason,
    prepare_data,
    run_ablation,
    seeds_from,
)
from pipelines.ablate.variants import BASELINE, COMPARISONS, PAPER, VARIANTS, Comparison, PaperResult, Variant, parse_variants

__all__ = [
    "BASELINE",
    "COMPARISONS",
    "DEFAULT_STEPS_PER_VARIANT",
    "IOU_TYPES",
    "PAPER",
    "PLOT_PNG",
    "TABLE_JSON",
    "TABLE_MD",
    "TIE",
    "VARIANTS",
    "AblationConfig",
    "AblationResult",
    "Comparison",
    "PaperResult",
    "SeedResult",
    "Variant",
    "aggregate",
    "build_report",
    "failure_reason",
    "format_markdown",
    "parse_variants",
    "prepare_data",
    "run_ablation",
    "seeds_from",
    "stat_names",
    "write_plot",
    "write_report",
]
