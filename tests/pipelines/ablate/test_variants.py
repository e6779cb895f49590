"""`mrcnn ablate`'s variants: selection by name, in the canonical order."""

from __future__ import annotations

import pytest

from pipelines.ablate import BASELINE, VARIANTS, parse_variants


def test_parse_variants():
    assert [v.name for v in parse_variants(None)] == list(VARIANTS)
    assert [v.name for v in parse_variants("mask_off, baseline")] == [BASELINE, "mask_off"]  # canonical order
    with pytest.raises(ValueError, match=r"unknown \['roialign'\]; known: \['baseline', 'roi_pool'"):
        parse_variants("baseline,roialign")
    with pytest.raises(ValueError, match="none selected"):
        parse_variants(",")

