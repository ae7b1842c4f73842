"""``python -m marketplace.preflight [--port ROLE=PORT ...]``: before the system starts, check that Postgres,
the broker and the result backend answer as configured, and that the ports it will listen on are free.

Prints one stderr line per problem - refused, unknown host, credentials rejected, missing database, Redis
database out of range, port taken - with what to do about it, and exits 1. Creates the database when the
server answers but the default one (``marketplace``) does not exist yet, as on a fresh machine; any other
missing name is reported instead, so a typo does not get a new, empty database.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import socket
import sys
from collections.abc import Sequence
from urllib.parse import urlparse

import psycopg
import redis
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

from marketplace.env import mask_password
from marketplace.startup import configure

__all__ = ["DEFAULT_DATABASE_NAME", "check_database", "check_port", "check_redis", "main"]

#: The one database the preflight creates when it is missing: the name every default of the project uses.
DEFAULT_DATABASE_NAME = "marketplace"
CONNECT_TIMEOUT_SECONDS = 3
_START_POSTGRES = (
    "start it with 'docker compose up -d postgres' or "
    "'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start'"
)
_START_REDIS = "start it with 'docker compose up -d redis' or 'redis-server --daemonize yes'"
# libpq's wording of the server's FATAL errors (psycopg leaves sqlstate empty for a failed connection).
_AUTH_FAILED = re.compile(r'role "[^"]*" does not exist|password authentication failed|no pg_hba\.conf entry')
_MISSING_DATABASE = re.compile(r'database "[^"]*" does not exist')


def _resolves(host: str, port: int) -> bool:
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return True


def _reason(exc: BaseException) -> str:
    """The first line of an error without libpq's "connection to server ... failed:" preamble."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return first.rsplit(" failed: ", 1)[-1].strip()


def check_database(url: str, *, variable: str = "DATABASE_URL", creatable: str = DEFAULT_DATABASE_NAME) -> str | None:
    """Connect to the database of ``url``; return what is wrong in one line, or None.

    A missing database named ``creatable`` is created (and said on stdout); any other missing one is a problem.
    """
    parsed = urlparse(url)
    host, port, name = parsed.hostname or "localhost", parsed.port or 5432, parsed.path.lstrip("/")
    where = f"Postgres at {host}:{port}"
    if not _resolves(host, port):
        return f"{variable} names the host {host!r}, which does not resolve: fix the host in {variable}."
    try:
        psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS).close()
    except psycopg.OperationalError as exc:
        reason = _reason(exc)
        if _MISSING_DATABASE.search(reason):
            if name != creatable:
                return (
                    f"{where} has no database {name!r}: fix the name in {variable} (the default is "
                    f"{DEFAULT_DATABASE_NAME!r}) or create it with 'createdb -h {host} -p {port} {name}'."
                )
            return _create_database(url, name=name, where=where)
        if _AUTH_FAILED.search(reason):
            return f"{where} rejected the login of {variable} ({reason}): fix the user or password in {variable}."
        if "Connection refused" in reason:
            return f"{where} refused the connection: if it is not running, {_START_POSTGRES}."
        if "timeout expired" in reason:
            return (
                f"{where} did not answer within {CONNECT_TIMEOUT_SECONDS} s: "
                f"check the host and port in {variable}, and that nothing between drops the traffic."
            )
        return f"{where} did not accept the connection ({reason}): check {variable}."
    return None


def _create_database(url: str, *, name: str, where: str) -> str | None:
    try:
        with psycopg.connect(url, dbname="postgres", connect_timeout=CONNECT_TIMEOUT_SECONDS, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        return f"{where} has no database {name!r} and could not create it ({_reason(exc)})."
    print(f"preflight: created database {name!r}")
    return None


def check_redis(url: str, *, variables: Sequence[str]) -> str | None:
    """Connect to ``url`` and select its database; return what is wrong in one line, or None.

    ``variables`` are the settings that hold this URL (the broker and the result backend may share one).
    """
    named = " and ".join(variables)
    parsed = urlparse(url)
    host, port = parsed.hostname or "localhost", parsed.port or 6379
    db = parsed.path.lstrip("/") or "0"
    where = f"Redis at {host}:{port} ({named})"
    if not _resolves(host, port):
        return f"{named} names the host {host!r}, which does not resolve: fix the host in {named}."
    # A server that accepts the connection but never answers (a dropped flow) is a timeout too, not a hang;
    # no retry: this is one probe.
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=CONNECT_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.ping()
    except redis.exceptions.AuthenticationError as exc:
        reason = mask_password(str(exc)).split(". ")[0]
        return f"{where} rejected the credentials ({reason}): fix the password (or user) in {named}."
    except redis.exceptions.TimeoutError:
        return (
            f"{where} did not answer within {CONNECT_TIMEOUT_SECONDS} s: "
            f"check the host and port in {named}, and that nothing between drops the traffic."
        )
    except redis.exceptions.ConnectionError as exc:
        if isinstance(exc.__context__, ConnectionRefusedError) or "refused" in str(exc):
            return f"{where} refused the connection: if it is not running, {_START_REDIS}."
        return f"{where} is not reachable ({mask_password(str(exc))}): check {named}."
    except redis.exceptions.ResponseError as exc:
        if "DB index is out of range" in str(exc):
            return (
                f"{where} has no database {db}: use a database number below the server's 'databases' setting "
                f"(16 unless redis.conf changes it), e.g. /0."
            )
        return f"{where} answered with an error ({exc}): check {named}."
    finally:
        client.close()
    return None


def check_rabbitmq(url: str, *, variable: str = "CELERY_BROKER_URL") -> str | None:
    """Connect to the RabbitMQ of ``url`` (its virtual host included); return what is wrong in one line, or None."""
    from amqp.exceptions import AccessRefused, AMQPError, NotAllowed
    from kombu import Connection
    from kombu.exceptions import OperationalError

    parsed = urlparse(url)
    host, port = parsed.hostname or "localhost", parsed.port or (5671 if parsed.scheme == "amqps" else 5672)
    where = f"RabbitMQ at {host}:{port} ({variable})"
    if not _resolves(host, port):
        return f"{variable} names the host {host!r}, which does not resolve: fix the host in {variable}."
    connection = Connection(url, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        connection.ensure_connection(max_retries=0)
    except AccessRefused:
        return f"{where} rejected the credentials: fix the user or password in {variable}."
    except NotAllowed:
        vhost = parsed.path.removeprefix("/") or "/"
        return (
            f"{where} has no virtual host {vhost!r} the user may use: create it (rabbitmqctl add_vhost, "
            f"set_permissions) or fix {variable}."
        )
    except (OSError, OperationalError, AMQPError) as exc:  # kombu wraps the socket's error, or passes it on
        if "refused" in str(exc).lower():
            return f"{where} refused the connection: if it is not running, start it (rabbitmq-server -detached)."
        return f"{where} is not reachable ({mask_password(str(exc))}): check {variable}."
    finally:
        connection.release()
    return None


def check_port(port: int, *, role: str, host: str = "127.0.0.1") -> str | None:
    """Return a line naming ``port`` when something already listens on it, or None when it is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers bind: a port left in TIME_WAIT by a stopped server is free for them too.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            return (
                f"port {port} ({role}) on {host} is taken: stop what listens there "
                f"(another 'make run'? 'ss -ltnp sport = :{port}' names it)."
            )
    return None


def _role_port(value: str) -> tuple[str, int]:
    role, _, port = value.partition("=")
    if not role or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not ROLE=PORT, e.g. web=8000")
    return role, int(port)


def main(argv: Sequence[str] | None = None, *, creatable_database: str = DEFAULT_DATABASE_NAME) -> int:
    """Check everything, print one line per problem to stderr, and return 1 if there was any.

    ``creatable_database`` is the database name created when missing (the bench passes its own).
    """
    parser = argparse.ArgumentParser(prog="python -m marketplace.preflight", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port",
        type=_role_port,
        action="append",
        default=[],
        metavar="ROLE=PORT",
        help="A port on 127.0.0.1 the system will listen on, that must be free (repeatable): web=8000.",
    )
    arguments = parser.parse_args(argv)
    configure()
    from django.conf import settings

    redis_urls: dict[str, list[str]] = {}
    # REDIS_URL is named only when set: by default it is the broker's Redis, checked as CELERY_BROKER_URL.
    state = ("REDIS_URL",) if os.environ.get("REDIS_URL") else ()
    rabbitmq = settings.BROKER == "rabbitmq"
    variables = (*(() if rabbitmq else ("CELERY_BROKER_URL",)), "CELERY_RESULT_BACKEND", *state)
    for variable in variables:
        redis_urls.setdefault(getattr(settings, variable), []).append(variable)
    problems = [
        *(check_port(port, role=role) for role, port in arguments.port),
        check_database(settings.DATABASE_URL, creatable=creatable_database),
        check_rabbitmq(settings.CELERY_BROKER_URL) if rabbitmq else None,
        *(check_redis(url, variables=variables) for url, variables in redis_urls.items()),
    ]
    for problem in filter(None, problems):
        print(f"preflight: {problem}", file=sys.stderr)
    return 1 if any(problems) else 0


if __name__ == "__main__":
    sys.exit(main())
