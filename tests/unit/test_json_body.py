"""JSON request bodies read strictly: where the limits fall, and what stays allowed."""

from __future__ import annotations

import pytest

from hidream_service.api import json_body
from hidream_service.api.json_body import MAX_DEPTH, JsonBodyError


def nested(depth: int) -> bytes:
    return ("[" * (depth - 1) + "{}" + "]" * (depth - 1)).encode()


def test_nesting_up_to_the_limit_is_read_and_one_more_level_is_refused() -> None:
    assert json_body.loads(nested(MAX_DEPTH))
    with pytest.raises(JsonBodyError, match="nested deeper"):
        json_body.loads(nested(MAX_DEPTH + 1))


def test_nesting_past_python_s_recursion_limit_is_refused_the_same_way() -> None:
    with pytest.raises(JsonBodyError, match="nested deeper"):
        json_body.loads(nested(100_000))


@pytest.mark.parametrize("body", [b'{"a": "x\\ud800"}', b'{"\\udfff": 1}', b'[["\\udc00"]]', b'"\\ud800"'])
def test_a_lone_surrogate_anywhere_is_refused(body: bytes) -> None:
    with pytest.raises(JsonBodyError, match="surrogate"):
        json_body.loads(body)


def test_a_surrogate_pair_is_one_character_and_allowed() -> None:
    assert json_body.loads(b'{"emoji": "\\ud83d\\ude00"}') == {"emoji": "\N{GRINNING FACE}"}


@pytest.mark.parametrize("body", [b'{"n": NaN}', b'{"n": -Infinity}', b'{"n": 1e400}'])
def test_numbers_json_does_not_have_are_refused(body: bytes) -> None:
    with pytest.raises(JsonBodyError):
        json_body.loads(body)


@pytest.mark.parametrize(
    ("content_type", "is_json"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/merge-patch+json", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("text/json+", False),
        (None, False),
    ],
)
def test_json_media_types(content_type: str | None, is_json: bool) -> None:
    assert json_body.is_json(content_type) is is_json
