"""The producer's message-size check skips serializing when a cheap bound proves the message small
(``observability.task._scalar_size_bound``): the bound must never be below the size it stands for, or an
oversized message would leave. No broker needed: the bound is arithmetic over the arguments."""

from __future__ import annotations

from typing import Any

import pytest
from kombu.utils import json

from observability.task import _scalar_size_bound


def _size(args: Any, kwargs: Any) -> int:
    return len(json.dumps([list(args), dict(kwargs), {}]).encode())


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {}),
        ((1, 2, 3), {}),
        ((2**64 - 1, -(2**63), 0), {"n": -1}),
        ((-1.2345678901234567e-308, float("inf"), float("-inf"), float("nan")), {}),
        ((True, False, None), {"flag": None}),
        (("\U0001f600" * 50, "\x01" * 50, '"\\' * 50, "é" * 50), {}),
        ([], {"key\U0001f600": "\U0001f600" * 7, "k": "v"}),
    ],
)
def test_the_bound_of_scalar_arguments_is_never_below_their_message_size(args: Any, kwargs: Any) -> None:
    """Given only strings, numbers, booleans and None (worst-case escapes included), the bound is at least the
    JSON size the check measures."""
    bound = _scalar_size_bound(args, kwargs)

    assert bound is not None
    assert bound >= _size(args, kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [(([1],), {}), (({"a": 1},), {}), ((2**64,), {}), ((b"x",), {}), ((), {"k": [1]}), (iter([1]), {})],
)
def test_arguments_that_are_not_bounded_scalars_are_serialized(args: Any, kwargs: Any) -> None:
    """Given a container, an int of 2**64 or more, bytes or an iterator, there is no bound: the check serializes."""
    assert _scalar_size_bound(args, kwargs) is None
