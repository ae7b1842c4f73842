"""The project's own settings: promotions, notifications (batches, retries, rate limits, providers, e-mail),
subscription consent, dead letters.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from marketplace.env import env_bool, env_float, env_int, env_str, env_url
from marketplace.settings.broker import CHECK_PROMOS_INTERVAL_SECONDS

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

# --- Dead letters -------------------------------------------------------------------------------------------
# A message whose execution killed its worker this many times is quarantined instead of run again.
DEAD_LETTER_MAX_DELIVERIES = env_int("DEAD_LETTER_MAX_DELIVERIES", 3, minimum=1)
DEAD_LETTER_DELIVERY_COUNTER_TTL_SECONDS = env_int("DEAD_LETTER_DELIVERY_COUNTER_TTL_SECONDS", 7 * 86_400, minimum=60)
DEAD_LETTER_RETENTION_DAYS = env_int("DEAD_LETTER_RETENTION_DAYS", 30, minimum=1)
