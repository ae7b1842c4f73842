"""Behind a TLS-terminating proxy (issue 21): the settings come from the environment, the admin login works
through the proxy (no CSRF 403), secure responses carry HSTS, and ``check --deploy`` has nothing left to say
about what those settings cover; the API's throttle rates and proxy count from the environment too."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from django.test import Client

from tests.conftest import ROOT

#: A production environment behind a proxy, as an operator would set it.
PROXIED = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "x7#Jq9!vL2@pR5$wT8^zN1&bC4*hF6(kM3)sD0-gY_aE+uI=oW~eX",
    "DJANGO_ALLOWED_HOSTS": "shop.example",
    "DJANGO_BEHIND_TLS_PROXY": "true",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://shop.example, https://admin.shop.example",
    "DJANGO_SECURE_HSTS_SECONDS": "31536000",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "DJANGO_SECURE_HSTS_PRELOAD": "true",
    "DJANGO_SECURE_SSL_REDIRECT": "true",
}
#: The warnings of ``check --deploy`` these settings address.
ADDRESSED = ("security.W004", "security.W005", "security.W008", "security.W012", "security.W016", "security.W021")


def _run(*args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "marketplace.settings",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/marketplace",
        "MARKETPLACE_ENV_FILE": "",  # no developer's .env
        **overrides,
    }
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False
    )


_PRINT = "import django, json; django.setup(); from django.conf import settings as s; print(json.dumps({{{}}}))".format(
    ", ".join(
        f"'{name}': s.{name}"
        for name in (
            "SECURE_PROXY_SSL_HEADER",
            "CSRF_TRUSTED_ORIGINS",
            "SECURE_HSTS_SECONDS",
            "SECURE_HSTS_INCLUDE_SUBDOMAINS",
            "SECURE_HSTS_PRELOAD",
            "SECURE_SSL_REDIRECT",
            "SESSION_COOKIE_SECURE",
            "CSRF_COOKIE_SECURE",
            "REST_FRAMEWORK",
            "CACHES",
        )
    )
)


def test_the_proxy_settings_come_from_the_environment():
    """Given the proxy variables, when Django starts, then the settings hold them."""
    result = _run("-c", _PRINT, **PROXIED)

    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert values["CSRF_TRUSTED_ORIGINS"] == ["https://shop.example", "https://admin.shop.example"]
    assert (values["SECURE_HSTS_SECONDS"], values["SECURE_HSTS_INCLUDE_SUBDOMAINS"]) == (31536000, True)
    assert (values["SECURE_HSTS_PRELOAD"], values["SECURE_SSL_REDIRECT"]) == (True, True)
    assert (values["SESSION_COOKIE_SECURE"], values["CSRF_COOKIE_SECURE"]) == (True, True)


def test_without_the_proxy_variables_nothing_trusts_forwarded_headers():
    """Given no proxy variables, X-Forwarded-Proto is not trusted, no HSTS is sent, and the API takes the client
    address from the connection (``NUM_PROXIES`` 0, never X-Forwarded-For); the cache is the broker's Redis."""
    result = _run("-c", _PRINT, DJANGO_DEBUG="true", CELERY_BROKER_URL="redis://127.0.0.1:6379/3")

    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["SECURE_PROXY_SSL_HEADER"] is None
    assert (values["SECURE_HSTS_SECONDS"], values["CSRF_TRUSTED_ORIGINS"]) == (0, [])
    assert values["REST_FRAMEWORK"]["NUM_PROXIES"] == 0
    assert values["REST_FRAMEWORK"]["DEFAULT_THROTTLE_RATES"] == {
        "anon_read": "120/minute",
        "subscribe": "20/hour",
        "subscribe_email": "10/day",
    }
    assert values["CACHES"]["default"]["LOCATION"] == "redis://127.0.0.1:6379/3"


def test_throttle_rates_proxies_and_cache_come_from_the_environment():
    """Given ``API_THROTTLE_*``, ``API_NUM_PROXIES`` and ``CACHE_URL``, the settings hold them (``off``: none)."""
    result = _run(
        "-c", _PRINT, DJANGO_DEBUG="true", API_THROTTLE_ANON_READ="10/second", API_THROTTLE_SUBSCRIBE="off",
        API_THROTTLE_SUBSCRIBE_EMAIL="3/d", API_NUM_PROXIES="2", CACHE_URL="redis://cache.internal:6380/4",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["REST_FRAMEWORK"]["DEFAULT_THROTTLE_RATES"] == {
        "anon_read": "10/second",
        "subscribe": None,
        "subscribe_email": "3/d",
    }
    assert values["REST_FRAMEWORK"]["NUM_PROXIES"] == 2
    assert values["CACHES"]["default"]["LOCATION"] == "redis://cache.internal:6380/4"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("API_THROTTLE_SUBSCRIBE", "lots"),
        ("API_THROTTLE_SUBSCRIBE", "0/hour"),
        ("API_THROTTLE_ANON_READ", "10/fortnight"),
        ("API_NUM_PROXIES", "-1"),
        ("CACHE_URL", "memcached://cache:11211"),
        ("DJANGO_CSRF_TRUSTED_ORIGINS", "shop.example"),
        ("DJANGO_SECURE_HSTS_SECONDS", "a year"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(name, value):
    """A malformed rate, proxy count, cache URL, origin or HSTS age stops the process with one line naming it."""
    result = _run("-c", "import django; django.setup()", DJANGO_DEBUG="true", **{name: value})

    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert name in result.stderr


def test_check_deploy_is_clean_of_what_the_proxy_settings_address():
    """Given the proxy variables, ``manage.py check --deploy`` reports none of the warnings they address
    (HSTS, its subdomains and preload, the https redirect, secure cookies); without them it reports each."""
    configured = _run("manage.py", "check", "--deploy", **PROXIED)
    bare = _run("manage.py", "check", "--deploy", **{**PROXIED, **dict.fromkeys(list(PROXIED)[3:], "")})

    reported = set(re.findall(r"security\.W\d+", configured.stdout + configured.stderr))
    assert not reported & set(ADDRESSED), configured.stdout + configured.stderr
    assert {"security.W004", "security.W008"} <= set(re.findall(r"security\.W\d+", bare.stdout + bare.stderr))


@pytest.fixture
def behind_proxy(settings):
    """The settings ``PROXIED`` gives, in this process."""
    settings.ALLOWED_HOSTS = ["shop.example"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.CSRF_TRUSTED_ORIGINS = ["https://shop.example"]
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    return settings


def _login_through_proxy(client: Client) -> tuple[int, str, str]:
    """GET the admin login page, then POST the credentials, both as a TLS proxy forwards a browser's requests:
    plain http with ``X-Forwarded-Proto: https`` and the browser's ``Origin: https://shop.example``."""
    forwarded = {"host": "shop.example", "x-forwarded-proto": "https"}
    page = client.get("/admin/login/", headers=forwarded)
    token = page.cookies["csrftoken"].value
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": "admin", "password": "pw-1234", "csrfmiddlewaretoken": token},
        headers={**forwarded, "origin": "https://shop.example", "referer": "https://shop.example/admin/login/"},
    )
    return response.status_code, response.get("Location", ""), response.get("Strict-Transport-Security", "")


@pytest.mark.django_db
def test_the_admin_login_works_through_a_tls_proxy_and_answers_with_hsts(behind_proxy, django_user_model):
    """Given the proxy settings, when a browser logs in to the admin through the proxy, then the login
    succeeds (no CSRF 403) and the answer carries ``Strict-Transport-Security``."""
    django_user_model.objects.create_superuser("admin", password="pw-1234")

    status, location, hsts = _login_through_proxy(Client(enforce_csrf_checks=True))

    assert (status, location) == (302, "/admin/")
    assert hsts == "max-age=31536000; includeSubDomains"


@pytest.mark.django_db
def test_without_the_proxy_settings_the_login_through_a_proxy_is_a_csrf_403(settings, django_user_model):
    """The probe's finding, for contrast: without the settings, the proxy's https Origin does not match the
    plain-http request Django sees, and the login is refused."""
    settings.ALLOWED_HOSTS = ["shop.example"]
    django_user_model.objects.create_superuser("admin", password="pw-1234")

    status, _location, hsts = _login_through_proxy(Client(enforce_csrf_checks=True))

    assert status == 403
    assert hsts == ""
