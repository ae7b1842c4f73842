"""Celery's settings: broker and result backend, serialisation, worker behaviour, Redis connection health, queues
and routes, the beat schedule, the task message size limit.

Celery reads them through the ``CELERY_`` namespace (``marketplace/celery.py``); ``observability.redis_client``
reads ``REDIS_CONNECTION_OPTIONS``. The API section takes its cache URL's default from ``CELERY_BROKER_URL``, the
promotions domain checks its horizon against ``CHECK_PROMOS_INTERVAL_SECONDS``.
"""

from __future__ import annotations

import socket
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

from marketplace.env import env_bool, env_float, env_int, env_str, env_url
from marketplace.settings.django_core import BASE_DIR

# --- Celery (read by marketplace/celery.py through the CELERY_ namespace) -------------------------------
_REDIS_FORM = "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] with DB a number (rediss:// for TLS)"
_AMQP_FORM = "amqp://USER:PASSWORD@HOST[:PORT][/VHOST] (amqps:// for TLS)"
_BROKER_FORMS = f"{_REDIS_FORM}, or for RabbitMQ {_AMQP_FORM}"
#: The broker, from CELERY_BROKER_URL's scheme: ``redis`` or ``rabbitmq`` (observability/messaging/brokers/).
BROKER = "rabbitmq" if env_str("CELERY_BROKER_URL", "").lower().startswith(("amqp:", "amqps:")) else "redis"
CELERY_BROKER_URL = env_url(
    "CELERY_BROKER_URL",
    "redis://localhost:6379/0",
    schemes=("amqp", "amqps") if BROKER == "rabbitmq" else ("redis", "rediss"),
    kind="a broker URL",
    form=_BROKER_FORMS,
    path_pattern=".*" if BROKER == "rabbitmq" else r"\d*",  # a RabbitMQ virtual host, a Redis database number
)
#: The Redis of the app's own state - singleton locks, beat's last successes, the lost-run counter, the delivery
#: rate limiter - which is not the broker's: it may be the broker's Redis (the default) but need not be. With
#: RabbitMQ it is required: RabbitMQ holds none of that state.
if BROKER == "rabbitmq" and not env_str("REDIS_URL", ""):
    raise ImproperlyConfigured(
        "REDIS_URL is required with RabbitMQ (CELERY_BROKER_URL is amqp): singleton locks, beat's last successes, "
        f"the lost-run counter, the rate limiter and the results live in Redis; use {_REDIS_FORM}"
    )
REDIS_URL = env_url(
    "REDIS_URL", CELERY_BROKER_URL, schemes=("redis", "rediss"), kind="a Redis URL", form=_REDIS_FORM,
    path_pattern=r"\d*",
)  # fmt: skip
# Results go to Redis on either broker - the broker's by default, REDIS_URL's with RabbitMQ: a result is a key
# with a TTL read by whoever holds its id. RabbitMQ's rpc:// backend delivers a result only to the process that
# published the task, and loses it with that process; Postgres would add a write per run to the database the
# domain needs. Tasks whose result nothing reads store none (ignore_result).
CELERY_RESULT_BACKEND = env_url(
    "CELERY_RESULT_BACKEND",
    CELERY_BROKER_URL if BROKER == "redis" else REDIS_URL,
    schemes=("redis", "rediss"),
    kind="a Redis URL",
    form=_REDIS_FORM,
    path_pattern=r"\d*",
)
# JSON only: pickle would let anyone who can write to the broker run code in the worker.
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = env_int("CELERY_RESULT_EXPIRES_SECONDS", 86_400, minimum=60)
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
# The seed's production settings.
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 1, minimum=1)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_MAX_TASKS_PER_CHILD = env_int("CELERY_WORKER_MAX_TASKS_PER_CHILD", 1000, minimum=1)
CELERY_WORKER_LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
CELERY_WORKER_TASK_LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s][%(task_name)s(%(task_id)s)] %(message)s"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A channel error (Redis refusing a write: out of memory, MISCONF) makes the worker's consumer reconnect, as a
# connection error does, instead of stopping the worker; the Redis transport raises one when Redis refuses to
# hold a message, so that the consumer stops popping while Redis refuses (docs/dead-letters.md, broker_refused).
CELERY_BROKER_CHANNEL_ERROR_RETRY = True
# Lets `celery -A marketplace control pool_restart` reload the children (the seed's soft restart).
CELERY_WORKER_POOL_RESTARTS = True
# The consumer dead-letters what Celery would drop: unregistered tasks, messages without task headers,
# undecodable bodies; on Redis the project's transport also guards the read path (undecodable bytes, envelopes
# without a delivery tag, Redis refusing to hold a message). RabbitMQ uses kombu's own amqp transport.
if BROKER == "redis":
    CELERY_BROKER_TRANSPORT = "observability.messaging.redis_transport:Transport"
CELERY_WORKER_CONSUMER = "observability.messaging.consumer:DeadLetteringConsumer"
# Redis: a message not acknowledged within this many seconds is handed to another worker; every time limit,
# countdown and ETA must stay below it or the task runs twice (checked at worker start and at publish).
CELERY_BROKER_VISIBILITY_TIMEOUT_SECONDS = env_int("CELERY_BROKER_VISIBILITY_TIMEOUT_SECONDS", 3600, minimum=60)
# RabbitMQ: the server's consumer_timeout (rabbitmq.conf; 30 min by default since 3.8.15). A delivery not
# acknowledged within it closes the worker's channel and requeues everything the channel held, so every hard
# time limit must stay below it (checked at worker start). Countdowns and ETAs wait in the broker (native delayed
# delivery), not unacknowledged in a worker, so they are not bound by it.
CELERY_BROKER_CONSUMER_TIMEOUT_SECONDS = env_int("CELERY_BROKER_CONSUMER_TIMEOUT_SECONDS", 1800, minimum=60)
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = (
    {"visibility_timeout": CELERY_BROKER_VISIBILITY_TIMEOUT_SECONDS}
    if BROKER == "redis"
    # Publisher confirms: a publish returns once RabbitMQ has taken the message (a quorum queue: written on a
    # majority of its replicas), and raises when it refuses it - never a message lost silently on the way.
    else {"confirm_publish": True}
)
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS: dict[str, Any] = {
    "visibility_timeout": CELERY_BROKER_VISIBILITY_TIMEOUT_SECONDS,
    # Storing a result is best effort (observability.results): one quick retry covers a dropped connection.
    # Celery's default (20 retries a second apart) held every run - and every .delay() of a task whose result
    # is kept - about 20 s while the result backend was down.
    "retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2},
}
# --- Connection health: every Redis connection (broker, result backend, observability.redis_client) --------
# A NAT, a load balancer or a failover can drop a flow without a reset or a close. Without these, a command on
# such a connection waits for its reply forever: a web request publishing the sweep, a worker's ack or result
# store, and the worker's BRPOP, which then consumes nothing with no log line. (tests/observability/messaging/
# test_connection_health.py freezes a proxied connection to show each of them recovering.)
# Longest wait for a reply: Redis answers in milliseconds; a longer silence is a lost flow (or a server so
# stalled that failing over is right). Above the 1 s BRPOP kombu blocks on in a plain drain_events(). A
# publish over a dead flow can take six of these before it fails (see the publish retry policy below).
REDIS_SOCKET_TIMEOUT_SECONDS = env_float("REDIS_SOCKET_TIMEOUT_SECONDS", 2.0, minimum=2.0)
REDIS_SOCKET_CONNECT_TIMEOUT_SECONDS = env_float("REDIS_SOCKET_CONNECT_TIMEOUT_SECONDS", 2.0, minimum=0.5)
# redis-py PINGs a connection idle this long before its next command (a dead pooled connection fails in one
# socket timeout and is replaced, instead of failing the command); kombu 5.7 also checks the worker's BRPOP
# and pub/sub connections this often: a BRPOP unanswered for 1 s + this interval is dropped and reopened, so
# a worker on a frozen flow consumes again within 1 + 2 x this interval seconds (21 s; kombu's default 25 made
# it 51 s).
REDIS_HEALTH_CHECK_INTERVAL_SECONDS = env_int("REDIS_HEALTH_CHECK_INTERVAL_SECONDS", 10, minimum=1)
# TCP keepalive: probes after 60 s idle keep a NAT's mapping alive (AWS NAT gateways drop a flow idle for
# 350 s, Azure's load balancer after 4 min) and let the kernel give up on a dead peer after 3 unanswered probes.
_TCP_KEEPALIVE: dict[int, int] = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)  # TCP_KEEPIDLE is Linux's name (macOS has TCP_KEEPALIVE)
}
REDIS_CONNECTION_OPTIONS: dict[str, Any] = {
    "socket_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
    "socket_connect_timeout": REDIS_SOCKET_CONNECT_TIMEOUT_SECONDS,
    "socket_keepalive": True,
    "socket_keepalive_options": _TCP_KEEPALIVE,
    "health_check_interval": REDIS_HEALTH_CHECK_INTERVAL_SECONDS,
    # A command that timed out is sent once more, on a new connection: a frozen pooled connection fails over
    # within one socket timeout instead of failing an ack (the message would run twice) or a publish. The
    # price: kombu then turns off pipelined batch publishing, whose replay could duplicate a batch.
    "retry_on_timeout": True,
}
if BROKER == "redis":
    CELERY_BROKER_TRANSPORT_OPTIONS.update(REDIS_CONNECTION_OPTIONS)
# Celery's Redis result backend reads its connection options from redis_* settings (not transport options),
# with the same timeout retry: a read fails over to a new connection or fails within two socket timeouts; a
# store (the retry_policy above retries it once more) within four. Both are idempotent (GET; SETEX + PUBLISH).
CELERY_REDIS_SOCKET_TIMEOUT = REDIS_SOCKET_TIMEOUT_SECONDS  # Celery's default, 120 s, held a worker child that long
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = REDIS_SOCKET_CONNECT_TIMEOUT_SECONDS
CELERY_REDIS_SOCKET_KEEPALIVE = True
CELERY_REDIS_RETRY_ON_TIMEOUT = True
CELERY_REDIS_BACKEND_HEALTH_CHECK_INTERVAL = REDIS_HEALTH_CHECK_INTERVAL_SECONDS
# A publish that finds every pooled producer connection taken (broker_pool_limit, 10) waits this long, then
# fails with OperationalError; Celery's default waits forever, holding a web request with it.
CELERY_BROKER_POOL_ACQUIRE_TIMEOUT = env_float("CELERY_BROKER_POOL_ACQUIRE_TIMEOUT_SECONDS", 5.0, minimum=0.1)
# A publish over a dead connection is retried once, after reconnecting. With redis-py's retry above, a broker
# that accepts connections but never answers costs six socket timeouts (the publish and its retry twice each,
# the reconnection's PING twice): 12 s by default - measured 12-13 s - before a web request hears that the
# broker is unreachable, inside its 15 s budget. Celery's default (3 retries) took twice as long.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
# When the worker loses its broker connection, the runs it cannot acknowledge any more are cancelled: their
# messages go back to the queue and would otherwise run twice, possibly in parallel on another worker. Celery
# 6's default; Celery 5 warns at start without it.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# Workers hold countdowns (sync_promo at a promo's start or end) unacknowledged in memory. A cold shutdown
# (SIGQUIT, a second Ctrl-C) first lets running tasks finish for up to this many seconds and then requeues what
# the worker holds, instead of leaving it to the visibility timeout (an hour); on idle too - a worker holding
# only countdowns is idle - as Celery's docs recommend with ETA tasks. Well below compose's 60 s grace period.
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = env_float("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT_SECONDS", 10.0, minimum=0.0)
CELERY_WORKER_ENABLE_SOFT_SHUTDOWN_ON_IDLE = True
# Countdowns and ETAs one worker holds in memory at most (prefetch 1 does not bound them): a wave of promos
# transitioning within the 90 s horizon stays on the broker beyond this, for another worker or later.
CELERY_WORKER_ETA_TASK_LIMIT = env_int("CELERY_WORKER_ETA_TASK_LIMIT", 1000, minimum=1)
# --- end of connection health ------------------------------------------------------------------------------
CELERY_BEAT_SCHEDULE_FILENAME = env_str("CELERY_BEAT_SCHEDULE_FILENAME", str(BASE_DIR / "var" / "celerybeat-schedule"))
# Celery's scheduler with a span per send and a count of sends by outcome (observability/beat/scheduler.py).
CELERY_BEAT_SCHEDULER = "observability.beat.scheduler:ObservedScheduler"
# Beat's liveness (Celery 5.7): beat joins the workers' remote-control mailbox as celerybeat@HOST and answers
# `celery -A marketplace inspect ping -d celerybeat@HOST` - until its scheduler has not ticked for the max tick
# age: then it stays silent and the ping exits non-zero (the compose healthcheck). Beat wakes at least every
# max loop interval (and at each entry's due time: every 30 s here), so a live one is never 60 s without a tick.
CELERY_BEAT_ENABLE_REMOTE_CONTROL = env_bool("CELERY_BEAT_ENABLE_REMOTE_CONTROL", True)
CELERY_BEAT_MAX_LOOP_INTERVAL = env_float("CELERY_BEAT_MAX_LOOP_INTERVAL_SECONDS", 30.0, minimum=0.1)
CELERY_BEAT_REMOTE_CONTROL_MAX_TICK_AGE = env_float(
    "CELERY_BEAT_REMOTE_CONTROL_MAX_TICK_AGE_SECONDS", 60.0, minimum=1.0
)
if CELERY_BEAT_REMOTE_CONTROL_MAX_TICK_AGE <= CELERY_BEAT_MAX_LOOP_INTERVAL:
    # A beat asleep between two ticks would stop answering its probe, and be restarted for nothing.
    raise ImproperlyConfigured(
        f"CELERY_BEAT_REMOTE_CONTROL_MAX_TICK_AGE_SECONDS={CELERY_BEAT_REMOTE_CONTROL_MAX_TICK_AGE} must exceed "
        f"CELERY_BEAT_MAX_LOOP_INTERVAL_SECONDS={CELERY_BEAT_MAX_LOOP_INTERVAL} (twice it is a safe margin)."
    )

# --- Queues: each task goes to the queue of what it needs; each queue group has a worker of its own, with
# its own concurrency (Procfile, docker-compose.yml, README "Queues and workers"). A worker without -Q consumes
# every queue below (a one-worker dev setup). Each name can be changed from the environment - to share one
# Redis between environments, or to give a test its own queues; the workers' -Q must then name the new names,
# and setting them all to one name runs everything through one queue again.
#: Tasks published without a route: none of the project's; kept, declared and consumed for anything else.
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_TASK_DEFAULT_QUEUE", "celery")
#: Promo transitions - the sweep and the countdowns at a promo's exact start or end: time-critical (live
#: within a second of starts_at), each a few milliseconds. Its small worker is never busy with bulk work.
PROMOS_QUEUE = env_str("CELERY_PROMOS_QUEUE", "promos")
#: Fan-out (one notification row per subscriber) and the delivery safety net that publishes batches: bounded
#: but long for a big promo; apart from promos so it never delays a countdown, apart from deliveries so a
#: flood of batches never delays the next promo's fan-out (its delivery starts at once).
FANOUT_QUEUE = env_str("CELERY_FANOUT_QUEUE", "fanout")
#: Bulk delivery: batches of 500 provider calls, minutes of them in a flood; scaled out on its own.
DELIVERIES_QUEUE = env_str("CELERY_DELIVERIES_QUEUE", "deliveries")
#: Maintenance: the hourly cleanup and the daily dead-letter retention, each up to minutes, never urgent.
MAINTENANCE_QUEUE = env_str("CELERY_MAINTENANCE_QUEUE", "maintenance")
#: Dead-letter recording deferred while Postgres was down: rare, but must always have a free consumer, whatever
#: floods the other queues - never behind the backlog of the queue whose task failed.
DEADLETTERS_QUEUE = env_str("CELERY_DEADLETTERS_QUEUE", "deadletters")
_QUEUE_NAMES = (
    PROMOS_QUEUE, FANOUT_QUEUE, DELIVERIES_QUEUE, MAINTENANCE_QUEUE, DEADLETTERS_QUEUE, CELERY_TASK_DEFAULT_QUEUE
)  # fmt: skip
# Celery's own shape for a queue (an exchange and routing key of its name); a name given twice is one queue.
# On RabbitMQ each is a quorum queue (replicated, counting its deliveries) behind a topic exchange: Celery's
# native delayed delivery routes countdowns and ETAs through its celery_delayed_* exchanges only to topic
# exchanges, and keeps them in worker memory otherwise.
if BROKER == "rabbitmq":
    CELERY_TASK_DEFAULT_QUEUE_TYPE = "quorum"
    CELERY_TASK_DEFAULT_EXCHANGE_TYPE = "topic"
    # A queue named only at run time (``apply_async(queue=...)``, ``dlq replay --queue``, a worker's ``-Q``) the
    # same: Celery would make it a classic queue behind a direct exchange, which a worker declaring it as
    # configured here refuses (PRECONDITION_FAILED) and whose countdowns would wait in worker memory.
    CELERY_TASK_CREATE_MISSING_QUEUE_TYPE = "quorum"
    CELERY_TASK_CREATE_MISSING_QUEUE_EXCHANGE_TYPE = "topic"
    CELERY_TASK_QUEUES = tuple(
        Queue(name, Exchange(name, type="topic"), routing_key=name, queue_arguments={"x-queue-type": "quorum"})
        for name in dict.fromkeys(_QUEUE_NAMES)
    )
else:
    CELERY_TASK_QUEUES = tuple(
        Queue(name, Exchange(name, type="direct"), routing_key=name) for name in dict.fromkeys(_QUEUE_NAMES)
    )
# Applies to every publish - .delay(), countdowns, beat's ticks, dlq replay of an entry without a queue.
CELERY_TASK_ROUTES = {
    "promotions.tasks.check_active_promos": {"queue": PROMOS_QUEUE},
    "promotions.tasks.sync_promo": {"queue": PROMOS_QUEUE},
    "promotions.tasks.queue_promo_notifications": {"queue": FANOUT_QUEUE},
    "promotions.tasks.process_notification_queue": {"queue": FANOUT_QUEUE},
    "promotions.tasks.deliver_notification_batch": {"queue": DELIVERIES_QUEUE},
    # One message each, to someone who just subscribed and waits for it: not behind a flood's delivery batches.
    "promotions.tasks.send_subscription_confirmation": {"queue": FANOUT_QUEUE},
    "promotions.tasks.cleanup_expired_promos": {"queue": MAINTENANCE_QUEUE},
    "observability.deadletters.tasks.purge_expired_dead_letters": {"queue": MAINTENANCE_QUEUE},
    "observability.record_dead_letter": {"queue": DEADLETTERS_QUEUE},
}

CHECK_PROMOS_INTERVAL_SECONDS = 60.0
CLEANUP_INTERVAL_SECONDS = 3600.0
NOTIFICATION_QUEUE_INTERVAL_SECONDS = 30.0


def _every(seconds: float, task: str, key: str, *, expires: float | None = None) -> tuple[str, dict[str, object]]:
    # The x-schedule-entry header names the entry in check-ins and in the beat last-success gauge.
    options = {"expires": expires or seconds, "headers": {"x-schedule-entry": key}}
    return key, {"task": task, "schedule": seconds, "options": options}


# Keys and intervals are the seed's. Each message expires after one interval: after an outage, beat's
# backlog of ticks must not run one after another; the next tick does the same work anyway.
CELERY_BEAT_SCHEDULE = dict(
    [
        _every(
            CHECK_PROMOS_INTERVAL_SECONDS, "promotions.tasks.check_active_promos", "check-flash-promos-every-minute"
        ),
        _every(
            CLEANUP_INTERVAL_SECONDS, "promotions.tasks.cleanup_expired_promos", "cleanup-expired-promos-every-hour"
        ),
        _every(
            NOTIFICATION_QUEUE_INTERVAL_SECONDS,
            "promotions.tasks.process_notification_queue",
            "process-notification-queue-every-30s",
        ),
        _every(
            86_400.0,
            "observability.deadletters.tasks.purge_expired_dead_letters",
            "purge-expired-dead-letters-daily",
            expires=3600.0,
        ),
    ]
)

# --- Hostile input: task message size (issue 21, ops security) ----------------------------------------------
# Largest task message body, in bytes. ObservableTask.apply_async refuses a larger one (MessageTooLargeError);
# a larger one arriving from elsewhere is dead-lettered unread as message_too_large, its first 4 KB kept with
# its real size. A 20 MB argument took a worker to ~650 MB and wrote a 63 MB log line (issue 21's probe)
# - the project's own messages carry ids.
CELERY_TASK_MAX_MESSAGE_BYTES = env_int("CELERY_TASK_MAX_MESSAGE_BYTES", 1_048_576, minimum=1024)
# --- end hostile input --------------------------------------------------------------------------------------
