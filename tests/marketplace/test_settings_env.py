"""Configuration from the environment and ``.env``: every entry point (``manage.py``, the ``celery`` command,
the WSGI app) reads ``.env`` under the real environment, and a process with a missing or malformed variable
stops at start with one line naming it (and never echoing a secret); ``marketplace.env``'s readers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from marketplace import env
from tests.conftest import ROOT

SETUP = "import django; django.setup()"
#: The smallest environment the settings accept; every test starts from it and changes one thing.
VALID_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "DJANGO_SETTINGS_MODULE": "marketplace.settings",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/marketplace",
    "DJANGO_DEBUG": "true",
    # No .env: a developer's own must not fill in the variable a test leaves out.
    "MARKETPLACE_ENV_FILE": "",
}
#: Each entry point as an operator types it; each must load the settings before doing anything else.
ENTRY_POINTS = {
    "manage.py migrate": ["manage.py", "migrate", "--noinput"],
    "celery worker": ["-m", "celery", "-A", "marketplace", "worker", "--pool=solo"],
    "celery inspect": ["-m", "celery", "-A", "marketplace", "inspect", "active", "--timeout=1"],
    "celery beat": ["-m", "celery", "-A", "marketplace", "beat"],
    "wsgi": ["-c", "import marketplace.wsgi"],
    # The web as the image runs it: gunicorn's master reads gunicorn.conf.py, which loads the settings.
    "gunicorn": ["-m", "gunicorn", "marketplace.wsgi:application", "--bind", "127.0.0.1:0"],
}


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
    """Given one missing or malformed variable, when Django starts, then it exits 2 and its whole stderr is
    one configuration error line that names the variable."""
    result = _run("-c", SETUP, **overrides)

    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("configuration error: "), result.stderr
    assert name in result.stderr


@pytest.mark.parametrize("entry_point", list(ENTRY_POINTS))
@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            {"DATABASE_URL": "notaurl"},
            "DATABASE_URL='notaurl' is not a PostgreSQL URL: use postgres://USER[:PASSWORD]@HOST[:PORT]/NAME",
        ),
        (
            {"DATABASE_URL": "mysql://shop:s3cret@db.example/shop"},
            "DATABASE_URL='mysql://shop:***@db.example/shop' is not a PostgreSQL URL: "
            "use postgres://USER[:PASSWORD]@HOST[:PORT]/NAME",
        ),
        (
            {"CELERY_BROKER_URL": "garbage"},
            "CELERY_BROKER_URL='garbage' is not a broker URL: "
            "use redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] with DB a number (rediss:// for TLS), "
            "or for RabbitMQ amqp://USER:PASSWORD@HOST[:PORT][/VHOST] (amqps:// for TLS)",
        ),
        (
            {"CELERY_BROKER_URL": "amqp://guest:s3cret@127.0.0.1:5672/marketplace", "REDIS_URL": ""},
            "REDIS_URL is required with RabbitMQ (CELERY_BROKER_URL is amqp): singleton locks, beat's last "
            "successes, the lost-run counter, the rate limiter and the results live in Redis; use "
            "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] with DB a number (rediss:// for TLS)",
        ),
        (
            {"DJANGO_DEBUG": "maybe"},
            "DJANGO_DEBUG='maybe' is not a boolean: use true or false (also 1/0, yes/no, on/off).",
        ),
    ],
    ids=[
        "database-url-not-a-url",
        "database-url-mysql",
        "broker-url-garbage",
        "rabbitmq-without-redis-url",
        "debug-maybe",
    ],
)
def test_every_entry_point_reports_a_configuration_error_in_one_line(entry_point, overrides, line):
    """Given a malformed variable, when manage.py, the celery command (worker, inspect or beat), the WSGI app
    or gunicorn starts, then it exits 2 and its whole stderr is one line: the variable, what it got (any password
    masked) and what it accepts - not Django's or Celery's traceback."""
    result = _run(*ENTRY_POINTS[entry_point], **overrides)

    assert result.returncode == 2, result.stderr
    assert result.stderr == f"configuration error: {line}\n"
    assert result.stdout == ""


def test_sns_backend_starts_with_a_topic():
    """Given NOTIFICATION_BACKEND=sns with SNS_TOPIC_ARN set, when Django starts, then it exits 0."""
    result = _run("-c", SETUP, NOTIFICATION_BACKEND="sns", SNS_TOPIC_ARN="arn:aws:sns:us-east-1:000000000000:promos")

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CELERY_BROKER_URL", "http://u:s3cret@host"),
        ("CELERY_BROKER_URL", "sqs://key:s3cret@sqs.example//"),
        ("CELERY_BROKER_URL", "amqp://guest:s3cret@broker.example:notaport//"),
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
    redis_url = {"schemes": ("redis", "rediss"), "kind": "a Redis URL", "form": "redis://HOST/DB"}
    monkeypatch.setenv("TEST_ENV_URL", "rediss://:s3cret@cache.example:6380/2")
    assert env.env_url("TEST_ENV_URL", **redis_url) == "rediss://:s3cret@cache.example:6380/2"

    monkeypatch.setenv("TEST_ENV_URL", "http://u:s3cret@host")
    with pytest.raises(ImproperlyConfigured, match="TEST_ENV_URL") as excinfo:
        env.env_url("TEST_ENV_URL", **redis_url)
    assert str(excinfo.value) == "TEST_ENV_URL='http://u:***@host' is not a Redis URL: use redis://HOST/DB"


@pytest.mark.parametrize(
    "value",
    ["postgres://u@db.example:port/shop", "redis://cache.example/0", "postgres://u@db.example/", "redis:/"],
)
def test_env_url_rejects_a_bad_port_path_or_host(monkeypatch, value):
    """Given a URL with a port that is not a number, a path the form does not allow or no host, when read,
    then ImproperlyConfigured names the variable (instead of a ValueError deep in a driver)."""
    monkeypatch.setenv("TEST_ENV_URL", value)

    with pytest.raises(ImproperlyConfigured, match="TEST_ENV_URL="):
        env.env_url("TEST_ENV_URL", schemes=("postgres", "redis"), kind="a URL", form="s://H/N", path_pattern=r"[a-z]+")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@cache.example:6380/2", "redis://:***@cache.example:6380/2"),
        ("postgres://shop:s3cret@db.example/shop", "postgres://shop:***@db.example/shop"),
        ("postgres://shop:p@ss:w@rd@db.example/shop", "postgres://shop:***@db.example/shop"),
        ("shop:s3cret@db.example", "shop:***@db.example"),
        ("postgres://shop@db.example/shop", "postgres://shop@db.example/shop"),
        ("notaurl", "notaurl"),
    ],
)
def test_mask_password_hides_the_password_of_any_url_like_text(url, masked):
    """Given a URL or URL-like text, when masked, then its password (if any) is ``***`` and the rest stays."""
    assert env.mask_password(url) == masked


# --- .env -------------------------------------------------------------------------------------------------


def _env_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / ".env"
    path.write_text(text)
    return str(path)


PRINT_SETTINGS = "from django.conf import settings as s; print(s.NOTIFICATION_BATCH_SIZE, s.EMAIL_HOST)"


@pytest.mark.parametrize(
    "command",
    [
        ["manage.py", "shell", "-v", "0", "-c", PRINT_SETTINGS],
        ["-c", f"import marketplace.wsgi; {PRINT_SETTINGS}"],
        ["-c", f"import marketplace.celery; {PRINT_SETTINGS}"],
    ],
    ids=["manage.py", "wsgi", "celery-app"],
)
def test_entry_points_read_the_env_file_under_the_real_environment(tmp_path, command):
    """Given a .env file that sets two variables and a real environment that sets one of them too, when an
    entry point starts, then the settings hold the file's value for the other and the real environment's
    for the one both set."""
    env_file = _env_file(tmp_path, "NOTIFICATION_BATCH_SIZE=42\nEMAIL_HOST=smtp.from-dotenv.example\n")

    result = _run(*command, MARKETPLACE_ENV_FILE=env_file, EMAIL_HOST="smtp.from-environment.example")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42 smtp.from-environment.example"


def test_env_file_supplies_required_variables(tmp_path):
    """Given DATABASE_URL and DJANGO_DEBUG only in the .env file, when manage.py starts, then it runs."""
    env_file = _env_file(tmp_path, "DATABASE_URL=postgres://postgres@127.0.0.1:5432/marketplace\nDJANGO_DEBUG=on\n")

    result = _run("manage.py", "check", MARKETPLACE_ENV_FILE=env_file, DATABASE_URL=None, DJANGO_DEBUG=None)

    assert result.returncode == 0, result.stderr


def test_celery_command_reports_a_bad_env_file_value_in_one_line(tmp_path):
    """Given a malformed broker URL in the .env file only, when ``celery -A marketplace inspect`` starts, then
    it stops in one line naming the variable: the celery command reads .env too."""
    env_file = _env_file(tmp_path, "CELERY_BROKER_URL=garbage\n")

    result = _run(*ENTRY_POINTS["celery inspect"], MARKETPLACE_ENV_FILE=env_file)

    assert result.returncode == 2
    assert result.stderr.startswith("configuration error: CELERY_BROKER_URL='garbage'")
    assert result.stderr.count("\n") == 1, result.stderr
