"""``Failure`` makes what it describes storable as jsonb, whatever the broker handed over."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from observability.failure import Failure


def test_headers_that_amqp_decodes_to_non_json_values_are_kept_as_text():
    """On RabbitMQ a message's headers are an AMQP table: each hop through native delayed delivery (a countdown,
    a retry) adds ``x-death`` with a timestamp, and a header can be bytes or a decimal. The failure holds them as
    text, so its entry is written at once instead of failing on ``Object of type datetime is not JSON
    serializable`` and the message going back to its queue forever."""
    hop = datetime(2026, 12, 3, 18, 43, 45, tzinfo=UTC)
    failure = Failure(
        reason="max_retries_exceeded",
        headers={
            "x-death": [{"time": hop, "count": 1, "exchange": b"celery_delayed_27", "reason": "expired"}],
            "price": Decimal("1.50"),
            7: "a numeric key",
        },
    )
    assert failure.headers == {
        "x-death": [{"time": "2026-12-03T18:43:45+00:00", "count": 1, "exchange": "celery_delayed_27",
                     "reason": "expired"}],
        "price": "1.50",
        "7": "a numeric key",
    }  # fmt: skip
    assert json.loads(json.dumps(failure.to_json()))["headers"] == failure.headers
