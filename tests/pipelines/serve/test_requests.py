"""``pipelines.serve.requests``: query parsing, content types and the token check, without Serve."""

from __future__ import annotations

import base64

import pytest

from pipelines.serve import ApiError, bearer_token_ok, check_content_type, parse_segment_query


def test_query_parsing():
    assert parse_segment_query({}, default_threshold=0.5) == parse_segment_query([], default_threshold=0.5)
    query = parse_segment_query([("score_threshold", "0.25"), ("max_detections", "3"), ("mask_format", "polygon"),
                                 ("overlay", "true")], default_threshold=0.5)  # fmt: skip
    assert (query.score_threshold, query.max_detections, query.mask_format, query.overlay) == (0.25, 3, "polygon", True)
    bad = [("score_threshold", "-0.1"), ("score_threshold", "nan"), ("score_threshold", "inf"), ("score_threshold", ""),
           ("max_detections", "-1"), ("max_detections", "1.5"), ("max_detections", "99999999"), ("mask_format", "png"),
           ("overlay", "maybe"), ("colour", "red")]  # fmt: skip
    for key, value in bad:
        with pytest.raises(ApiError) as info:
            parse_segment_query([(key, value)], default_threshold=0.5)
        assert info.value.status == 422, (key, value)
    with pytest.raises(ApiError, match="more than once"):
        parse_segment_query([("overlay", "1"), ("overlay", "0")], default_threshold=0.5)


def test_class_thresholds_query():
    assert parse_segment_query([]).score_threshold is None and parse_segment_query([]).class_thresholds is None
    query = parse_segment_query([("class_thresholds", '{"1": 0.25, "7": 1}')], default_threshold=0.5, category_ids=[1, 7])
    assert (query.class_thresholds, query.score_threshold) == ({1: 0.25, 7: 1.0}, None)
    assert parse_segment_query([("class_thresholds", "{}")], category_ids=[1]).class_thresholds == {}
    bad = ['{"1": 1.5}', '{"1": "0.5"}', '{"1": true}', '{"x": 0.5}', '{"9": 0.5}', "[0.5]", "0.5", "{", '{"1": NaN}']
    for raw in bad:
        with pytest.raises(ApiError, match="class_thresholds") as info:
            parse_segment_query([("class_thresholds", raw)], category_ids=[1, 7])
        assert info.value.status == 422, raw
    with pytest.raises(ApiError, match="not both"):
        parse_segment_query([("class_thresholds", "{}"), ("score_threshold", "0.5")])


def test_content_type_and_token_checks():
    assert check_content_type("image/jpeg") == check_content_type(None) == check_content_type("application/octet-stream") == "raw"
    assert check_content_type("multipart/form-data; boundary=x") == "multipart"
    for content_type in ("text/plain", "application/json", "application/x-www-form-urlencoded"):
        with pytest.raises(ApiError) as info:
            check_content_type(content_type)
        assert info.value.status == 415
    basic = base64.b64encode(b"anyone:s3cret").decode()
    assert bearer_token_ok("Bearer s3cret", "s3cret") and bearer_token_ok(f"Basic {basic}", "s3cret")
    assert not any(bearer_token_ok(header, "s3cret") for header in (None, "", "Bearer", "Bearer s3cre", "Token s3cret", "Basic !!!"))

