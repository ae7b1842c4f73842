"""Exponential backoff with "equal" jitter, shared by task retries and notification redelivery."""

from __future__ import annotations

import random

__all__ = ["backoff_seconds"]


def backoff_seconds(attempt: int, *, base: float, cap: float) -> float:
    """Delay before retry number ``attempt + 1`` (``attempt`` counts earlier retries, from 0).

    The delay is drawn from [ceiling/2, ceiling] with ceiling = min(cap, base * 2**attempt): never zero
    (full jitter can fire at once and hammer a struggling dependency), still spread so that the retries of a
    burst do not arrive together, and never shorter than the previous ceiling, so delays grow until the cap.
    """
    ceiling = min(cap, base * 2 ** max(attempt, 0))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography
