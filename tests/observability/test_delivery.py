"""The queue of a delivery, on Redis and through RabbitMQ's native delayed delivery (kombu's own routing keys)."""

from __future__ import annotations

import pytest
from kombu.transport.native_delayed_delivery import calculate_routing_key

from observability.delivery import delivery_exchange, delivery_queue


@pytest.mark.parametrize("countdown", [1, 5, 37, 3600, 2**28 - 1])
def test_a_countdowns_routing_key_names_its_queue(countdown):
    """kombu prefixes a delayed message's routing key with its delay in 28 binary digits: the queue is what follows."""
    assert delivery_queue({"routing_key": calculate_routing_key(countdown, "promos")}) == "promos"


def test_a_plain_routing_key_is_the_queue_and_a_missing_one_the_default():
    assert delivery_queue({"routing_key": "deliveries", "exchange": "deliveries"}) == "deliveries"
    assert delivery_queue({"routing_key": "1.0.promos"}) == "1.0.promos"  # not a delay prefix: kept
    assert delivery_queue({}, "celery") == delivery_queue(None, "celery") == "celery"


def test_a_delayed_deliverys_exchange_is_none_to_publish_to_again():
    """A countdown's last hop is a ``celery_delayed_*`` exchange: a replay must route by the queue instead."""
    delayed = {"exchange": "celery_delayed_delivery", "routing_key": calculate_routing_key(3, "promos")}
    assert delivery_exchange(delayed) == ""
    assert delivery_exchange({"exchange": "promos", "routing_key": "promos"}) == "promos"
    assert delivery_exchange({"exchange": "", "routing_key": "celery"}) == ""
