"""``python -m marketplace.preflight``: one stderr line per problem with the right advice - Postgres, the
broker and the result backend refused, unknown host, credentials rejected, a missing database, a Redis
database out of range - and a port the system will listen on already taken; the default database is created
when missing, any other name is not."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from urllib.parse import urlparse, urlunparse

import psycopg
import pytest

from marketplace import preflight
from tests.conftest import ROOT, TEST_REDIS_URL

#: The local server's own ``postgres`` database: it always exists, whatever the suite's DATABASE_URL names.
_LOCAL = urlparse(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/marketplace"))
EXISTING_DATABASE_URL = urlunparse(_LOCAL._replace(path="/postgres"))
REFUSED_DATABASE_URL = "postgres://postgres@127.0.0.1:1/marketplace"  # nothing listens on port 1
REFUSED_REDIS_URL = "redis://127.0.0.1:1/0"
UNKNOWN_HOST = "no-such-host.invalid"  # .invalid never resolves (RFC 2606): the resolver fails, no traffic
UNKNOWN_ROLE_DATABASE_URL = urlunparse(_LOCAL._replace(netloc=f"nosuchrole@{_LOCAL.hostname}:{_LOCAL.port or 5432}"))


def _preflight(*args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "MARKETPLACE_ENV_FILE": "",
        "DJANGO_DEBUG": "true",
        "DATABASE_URL": EXISTING_DATABASE_URL,
        "CELERY_BROKER_URL": TEST_REDIS_URL,
        "CELERY_RESULT_BACKEND": TEST_REDIS_URL,
        **overrides,
    }
    return subprocess.run(
        [sys.executable, "-m", "marketplace.preflight", *args],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("preflight: "), result.stderr
    return lines[0]


def _database_exists(name: str) -> bool:
    with psycopg.connect(EXISTING_DATABASE_URL, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


# --- everything answers --------------------------------------------------------------------------------------


def test_passes_when_postgres_broker_and_result_backend_answer():
    """Given the local Postgres and Redis, when preflight runs, then it exits 0 with nothing on stderr."""
    result = _preflight()

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


# --- Postgres ------------------------------------------------------------------------------------------------


def test_refused_postgres_says_how_to_start_it():
    """Given a database URL nothing listens on, when preflight runs, then one line says Postgres refused the
    connection and how to start it."""
    line = _one_line(_preflight(DATABASE_URL=REFUSED_DATABASE_URL))

    assert line.startswith("preflight: Postgres at 127.0.0.1:1 refused the connection")
    assert "start it with" in line


def test_unknown_postgres_host_says_to_fix_the_variable():
    """Given a database host that does not resolve, when preflight runs, then one line names the host and
    DATABASE_URL, and does not tell to start a server."""
    line = _one_line(_preflight(DATABASE_URL=f"postgres://postgres:s3cret@{UNKNOWN_HOST}:5432/marketplace"))

    assert f"DATABASE_URL names the host '{UNKNOWN_HOST}', which does not resolve" in line
    assert "start it" not in line
    assert "s3cret" not in line


def test_unknown_role_says_the_login_was_rejected():
    """Given a role the server does not have, when preflight runs, then one line says the login was rejected
    and to fix the user or password in DATABASE_URL - not that the server is down."""
    line = _one_line(_preflight(DATABASE_URL=UNKNOWN_ROLE_DATABASE_URL))

    assert "rejected the login of DATABASE_URL" in line
    assert 'role "nosuchrole" does not exist' in line
    assert "fix the user or password in DATABASE_URL" in line
    assert "start it" not in line


def test_missing_database_with_another_name_is_reported_not_created():
    """Given a database name that does not exist and is not the default, when preflight runs, then one line
    says so naming DATABASE_URL, and no database of that name is created (a typo gets no empty database)."""
    name = f"nosuchdb_{uuid.uuid4().hex[:8]}"

    line = _one_line(_preflight(DATABASE_URL=urlunparse(_LOCAL._replace(path=f"/{name}"))))

    assert f"has no database '{name}': fix the name in DATABASE_URL (the default is 'marketplace')" in line
    assert not _database_exists(name)


def test_missing_default_database_is_created():
    """Given the server answering and the default database missing, when the database is checked, then it
    is created and the check passes (the default name is a parameter here, so the test touches nothing
    shared)."""
    name = f"preflight_{uuid.uuid4().hex[:8]}"
    url = urlunparse(_LOCAL._replace(path=f"/{name}"))
    try:
        assert preflight.check_database(url, creatable=name) is None
        assert _database_exists(name)
        assert preflight.check_database(url, creatable=name) is None
    finally:
        with psycopg.connect(EXISTING_DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def test_default_database_name_is_the_one_created():
    """The name the preflight may create is the one every default of the project uses."""
    assert preflight.DEFAULT_DATABASE_NAME == "marketplace"


# --- the broker and the result backend -------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL"])
def test_refused_redis_names_the_variable_and_how_to_start_it(variable):
    """Given the broker, the result backend or the app's state Redis on a port nothing listens on, when
    preflight runs, then one line names that variable, says Redis refused and how to start it, without its
    password."""
    line = _one_line(_preflight(**{variable: "redis://:s3cret@127.0.0.1:1/0"}))

    assert line.startswith(f"preflight: Redis at 127.0.0.1:1 ({variable}) refused the connection")
    assert "redis-server" in line
    assert "s3cret" not in line


def test_broker_and_result_backend_on_one_url_are_checked_once_naming_both():
    """Given the broker and the result backend on the same unreachable URL, when preflight runs, then one
    line names both variables."""
    line = _one_line(_preflight(CELERY_BROKER_URL=REFUSED_REDIS_URL, CELERY_RESULT_BACKEND=REFUSED_REDIS_URL))

    assert "(CELERY_BROKER_URL and CELERY_RESULT_BACKEND) refused the connection" in line


@pytest.mark.parametrize("variable", ["CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"])
def test_unknown_redis_host_says_to_fix_the_variable(variable):
    """Given a Redis host that does not resolve, when preflight runs, then one line names the host and the
    variable, and does not tell to start Redis."""
    line = _one_line(_preflight(**{variable: f"redis://{UNKNOWN_HOST}:6379/0"}))

    assert f"{variable} names the host '{UNKNOWN_HOST}', which does not resolve" in line
    assert "start it" not in line


@pytest.mark.parametrize("variable", ["CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"])
def test_rejected_redis_password_says_to_fix_the_credentials(variable):
    """Given a password the local Redis does not take (it has none), when preflight runs, then one line says
    the credentials were rejected, names the variable and never prints the password."""
    redis_url = urlparse(TEST_REDIS_URL)
    url = urlunparse(redis_url._replace(netloc=f":s3cret@{redis_url.hostname}:{redis_url.port or 6379}"))

    line = _one_line(_preflight(**{variable: url}))

    assert f"({variable}) rejected the credentials" in line
    assert f"fix the password (or user) in {variable}" in line
    assert "s3cret" not in line


@pytest.mark.parametrize("variable", ["CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"])
def test_redis_database_out_of_range_says_which_numbers_exist(variable):
    """Given a Redis database index the server does not have (/99), when preflight runs, then one line says
    there is no database 99 and which numbers to use - not that Redis is down."""
    url = urlunparse(urlparse(TEST_REDIS_URL)._replace(path="/99"))

    line = _one_line(_preflight(**{variable: url}))

    assert f"({variable}) has no database 99: use a database number below" in line
    assert "start it" not in line


def test_every_problem_gets_its_own_line():
    """Given Postgres and the broker unreachable, when preflight runs, then it exits 1 with one line each."""
    result = _preflight(DATABASE_URL=REFUSED_DATABASE_URL, CELERY_BROKER_URL=REFUSED_REDIS_URL)

    assert result.returncode == 1
    assert [line.split(" at ")[0] for line in result.stderr.splitlines()] == ["preflight: Postgres", "preflight: Redis"]


# --- ports ---------------------------------------------------------------------------------------------------


def test_taken_port_is_named_with_its_role():
    """Given a port something listens on, when preflight runs with --port web=PORT, then one line names the
    port and its role; a free port beside it passes."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        with socket.socket() as spare:
            spare.bind(("127.0.0.1", 0))
            free = spare.getsockname()[1]

        line = _one_line(_preflight("--port", f"web={taken}", "--port", f"flower={free}"))

    assert line.startswith(f"preflight: port {taken} (web) on 127.0.0.1 is taken")


def test_free_ports_pass():
    """Given ports nothing listens on, when preflight runs with them, then it exits 0."""
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        free = spare.getsockname()[1]

    result = _preflight("--port", f"web={free}")

    assert result.returncode == 0, result.stderr


def test_malformed_port_argument_is_a_usage_error():
    """Given --port without ROLE=, when preflight runs, then argparse stops it naming the expected form."""
    result = _preflight("--port", "8000")

    assert result.returncode == 2
    assert "is not ROLE=PORT" in result.stderr


# --- configuration -------------------------------------------------------------------------------------------


def test_malformed_configuration_is_one_line_too():
    """Given a malformed DATABASE_URL, when preflight runs, then it stops with the one configuration line."""
    result = _preflight(DATABASE_URL="notaurl")

    assert result.returncode == 2
    assert result.stderr.startswith("configuration error: DATABASE_URL='notaurl'")
    assert result.stderr.count("\n") == 1
