"""Configuration from the environment: a process with a missing or malformed variable stops at start with a
last line naming it (and never echoing a secret), ``marketplace.env``'s readers, and the preflight check."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from marketplace import env
from tests.conftest import ROOT, TEST_REDIS_URL

SETUP = "import django; django.setup()"
#: The smallest environment the settings accept; every test starts from it and changes one thing.
VALID_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "DJANGO_SETTINGS_MODULE": "marketplace.settings",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/marketplace",
    "DJANGO_DEBUG": "true",
}
#: The real local services, for the preflight check that must find both.
LOCAL_DATABASE_URL = os.environ.get("DATABASE_URL", VALID_ENV["DATABASE_URL"])
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
UNREACHABLE_DATABASE_URL = "postgres://postgres@127.0.0.1:1/x"


def _run(*args: str, **overrides: str | None) -> subprocess.CompletedProcess[str]:
    """Run the project's Python with ``VALID_ENV`` changed by ``overrides`` (None removes a variable)."""
    environment = {**VALID_ENV, **overrides}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={name: value for name, value in environment.items() if value is not None},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


# --- Django start-up -----------------------------------------------------------------------------------


def test_valid_environment_starts():
    """Given the minimal valid environment, when Django starts, then it exits 0 without complaint."""
    result = _run("-c", SETUP)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_production_mode_starts_with_a_secret_key_and_reads_typed_values():
    """Given DJANGO_DEBUG=false with a secret key and typed overrides, when Django starts, then the
    settings hold the parsed values."""
    code = (
        f"{SETUP}; from django.conf import settings as s; "
        "print(s.DEBUG, s.SECRET_KEY, s.NOTIFICATION_BATCH_SIZE, s.EMAIL_USE_TLS, s.ALLOWED_HOSTS)"
    )

    result = _run(
        "-c",
        code,
        DJANGO_DEBUG="Off",
        DJANGO_SECRET_KEY="k3y",
        NOTIFICATION_BATCH_SIZE="42",
        EMAIL_USE_TLS="YES",
        DJANGO_ALLOWED_HOSTS="shop.example, ,api.example",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False k3y 42 True ['shop.example', 'api.example']"


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"DATABASE_URL": None}, "DATABASE_URL"),
        ({"DATABASE_URL": ""}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://db.example/shop"}, "DATABASE_URL"),
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG"),
        ({"DJANGO_DEBUG": "false"}, "DJANGO_SECRET_KEY"),
        ({"NOTIFICATION_BATCH_SIZE": "abc"}, "NOTIFICATION_BATCH_SIZE"),
        ({"NOTIFICATION_BATCH_SIZE": "0"}, "NOTIFICATION_BATCH_SIZE"),
        ({"NOTIFICATION_RETRY_BASE_SECONDS": "fast"}, "NOTIFICATION_RETRY_BASE_SECONDS"),
        ({"CELERY_BROKER_URL": "amqp-not-a-url"}, "CELERY_BROKER_URL"),
        ({"CELERY_RESULT_BACKEND": "amqp://broker.example//"}, "CELERY_RESULT_BACKEND"),
        ({"NOTIFICATION_BACKEND": "sns"}, "SNS_TOPIC_ARN"),
        ({"NOTIFICATION_BACKEND": "pigeon"}, "NOTIFICATION_BACKEND"),
        ({"PROMO_TRANSITION_HORIZON_SECONDS": "30"}, "PROMO_TRANSITION_HORIZON_SECONDS"),
    ],
    ids=[
        "database-url-missing",
        "database-url-empty",
        "database-url-bad-scheme",
        "debug-not-boolean",
        "production-without-secret-key",
        "batch-size-not-integer",
        "batch-size-below-minimum",
        "retry-base-not-number",
        "broker-url-not-a-url",
        "result-backend-bad-scheme",
        "sns-without-topic",
        "unknown-backend",
        "horizon-not-above-sweep",
    ],
)
def test_bad_environment_stops_start_up_naming_the_variable(overrides, name):
    """Given one missing or malformed variable, when Django starts, then it exits non-zero and the last
    stderr line is a configuration error that names the variable."""
    result = _run("-c", SETUP, **overrides)

    assert result.returncode != 0
    last = _last_line(result.stderr)
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: "), result.stderr
    assert name in last


def test_sns_backend_starts_with_a_topic():
    """Given NOTIFICATION_BACKEND=sns with SNS_TOPIC_ARN set, when Django starts, then it exits 0."""
    result = _run("-c", SETUP, NOTIFICATION_BACKEND="sns", SNS_TOPIC_ARN="arn:aws:sns:us-east-1:000000000000:promos")

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CELERY_BROKER_URL", "http://u:s3cret@host"),
        ("CELERY_BROKER_URL", "amqp://:s3cret@broker.example:5672//"),
        ("DATABASE_URL", "mysql://shop:s3cret@db.example/shop"),
    ],
)
def test_rejected_url_is_named_without_echoing_its_password(name, value):
    """Given a URL with a password but a wrong scheme, when Django starts, then it fails naming the variable
    and the password appears nowhere in the output."""
    result = _run("-c", SETUP, **{name: value})

    assert result.returncode != 0
    assert name in _last_line(result.stderr)
    assert "s3cret" not in result.stdout + result.stderr


# --- marketplace.env readers ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "True", "yes", "Yes", "on", "ON", " true "])
def test_env_bool_accepts_true_spellings(monkeypatch, value):
    """Given a truthy spelling in any case, when read as a boolean, then it is True whatever the default."""
    monkeypatch.setenv("TEST_ENV_FLAG", value)

    assert env.env_bool("TEST_ENV_FLAG", False) is True


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "no", "No", "off", "OFF"])
def test_env_bool_accepts_false_spellings(monkeypatch, value):
    """Given a falsy spelling in any case, when read as a boolean, then it is False whatever the default."""
    monkeypatch.setenv("TEST_ENV_FLAG", value)

    assert env.env_bool("TEST_ENV_FLAG", True) is False


@pytest.mark.parametrize("value", ["maybe", "2", "t", "y", "enabled"])
def test_env_bool_rejects_other_values_naming_the_variable(monkeypatch, value):
    """Given anything else, when read as a boolean, then ImproperlyConfigured names the variable."""
    monkeypatch.setenv("TEST_ENV_FLAG", value)

    with pytest.raises(ImproperlyConfigured, match="TEST_ENV_FLAG"):
        env.env_bool("TEST_ENV_FLAG", False)


@pytest.mark.parametrize("default", [True, False])
def test_env_bool_unset_or_empty_gives_the_default(monkeypatch, default):
    """Given the variable unset or empty, when read as a boolean, then the default comes back."""
    monkeypatch.delenv("TEST_ENV_FLAG", raising=False)
    assert env.env_bool("TEST_ENV_FLAG", default) is default

    monkeypatch.setenv("TEST_ENV_FLAG", "")
    assert env.env_bool("TEST_ENV_FLAG", default) is default


def test_env_int_reads_integers_at_or_above_the_minimum(monkeypatch):
    """Given integers at or above ``minimum``, when read, then they come back as ints."""
    monkeypatch.setenv("TEST_ENV_COUNT", "5")
    assert env.env_int("TEST_ENV_COUNT", 1, minimum=5) == 5

    monkeypatch.setenv("TEST_ENV_COUNT", "1000")
    assert env.env_int("TEST_ENV_COUNT", 1, minimum=5) == 1000


def test_env_int_rejects_a_value_below_the_minimum(monkeypatch):
    """Given an integer below ``minimum``, when read, then ImproperlyConfigured names the variable and the
    minimum."""
    monkeypatch.setenv("TEST_ENV_COUNT", "4")

    with pytest.raises(ImproperlyConfigured, match=r"TEST_ENV_COUNT=4 is below its minimum of 5"):
        env.env_int("TEST_ENV_COUNT", 10, minimum=5)


@pytest.mark.parametrize("value", ["abc", "1.5", "5 items", "0x10"])
def test_env_int_rejects_non_integers(monkeypatch, value):
    """Given a value that is not a base-10 integer, when read, then ImproperlyConfigured names the
    variable."""
    monkeypatch.setenv("TEST_ENV_COUNT", value)

    with pytest.raises(ImproperlyConfigured, match=r"TEST_ENV_COUNT=.* is not an integer"):
        env.env_int("TEST_ENV_COUNT", 10)


def test_env_int_unset_gives_the_default(monkeypatch):
    """Given the variable unset, when read as an integer, then the default comes back."""
    monkeypatch.delenv("TEST_ENV_COUNT", raising=False)

    assert env.env_int("TEST_ENV_COUNT", 10, minimum=1) == 10


def test_env_str_without_a_default_is_required(monkeypatch):
    """Given a required variable that is unset or empty, when read, then ImproperlyConfigured names it."""
    monkeypatch.delenv("TEST_ENV_NAME", raising=False)
    with pytest.raises(ImproperlyConfigured, match="Set the TEST_ENV_NAME environment variable"):
        env.env_str("TEST_ENV_NAME")

    monkeypatch.setenv("TEST_ENV_NAME", "")
    with pytest.raises(ImproperlyConfigured, match="TEST_ENV_NAME"):
        env.env_str("TEST_ENV_NAME")


def test_env_list_splits_on_commas_and_drops_blanks(monkeypatch):
    """Given a comma-separated value with padding and blanks, when read as a list, then the items remain."""
    monkeypatch.setenv("TEST_ENV_HOSTS", " a.example, ,b.example,, ")

    assert env.env_list("TEST_ENV_HOSTS", ["default"]) == ["a.example", "b.example"]


def test_env_url_checks_the_scheme_without_echoing_the_value(monkeypatch):
    """Given URLs, when read with allowed schemes, then allowed ones come back unchanged and others fail
    naming the variable but not the value's password."""
    monkeypatch.setenv("TEST_ENV_URL", "rediss://:s3cret@cache.example:6380/2")
    assert env.env_url("TEST_ENV_URL", schemes=("redis", "rediss")) == "rediss://:s3cret@cache.example:6380/2"

    monkeypatch.setenv("TEST_ENV_URL", "http://u:s3cret@host")
    with pytest.raises(ImproperlyConfigured, match="TEST_ENV_URL") as excinfo:
        env.env_url("TEST_ENV_URL", schemes=("redis", "rediss"))
    assert "s3cret" not in str(excinfo.value)


# --- python -m marketplace.preflight -------------------------------------------------------------------


def _preflight(**overrides: str) -> subprocess.CompletedProcess[str]:
    return _run(
        "-m",
        "marketplace.preflight",
        **{"DATABASE_URL": LOCAL_DATABASE_URL, "CELERY_BROKER_URL": TEST_REDIS_URL, **overrides},
    )


def test_preflight_passes_when_postgres_and_redis_answer():
    """Given the local Postgres and Redis, when preflight runs, then it exits 0 with nothing on stderr."""
    result = _preflight()

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_preflight_reports_unreachable_redis_with_how_to_start_it():
    """Given a broker URL nothing listens on, when preflight runs, then it exits 1 with exactly one stderr
    line, about Redis, saying how to start it."""
    result = _preflight(CELERY_BROKER_URL=UNREACHABLE_REDIS_URL)

    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("preflight: Redis")
    assert "127.0.0.1:1" in lines[0]
    assert "start it with" in lines[0]
    assert "redis-server" in lines[0]


def test_preflight_does_not_print_the_redis_password():
    """Given an unreachable broker URL with a password, when preflight reports it, then the password is not
    printed."""
    result = _preflight(CELERY_BROKER_URL="redis://:s3cret@127.0.0.1:1/0")

    assert result.returncode == 1
    assert result.stderr.startswith("preflight: Redis")
    assert "s3cret" not in result.stdout + result.stderr


def test_preflight_reports_unreachable_postgres_with_how_to_start_it():
    """Given a database URL nothing listens on, when preflight runs, then it exits 1 with exactly one stderr
    line, about Postgres, saying how to start it."""
    result = _preflight(DATABASE_URL=UNREACHABLE_DATABASE_URL)

    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("preflight: Postgres")
    assert "127.0.0.1:1" in lines[0]
    assert "start it with" in lines[0]


def test_preflight_reports_every_unreachable_service():
    """Given neither service reachable, when preflight runs, then it exits 1 with one line for each."""
    result = _preflight(DATABASE_URL=UNREACHABLE_DATABASE_URL, CELERY_BROKER_URL=UNREACHABLE_REDIS_URL)

    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert [line.split(" at ")[0] for line in lines] == ["preflight: Postgres", "preflight: Redis"]
