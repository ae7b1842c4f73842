"""The dead-letter store: every task message that ended without success and will not be retried by itself,
kept in Postgres with what is needed to understand and replay it.

Owns: the models (``models``), reads (``selectors``), writes - record, defer, replay, discard, purge
(``services``), the ``dlq`` command (``command``), the admin (``admin``), its two tasks - deferred recording and
retention (``tasks``) - and its gauges (``gauges``).
May import: ``observability.failure``, ``observability.errors``, ``observability.task`` (its tasks' base),
``observability.telemetry`` and ``observability.sentry`` (each entry is counted and reported once),
``observability.logs`` (the ``dlq`` command logs in the console format for a person). Must not
import the message path (``observability.messaging``), which records into it.
"""
