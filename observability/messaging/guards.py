"""Start-up guard rails: a worker refuses to start when its broker could deliver a message twice - on Redis a
task that could outlive the visibility timeout (Redis hands the still-running message to another worker), on
RabbitMQ a time limit past the consumer timeout (RabbitMQ closes the channel and requeues the message). What each
broker requires is ``observability.brokers``' (``startup_problems``); countdowns and ETAs given at publish time
are checked by ``ObservableTask.apply_async``.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps
from django.core.exceptions import ImproperlyConfigured

from observability import brokers

__all__ = ["BrokerGuard"]


class BrokerGuard(bootsteps.Step):
    """Worker bootstep: raise at start, naming each offending task, instead of running tasks twice later."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        broker = brokers.current()
        problems = broker.startup_problems(worker.app)
        if problems:
            raise ImproperlyConfigured(
                f"refusing to start: on {broker.name}, tasks could be delivered twice:\n  " + "\n  ".join(problems)
            )
        super().__init__(worker, **kwargs)
