"""A JSON request body read strictly: what Python's json accepts but no job may hold.

- a media type other than JSON: a web page may send `text/plain` or a form anywhere without asking
  first (CORS's "simple requests"), so a JSON route refuses them rather than reading them as JSON;
- NaN and Infinity, which JSON does not have, and numbers too large for a float;
- nesting deeper than MAX_DEPTH: json.loads recurses (a RecursionError past ~1000 levels), and so
  do pydantic, the store and every renderer after it;
- a lone UTF-16 surrogate escaped in a string (`"\\ud800"`): Python keeps it, but no UTF-8 database
  row, file or response can, so it would fail far from here (in a worker, writing the job's ending).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

#: Far more than any input here nests (Replicate's `input` object, lists of image URLs: 3 or 4).
MAX_DEPTH = 64


class JsonBodyError(ValueError):
    """The body is JSON this service does not take; the message says why."""


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON: application/json or application/<anything>+json."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def loads(raw: bytes) -> Any:
    """Parse `raw`, refusing what the module docstring lists; raises JsonBodyError (or the
    JSONDecodeError / UnicodeDecodeError of a malformed body: all ValueErrors)."""
    try:
        value = json.loads(raw, parse_constant=_not_json, parse_float=_finite_float)
    except RecursionError:
        raise JsonBodyError(f"nested deeper than {MAX_DEPTH} levels") from None
    _check_nesting_and_text(value)
    return value


def _not_json(constant: str) -> Any:
    """Python's json reads NaN and Infinity, which JSON does not have."""
    raise JsonBodyError(f"{constant} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise JsonBodyError(f"{text} is too large for a number")
    return number


def _check_nesting_and_text(value: Any) -> None:
    # A loop over a stack, not recursion: the depth is what is being checked.
    containers: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    if isinstance(value, str):
        _check_text(value)
    while containers:
        container, depth = containers.pop()
        if depth > MAX_DEPTH:
            raise JsonBodyError(f"nested deeper than {MAX_DEPTH} levels")
        children: Iterable[Any] = container
        if isinstance(container, dict):
            for key in container:
                _check_text(key)
            children = container.values()
        for child in children:
            if isinstance(child, str):
                _check_text(child)
            elif isinstance(child, dict | list):
                containers.append((child, depth + 1))


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JsonBodyError("a string holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape)") from None
