"""The API's request-body parser (DRF's ``DEFAULT_PARSER_CLASSES``): JSON only, nested at most
``settings.API_MAX_JSON_DEPTH`` levels deep.

Python's JSON decoder recurses once per level: a 2 KB body nested ~940 levels deep raised ``RecursionError``
from every JSON endpoint (a 500 with a logged traceback). Here a body deeper than the limit - whether the
decoder gave up or parsed it - is a 400 in the API's error shape, ``{"detail": ...}``, before any view code
sees it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError

__all__ = ["JSONParser", "json_depth_exceeds"]


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser with a bound on how deeply the body nests (objects and arrays count one level each)."""

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        limit = settings.API_MAX_JSON_DEPTH
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            # The stack is already unwound here: nothing of the half-built value is kept.
            raise _too_deep(limit) from None
        if json_depth_exceeds(data, limit):
            raise _too_deep(limit)
        return data


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` (a parsed JSON document) nests objects and arrays more than ``limit`` levels deep;
    walked with an explicit stack, so a deep value cannot exhaust Python's."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _too_deep(limit: int) -> ParseError:
    return ParseError(f"JSON parse error - the body nests deeper than {limit} levels of objects and arrays.")
