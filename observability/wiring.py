"""Per-process set-up of logging, Sentry and OpenTelemetry, hooked to Celery's signals and to the web
process's start. Imported by ``marketplace.celery`` (every role) and ``marketplace.wsgi`` (web).

    web      configure at import of the WSGI app: Django, psycopg and Redis instrumented
    worker   main process at worker_init: gauges, a metric reader that stays silent in forked children;
             then what start-up built is frozen out of garbage collection before the pool forks;
             flushed at worker_shutdown
             each pool child at worker_process_init (after fork): its own providers, psycopg
             instrumented, exporting as its pool slot; flushed at worker_process_shutdown, so recycled
             children lose nothing
    beat     at beat_init
    producer every publish is a PRODUCER span (``observability.publishing``, the app class); before_task_publish
             names it and puts its trace context and the publish time into the message headers, and leaves
             ``expires`` to the worker (no broker TTL)
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from celery import signals
from django.conf import settings
from django.utils.module_loading import import_string
from opentelemetry.sdk.trace import TracerProvider

import observability.control  # noqa: F401 - registers the worker's masked `conf` reply
from observability import logs as obs_logging
from observability import sentry, telemetry

__all__ = ["setup_web"]


def _instrument_sql(tracer_provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    PsycopgInstrumentor().instrument(tracer_provider=tracer_provider, skip_dep_check=True)


def _instrument_web(tracer_provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    DjangoInstrumentor().instrument(tracer_provider=tracer_provider)
    RedisInstrumentor().instrument(tracer_provider=tracer_provider)
    _instrument_sql(tracer_provider)


def setup_web() -> None:
    """Called by ``marketplace.wsgi`` before the WSGI application is built."""
    sentry.init_sentry(role="web")
    telemetry.setup("web", instrument=_instrument_web)


# Flower parses its options with tornado.options, whose parse callback (tornado.log.enable_pretty_logging)
# gives the root logger a handler of its own beside ours unless tornado's `logging` option is "none": each
# Flower line was written twice, in tornado's format and in ours. The `celery` command imports tornado.options
# with its plugins (Flower's entry point) before it loads this app, and Flower parses after: set here, in time.
_tornado_options = sys.modules.get("tornado.options")
if _tornado_options is not None:
    _tornado_options.options.logging = "none"


@signals.setup_logging.connect
def _configure_logging(loglevel: Any = None, **kwargs: Any) -> None:
    # Connected, so Celery leaves the root logger to us: one structlog chain for every role.
    # Celery passes the worker's --loglevel (an int); without the flag, LOG_LEVEL applies.
    obs_logging.configure_logging(level=loglevel or None)


#: The worker's node name (``celery@host``): the spans' ``messaging.client.id`` in the worker and, inherited at
#: fork, in its pool children.
_nodename: str | None = None


@signals.worker_init.connect
def _worker_main_process(sender: Any = None, **kwargs: Any) -> None:
    global _nodename
    _nodename = getattr(sender, "hostname", None)
    sentry.init_sentry(role="worker")
    gauges = [import_string(path) for path in settings.TELEMETRY_GAUGES]
    telemetry.setup("worker", fork_safe_metrics=True, gauges=gauges, nodename=_nodename)
    # Imported here, before the pool forks, so every child - a new one each max_tasks_per_child tasks -
    # inherits the loaded modules: importing them after fork was 72-90 ms of CPU per child, about 80 us per
    # task at the default 1,000 tasks per child (docs/performance.md).
    import opentelemetry.instrumentation.psycopg  # noqa: F401

    # What start-up built (Django, Celery, the task registry, telemetry) lives as long as the process: frozen,
    # no garbage collection scans it, in the main process or in the children it forks (the prefork pattern of
    # the `gc.freeze` documentation). A collection writes to every object it scans, and after each fork (a
    # recycled child) those writes copy pages shared with the child: the freeze cut the main process's page
    # faults from ~14 to ~2 per task and its CPU by 70-135 us per task at 1,000 tasks per child, and the
    # recycles' 40-90 ms p99 tails (docs/performance.md).
    gc.collect()
    gc.freeze()


@signals.worker_process_init.connect
def _worker_child(**kwargs: Any) -> None:
    sentry.init_sentry(role="worker")
    # SQL only: a span per Redis call (kombu's publishes included) cost 7% of a task's CPU in the benchmark.
    # pool_child: exports as its pool slot, going on from the sums of the child it replaced (bounded series).
    telemetry.setup("worker", instrument=_instrument_sql, nodename=_nodename, pool_child=True)


@signals.worker_process_shutdown.connect
def _worker_child_exit(**kwargs: Any) -> None:
    telemetry.shutdown()


@signals.worker_shutdown.connect
def _worker_main_process_exit(**kwargs: Any) -> None:
    # The main process's last metrics export, bounded as a child's is: left to the SDK's own at-exit shutdown,
    # it waited for the exporter's retries (~10 s with the collector down) before a stopping worker could exit.
    telemetry.shutdown()


@signals.beat_init.connect
def _beat(**kwargs: Any) -> None:
    sentry.init_sentry(role="beat")
    telemetry.setup("beat")


@signals.before_task_publish.connect
def _before_publish(
    sender: str | None = None,
    headers: dict[str, Any] | None = None,
    routing_key: str = "",
    properties: dict[str, Any] | None = None,
    **kw: Any,
) -> None:
    if properties is not None:
        # Celery also turns a task's ``expires`` into the message's broker TTL (AMQP ``expiration``), and RabbitMQ
        # drops a message past its TTL unseen: no line, no count, no trace. Without it the worker enforces
        # ``expires`` from the task headers on either broker - acknowledged unrun, with a ``task.discarded`` line
        # and a count - as it always did on Redis, which ignores the TTL. Celery publishes this same dict after
        # the signal (pinned by test_an_expired_message_is_counted_and_logged_not_run on RabbitMQ).
        properties.pop("expiration", None)
    if headers is not None:
        telemetry.on_publish(headers, sender or "", routing_key or "")
