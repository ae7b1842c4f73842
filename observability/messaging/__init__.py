"""The message path. Owns everything that hooks into Celery's and kombu's handling of a message so that none is dropped
- the worker-side request (a dead letter for every terminal failure, before acknowledgement), the strategy (poison-
message quarantine), the consumer (unregistered tasks, messages without task headers, undecodable bodies), the Redis
transport's guarded read path, the lost-run counter, the start-up guard (its rules per broker are
``observability.brokers``') and the queue gauges.

May import: ``observability.failure``, ``observability.errors``, ``observability.deadletters`` (it records into the
store), ``observability.telemetry``, ``observability.brokers``. Must not import the base task
(``observability.task`` names these classes by import path) or ``marketplace``/``promotions``."""
