"""The REST API's settings: Django REST framework, bearer tokens (knox), the shared cache and the throttles,
client addresses behind proxies, request body depth, the OpenAPI schema (drf-spectacular).
"""

from __future__ import annotations

import re
from datetime import timedelta

from django.core.exceptions import ImproperlyConfigured

from marketplace.env import env_int, env_str, env_url
from marketplace.settings.broker import _REDIS_FORM, REDIS_URL
from marketplace.settings.django_core import INSTALLED_APPS

REST_FRAMEWORK: dict[str, object] = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["promotions.api.auth.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "promotions.api.errors.exception_handler",
}

# --- API tokens (issue 21, ops security; django-rest-knox) ---------------------------------------------------
# Bearer tokens stored as SHA-512 digests, shown once (``manage.py api_token``, the admin's "add"), each with
# an expiry: API_TOKEN_TTL_DAYS after it is issued. Tokens of DRF's authtoken (plain keys, no expiry) were
# moved to knox by promotions/migrations/0007_api_tokens_hashed.py - same key, now hashed, expiring then.
INSTALLED_APPS += ["knox"]
API_TOKEN_TTL_DAYS = env_int("API_TOKEN_TTL_DAYS", 90, minimum=1)
REST_KNOX = {"AUTH_HEADER_PREFIX": "Bearer", "TOKEN_TTL": timedelta(days=API_TOKEN_TTL_DAYS)}
# --- end API tokens -----------------------------------------------------------------------------------------

# --- API: shared cache, throttling, client addresses (issue 21) --------------------------------------------
# The cache every web process shares: the throttles count in it. Default: the app's own Redis (REDIS_URL, by
# default the broker's).
CACHE_URL = env_url(
    "CACHE_URL", REDIS_URL, schemes=("redis", "rediss"), kind="a Redis URL", form=_REDIS_FORM,
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
# The admin's login throttle (django-axes) counts failures by the same client address (see its callable).
AXES_CLIENT_IP_CALLABLE = "marketplace.login_throttle.client_address"

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
