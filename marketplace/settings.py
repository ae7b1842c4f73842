"""Django and Celery settings, read once from the environment.

Every variable is documented in ``.env.example``. A missing or malformed one stops the process at start
with one line naming it (see ``marketplace.env``). Production secrets have no default.
"""

from __future__ import annotations

import re
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

from marketplace.env import env_bool, env_float, env_int, env_list, env_str, env_url

# Lets generic classes such as ModelAdmin[Product] be subscripted at run time, as the type stubs declare.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DJANGO_DEBUG", False)
# A development key exists only with DEBUG on, so a production deployment cannot start without its own.
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "dev-only-insecure-key") if DEBUG else env_str("DJANGO_SECRET_KEY")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1"] if DEBUG else [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "observability",
    "promotions",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's static files from gunicorn in the one-image deployment.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "marketplace.urls"
WSGI_APPLICATION = "marketplace.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_url(
    "DATABASE_URL",
    schemes=("postgres", "postgresql"),
    kind="a PostgreSQL URL",
    form="postgres://USER[:PASSWORD]@HOST[:PORT]/NAME",
    path_pattern=r"[^/]+",
)
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
# An unreachable database fails fast (the worker's main process writes dead letters; it must not hang).
DATABASES["default"]["OPTIONS"] = {"connect_timeout": env_int("DATABASE_CONNECT_TIMEOUT_SECONDS", 5, minimum=1)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"

REST_FRAMEWORK: dict[str, object] = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["promotions.api.auth.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "promotions.api.errors.exception_handler",
}

# --- Behind a TLS-terminating proxy (issue 21) ------------------------------------------------------------
# Off by default: X-Forwarded-Proto is trusted only when the deployment says a proxy sets it (and strips a
# client's own), else any client could claim https. On, requests the proxy forwarded as https are secure:
# the admin's CSRF check compares the Origin with https://host, HSTS is sent, cookies are Secure.
BEHIND_TLS_PROXY = env_bool("DJANGO_BEHIND_TLS_PROXY", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if BEHIND_TLS_PROXY else None
# Origins (scheme://host[:port]) whose unsafe requests CSRF accepts besides the request's own, e.g. the public
# name when the proxy forwards another Host.
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
for _origin in CSRF_TRUSTED_ORIGINS:
    if not re.fullmatch(r"https?://[^/\s]+", _origin):
        raise ImproperlyConfigured(
            f"DJANGO_CSRF_TRUSTED_ORIGINS has {_origin!r}: each entry is scheme://host[:port], e.g. https://shop.example"
        )
SESSION_COOKIE_SECURE = env_bool("DJANGO_SESSION_COOKIE_SECURE", not DEBUG or BEHIND_TLS_PROXY)
CSRF_COOKIE_SECURE = env_bool("DJANGO_CSRF_COOKIE_SECURE", not DEBUG or BEHIND_TLS_PROXY)
# Redirects plain http to https (the health checks excepted: a load balancer probes them over http).
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
# Strict-Transport-Security on secure responses: 0 sends none. Raise it step by step (300, then a day, then
# 31536000): a browser that saw it refuses plain http to the host for that long.
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)
# --- Admin login throttling (issue 21, ops security; django-axes) -------------------------------------------
# Failed logins are counted per (username, client address) in the database, shared by every web process; at
# AXES_FAILURE_LIMIT the pair is locked out (429) for AXES_COOLOFF_SECONDS, the right password included. The
# probe's 30 wrong passwords in 10 s were all answered, then the right one let it in. A success resets the count.
INSTALLED_APPS += ["axes"]
AUTHENTICATION_BACKENDS = [
    "marketplace.login_throttle.LoginThrottleBackend",  # axes' backend; steps aside without a request
    "django.contrib.auth.backends.ModelBackend",
]
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]  # last: it turns a lockout into the 429 response
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(seconds=env_int("AXES_COOLOFF_SECONDS", 900, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Lockouts and repeated failures are logged (warning) whatever this says; off, it drops the start-up banner.
AXES_VERBOSE = False
# --- end admin login throttling -----------------------------------------------------------------------------

# --- API tokens (issue 21, ops security; django-rest-knox) ---------------------------------------------------
# Bearer tokens stored as SHA-512 digests, shown once (``manage.py api_token``, the admin's "add"), each with
# an expiry: API_TOKEN_TTL_DAYS after it is issued. Tokens of DRF's authtoken (plain keys, no expiry) were
# moved to knox by promotions/migrations/0007_api_tokens_hashed.py - same key, now hashed, expiring then.
INSTALLED_APPS += ["knox"]
API_TOKEN_TTL_DAYS = env_int("API_TOKEN_TTL_DAYS", 90, minimum=1)
REST_KNOX = {"AUTH_HEADER_PREFIX": "Bearer", "TOKEN_TTL": timedelta(days=API_TOKEN_TTL_DAYS)}
# --- end API tokens -----------------------------------------------------------------------------------------

# --- Celery (read by marketplace/celery.py through the CELERY_ namespace) -------------------------------
_REDIS_FORM = "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] with DB a number (rediss:// for TLS)"
CELERY_BROKER_URL = env_url(
    "CELERY_BROKER_URL",
    "redis://localhost:6379/0",
    schemes=("redis", "rediss"),
    kind="a Redis URL",
    form=_REDIS_FORM,
    path_pattern=r"\d*",
)
CELERY_RESULT_BACKEND = env_url(
    "CELERY_RESULT_BACKEND",
    "redis://localhost:6379/0",
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
# Lets `celery -A marketplace control pool_restart` reload the children (the seed's soft restart).
CELERY_WORKER_POOL_RESTARTS = True
# Redis transport and consumer that dead-letter what Celery would drop: undecodable bytes, envelopes
# without a delivery tag, unregistered tasks, messages without task headers.
CELERY_BROKER_TRANSPORT = "observability.messaging.redis_transport:Transport"
CELERY_WORKER_CONSUMER = "observability.messaging.consumer:DeadLetteringConsumer"
# A message not acknowledged within this many seconds is handed to another worker; every time limit,
# countdown and ETA must stay below it or the task runs twice (checked at worker start).
CELERY_BROKER_VISIBILITY_TIMEOUT_SECONDS = env_int("CELERY_BROKER_VISIBILITY_TIMEOUT_SECONDS", 3600, minimum=60)
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {"visibility_timeout": CELERY_BROKER_VISIBILITY_TIMEOUT_SECONDS}
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
# Celery's own shape for a queue (a direct exchange and routing key of its name); a name given twice is one queue.
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

# --- Dead letters -------------------------------------------------------------------------------------------
# A message whose execution killed its worker this many times is quarantined instead of run again.
DEAD_LETTER_MAX_DELIVERIES = env_int("DEAD_LETTER_MAX_DELIVERIES", 3, minimum=1)
DEAD_LETTER_DELIVERY_COUNTER_TTL_SECONDS = env_int("DEAD_LETTER_DELIVERY_COUNTER_TTL_SECONDS", 7 * 86_400, minimum=60)
DEAD_LETTER_RETENTION_DAYS = env_int("DEAD_LETTER_RETENTION_DAYS", 30, minimum=1)

# --- API: shared cache, throttling, client addresses (issue 21) --------------------------------------------
# The cache every web process shares: the throttles count in it. Default: the broker's Redis.
CACHE_URL = env_url(
    "CACHE_URL", CELERY_BROKER_URL, schemes=("redis", "rediss"), kind="a Redis URL", form=_REDIS_FORM,
    path_pattern=r"\d*",
)  # fmt: skip
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": CACHE_URL,
        "KEY_PREFIX": "marketplace",
        # A throttle check must not hold a request: an unreachable Redis answers within a second (and the
        # throttles then let the request through, with a warning line).
        "OPTIONS": {"socket_connect_timeout": 1.0, "socket_timeout": 1.0},
    }
}


def _throttle_rate(name: str, raw: str) -> str | None:
    """The rate ``raw`` of variable ``name`` as DRF reads it, ``N/second|minute|hour|day``; ``off``: none."""
    value = raw.strip().lower()
    if value == "off":
        return None
    if not re.fullmatch(r"[1-9]\d*/(s|sec|second|m|min|minute|h|hour|d|day)", value):
        raise ImproperlyConfigured(f"{name}={value!r} must be N/second, N/minute, N/hour or N/day (N > 0), or off.")
    return value


REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {
    # Reads of GET /api/promos and /api/promos/{id} without a token, per client address.
    "anon_read": _throttle_rate("API_THROTTLE_ANON_READ", env_str("API_THROTTLE_ANON_READ", "120/minute")),
    # Subscriptions per client address (the probe subscribed 300 addresses from one client in 2.5 s).
    "subscribe": _throttle_rate("API_THROTTLE_SUBSCRIBE", env_str("API_THROTTLE_SUBSCRIBE", "20/hour")),
    # Subscriptions per e-mail address, from any client: bounds the confirmations one address can be sent.
    "subscribe_email": _throttle_rate(
        "API_THROTTLE_SUBSCRIBE_EMAIL", env_str("API_THROTTLE_SUBSCRIBE_EMAIL", "10/day")
    ),
}
# Proxies in front of the web app that append to X-Forwarded-For: the client address is the one the proxy
# clients connect to recorded. 0 (default): REMOTE_ADDR; X-Forwarded-For - anyone's to write - is ignored.
REST_FRAMEWORK["NUM_PROXIES"] = env_int("API_NUM_PROXIES", 0, minimum=0)
# --- Hostile input: task message size (issue 21, ops security) ----------------------------------------------
# Largest task message body, in bytes. ObservableTask.apply_async refuses a larger one (MessageTooLargeError);
# a larger one arriving from elsewhere is dead-lettered unread as message_too_large, its first 4 KB kept with
# its real size. A 20 MB argument took a worker to ~650 MB and wrote a 63 MB log line (issue 21's probe)
# - the project's own messages carry ids.
CELERY_TASK_MAX_MESSAGE_BYTES = env_int("CELERY_TASK_MAX_MESSAGE_BYTES", 1_048_576, minimum=1024)
# --- end hostile input --------------------------------------------------------------------------------------

# --- Promotions domain ------------------------------------------------------------------------------------
# Promos starting (or ending) within this many seconds get a countdown task at their exact time, so they
# change state on time instead of on the next sweep. Must exceed the sweep interval so no promo falls between.
PROMO_TRANSITION_HORIZON_SECONDS = env_float("PROMO_TRANSITION_HORIZON_SECONDS", 90.0, minimum=1.0)
if PROMO_TRANSITION_HORIZON_SECONDS <= CHECK_PROMOS_INTERVAL_SECONDS:
    raise ImproperlyConfigured(
        f"PROMO_TRANSITION_HORIZON_SECONDS must exceed the sweep ({CHECK_PROMOS_INTERVAL_SECONDS:.0f} s)."
    )
# How far in the past a new or moved promo's start may be: a client's clock skew plus request latency. An older
# start is refused - it would go live at once with a misleading activation lag, or end without going live.
PROMO_START_PAST_TOLERANCE_SECONDS = env_int("PROMO_START_PAST_TOLERANCE_SECONDS", 60, minimum=0)
# How far ahead a promo may start or end: a year typed wrong (9999, or next year for this one) is refused.
PROMO_MAX_HORIZON_DAYS = env_int("PROMO_MAX_HORIZON_DAYS", 365, minimum=1)
# Longest promo: a flash promo lasts hours or days; a discount live for months is a price change, most likely
# an end typed in the wrong month or year, and its subscribers would be told of it once, at the start.
PROMO_MAX_DURATION_DAYS = env_int("PROMO_MAX_DURATION_DAYS", 31, minimum=1)
PROMO_RETENTION_DAYS = env_int("PROMO_RETENTION_DAYS", 30, minimum=1)
PROMO_CLEANUP_BATCH_SIZE = env_int("PROMO_CLEANUP_BATCH_SIZE", 200, minimum=1)
PROMO_CLEANUP_NOTIFICATION_BATCH_SIZE = env_int("PROMO_CLEANUP_NOTIFICATION_BATCH_SIZE", 5000, minimum=1)
PROMO_CLEANUP_MAX_BATCHES = env_int("PROMO_CLEANUP_MAX_BATCHES", 1000, minimum=1)
PROMO_CLEANUP_TIME_BUDGET_SECONDS = env_int("PROMO_CLEANUP_TIME_BUDGET_SECONDS", 120, minimum=1)
if PROMO_CLEANUP_TIME_BUDGET_SECONDS > 200:
    # The run must end well inside ObservableTask's 240 s soft time limit, or the limit cuts it every hour.
    raise ImproperlyConfigured(
        "PROMO_CLEANUP_TIME_BUDGET_SECONDS must be at most 200 (the task's soft limit is 240 s)."
    )
NOTIFICATION_BATCH_SIZE = env_int("NOTIFICATION_BATCH_SIZE", 500, minimum=1)
NOTIFICATION_MAX_ATTEMPTS = env_int("NOTIFICATION_MAX_ATTEMPTS", 5, minimum=1)
# Subscribers queued per fan-out statement, each batch its own transaction: 5,000 rows take ~0.14 s (0.7-1.2 s
# on a loaded machine), the promo's row lock lies inside it; the first batch is NOTIFICATION_BATCH_SIZE rows,
# so delivery starts within a second whatever this is (docs/performance.md, "The fan-out of one big promo").
NOTIFICATION_FAN_OUT_BATCH_SIZE = env_int("NOTIFICATION_FAN_OUT_BATCH_SIZE", 5000, minimum=1)
# A fan-out task walks batches for this long, then publishes itself to continue: tasks stay short, far inside
# the 240 s soft time limit, and other promos' fan-outs and deliveries interleave with a big promo's.
NOTIFICATION_FAN_OUT_TASK_SECONDS = env_float("NOTIFICATION_FAN_OUT_TASK_SECONDS", 5.0, minimum=0.0)
# Longer than a delivery batch's 300 s hard time limit plus clock skew: a running batch is never reclaimed.
NOTIFICATION_LEASE_SECONDS = env_int("NOTIFICATION_LEASE_SECONDS", 360, minimum=10)
NOTIFICATION_RETRY_BASE_SECONDS = env_float("NOTIFICATION_RETRY_BASE_SECONDS", 30.0, minimum=0.1)
NOTIFICATION_RETRY_MAX_SECONDS = env_float("NOTIFICATION_RETRY_MAX_SECONDS", 3600.0, minimum=1.0)
NOTIFICATION_BACKEND = env_str("NOTIFICATION_BACKEND", "console")
# A ceiling on messages sent per second per channel, shared by every worker on every host (a Redis token bucket,
# promotions/ratelimit.py): a provider's sending limit (SES, SNS, an SMTP relay). 0: no limit.
NOTIFICATION_RATE_LIMIT_PER_SECOND = env_float("NOTIFICATION_RATE_LIMIT_PER_SECOND", 0.0, minimum=0.0)
# Messages the bucket lets go at once, which a worker the machine woke late may catch up on; any 1 s window still
# gets at most the rate (the limiter counts the last second's grants). Default: 5% of the rate (2% left 11% of
# 200/s unused on a loaded machine).
NOTIFICATION_RATE_LIMIT_BURST = env_int(
    "NOTIFICATION_RATE_LIMIT_BURST", max(1, int(NOTIFICATION_RATE_LIMIT_PER_SECOND * 0.05)), minimum=1
)
# Longest a delivery batch waits in total for the limiter (or a throttled channel) before it hands its unsent rows
# back to pending; with the sends it must fit the batch task's 240 s soft time limit and the lease.
NOTIFICATION_RATE_LIMIT_MAX_WAIT_SECONDS = env_float("NOTIFICATION_RATE_LIMIT_MAX_WAIT_SECONDS", 60.0, minimum=0.0)
if (
    NOTIFICATION_RATE_LIMIT_MAX_WAIT_SECONDS > 120
    or NOTIFICATION_RATE_LIMIT_MAX_WAIT_SECONDS >= NOTIFICATION_LEASE_SECONDS / 2
):
    raise ImproperlyConfigured(
        "NOTIFICATION_RATE_LIMIT_MAX_WAIT_SECONDS must be at most 120 and below half NOTIFICATION_LEASE_SECONDS."
    )
# A provider's throttling answer (SNS Throttling, SMTP 421/451/452) pauses the channel for every worker this long,
# doubling while the answers go on, up to the maximum.
NOTIFICATION_THROTTLE_PAUSE_SECONDS = env_float("NOTIFICATION_THROTTLE_PAUSE_SECONDS", 1.0, minimum=0.01)
NOTIFICATION_THROTTLE_PAUSE_MAX_SECONDS = env_float("NOTIFICATION_THROTTLE_PAUSE_MAX_SECONDS", 30.0, minimum=0.01)
if NOTIFICATION_THROTTLE_PAUSE_MAX_SECONDS < NOTIFICATION_THROTTLE_PAUSE_SECONDS:
    raise ImproperlyConfigured(
        "NOTIFICATION_THROTTLE_PAUSE_MAX_SECONDS must be at least NOTIFICATION_THROTTLE_PAUSE_SECONDS."
    )
if NOTIFICATION_BACKEND not in {"console", "email", "sns"}:
    raise ImproperlyConfigured(f"NOTIFICATION_BACKEND={NOTIFICATION_BACKEND!r} must be console, email or sns.")
SNS_TOPIC_ARN = env_str("SNS_TOPIC_ARN", "")
AWS_ENDPOINT_URL = env_str("AWS_ENDPOINT_URL", "")
AWS_REGION = env_str("AWS_REGION", "us-east-1")
if NOTIFICATION_BACKEND == "sns" and not SNS_TOPIC_ARN:
    raise ImproperlyConfigured("Set the SNS_TOPIC_ARN environment variable (required when NOTIFICATION_BACKEND=sns).")

EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT_SECONDS", 10, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "promos@marketplace.local")

# --- Subscription consent (double opt-in, unsubscribe links) ---------------------------------------------
# Absolute links in messages (confirm, unsubscribe) start with this: the address the public reaches the web app at.
PUBLIC_BASE_URL = env_url(
    "PUBLIC_BASE_URL",
    "http://127.0.0.1:8000",
    schemes=("http", "https"),
    kind="an http(s) base URL",
    form="https://HOST[:PORT][/PREFIX] without a trailing slash",
    path_pattern=r"(?:[^/?#]+(?:/[^/?#]+)*)?",
).rstrip("/")
# How long a confirmation link works: long enough for a mailbox read once a weekend, short enough that an old
# mail found later does not subscribe anyone.
SUBSCRIPTION_CONFIRM_MAX_AGE_SECONDS = env_int("SUBSCRIPTION_CONFIRM_MAX_AGE_SECONDS", 3 * 86_400, minimum=60)
# One address gets at most one confirmation request in this many seconds, whatever it subscribes to: subscribing
# a third party repeatedly (or to every product) cannot flood their mailbox.
SUBSCRIPTION_CONFIRM_RESEND_INTERVAL_SECONDS = env_int("SUBSCRIPTION_CONFIRM_RESEND_INTERVAL_SECONDS", 900, minimum=1)

# --- Logging ------------------------------------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"LOG_LEVEL={LOG_LEVEL!r} must be DEBUG, INFO, WARNING, ERROR or CRITICAL.")
# auto: JSON lines when stderr is not a terminal, readable lines on a terminal.
LOG_FORMAT = env_str("LOG_FORMAT", "auto")
if LOG_FORMAT not in {"auto", "json", "console"}:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} must be auto, json or console.")
# Celery's own per-task "received"/"succeeded" INFO lines (each run already logs one `task.finished` line).
LOG_TASK_LIFECYCLE_LINES = env_bool("LOG_TASK_LIFECYCLE_LINES", False)
# Keys whose values never reach a log line or a Sentry event (secrets are always redacted too).
LOG_REDACT_KEYS = env_list("LOG_REDACT_KEYS", ["email", "recipient", "phone", "address"])
# observability.logs configures stdlib logging and structlog together, for Django and Celery alike.
LOGGING_CONFIG = None

# --- Telemetry ----------------------------------------------------------------------------------------------
# OpenTelemetry is configured by the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT turns export on;
# OTEL_SERVICE_NAME overrides marketplace-<role>). Without an endpoint, no provider is installed: zero cost.
OTEL_EXPORTER_OTLP_ENDPOINT = env_str("OTEL_EXPORTER_OTLP_ENDPOINT", "")
OTEL_METRIC_EXPORT_INTERVAL_MILLIS = env_int("OTEL_METRIC_EXPORT_INTERVAL", 15_000, minimum=100)
# Longest a process's exit (a recycled worker child's included) waits for its last spans and metrics to be
# exported; what the collector has not taken by then is lost, and logged. An unreachable collector otherwise
# held each exiting child for ~20 s (the exporters' retries), a child the pool could not replace meanwhile.
TELEMETRY_SHUTDOWN_TIMEOUT_SECONDS = env_float("TELEMETRY_SHUTDOWN_TIMEOUT", 2.0, minimum=0.0)
# Gauges the worker's main process measures (once per worker, not in every child).
TELEMETRY_GAUGES = [
    "observability.messaging.gauges.register",
    "observability.deadletters.gauges.register",
    "observability.beat.register_gauges",
    "promotions.metrics.register_gauges",
]

# --- Sentry -------------------------------------------------------------------------------------------------
SENTRY_DSN = env_str("SENTRY_DSN", "")
SENTRY_ENVIRONMENT = env_str("SENTRY_ENVIRONMENT", "development" if DEBUG else "production")

# --- API schema and hostile input (drf-spectacular; promotions.api.parsers) --------------------------------
# Request bodies nesting objects/arrays deeper than this get a 400 (the deepest valid body is 2 levels).
API_MAX_JSON_DEPTH = env_int("API_MAX_JSON_DEPTH", 32, minimum=2)
INSTALLED_APPS += ["drf_spectacular"]
REST_FRAMEWORK |= {
    "DEFAULT_PARSER_CLASSES": ["promotions.api.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
# The OpenAPI document served at /api/schema and committed as docs/openapi.yaml. No `servers`: paths are
# relative to the host that serves it, so the document names no deployment.
SPECTACULAR_SETTINGS = {
    "TITLE": "Flash Promos Marketplace API",
    "DESCRIPTION": (
        "Products, public subscriptions and flash promos. Writes need the bearer token of a staff user allowed "
        "the change (`Authorization: Bearer <token>`, from `manage.py api_token`). Every error is a JSON body; "
        "request bodies are JSON only."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"PromoStatus": "promotions.models.PromoStatus"},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "promotions.api.schema.add_error_components",
    ],
}
