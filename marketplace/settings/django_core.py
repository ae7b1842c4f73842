"""Django's core settings: the key and hosts, apps, middleware, templates, the database, i18n and static files,
the TLS-terminating proxy and the admin's login throttling.

The first section (``marketplace.settings`` imports it first): the others import ``BASE_DIR``, ``DEBUG`` and
``INSTALLED_APPS`` from here.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

from marketplace.env import env_bool, env_int, env_list, env_str, env_url

# Lets generic classes such as ModelAdmin[Product] be subscripted at run time, as the type stubs declare.
django_stubs_ext.monkeypatch()

# The repository's root (this file is marketplace/settings/django_core.py).
BASE_DIR = Path(__file__).resolve().parent.parent.parent

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
