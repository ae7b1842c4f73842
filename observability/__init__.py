"""Reliability and telemetry for every task: a Django app (label ``observability``) in rooms by responsibility.

At the top - the failure policy every task runs under:
    task.py          ``ObservableTask``, the app's ``task_cls``: retries, time limits, acks_late, singletons
    publishing.py    ``ObservableCelery``, the app's class: every publish a PRODUCER span, timed and counted
    errors.py        the error taxonomy: which failures are retried, which give up at once
    backoff.py       exponential backoff with jitter (task retries, notification redelivery)
    failure.py       ``Failure``: the one description of a failed message, made storable
    delivery.py      the queue a delivery came from (its routing key, less a delayed-delivery prefix)
    results.py       the result backend's writes made best effort: an unstored result never fails a run
    beat.py          beat entries' last success and interval gauges
    control.py       the worker's ``inspect conf`` reply with secrets masked (Flower's Config tab reads it)
    wiring.py        per-process set-up hooked to Celery's signals and the web process (imports every room)

Rooms:
    messaging/       the Celery/kombu message path that keeps messages from being dropped
    brokers/         what differs between Redis and RabbitMQ: queue depths and ages, start-up and countdown rules
    deadletters/     the dead-letter store: models, selectors, services, ``dlq``, admin, its tasks and gauges
    telemetry/       OpenTelemetry providers, task spans and metrics, metric names
    logs/            structlog + stdlib logging, line formats, redaction
    sentry/          Sentry set-up, final-failure reports, Crons check-ins, alert rules

Imports run one way: ``wiring`` -> ``control`` -> ``logs``; ``wiring`` -> ``task`` -> ``messaging`` ->
``deadletters`` (``task`` and ``messaging`` -> ``brokers`` -> ``redis_client``) -> ``sentry`` and ``telemetry`` ->
``logs``; ``publishing`` -> ``telemetry``; ``errors``, ``backoff``, ``failure`` and ``delivery`` import no other
module of the app. Nothing here imports ``marketplace`` or ``promotions``. ``models.py``, ``admin.py`` and
``management/commands/`` stay where Django looks for them and point into ``deadletters`` and ``sentry``."""
