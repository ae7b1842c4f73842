"""``python -m marketplace.preflight``: check that Postgres and Redis answer before the system starts.

Prints one line per unreachable service with how to start it, and exits 1; creates the database named in
``DATABASE_URL`` when the server answers but the database does not exist yet (a fresh machine).
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlparse

import psycopg
import redis
from psycopg import sql

_HINTS = {
    "postgres": "start it with 'docker compose up -d postgres' or "
    "'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start'",
    "redis": "start it with 'docker compose up -d redis' or 'redis-server --daemonize yes'",
}


def _check_postgres(url: str) -> str | None:
    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    try:
        with psycopg.connect(url, dbname="postgres", connect_timeout=3, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                print(f"preflight: created database {name!r}")
    except psycopg.OperationalError as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = f"{parsed.hostname}:{parsed.port or 5432}"
        return f"Postgres at {where} refused the connection ({reason}): if it is not running, {_HINTS['postgres']}."
    return None


def _check_redis(url: str) -> str | None:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.exceptions.RedisError as exc:
        return f"Redis at {url.split('@')[-1]} is not reachable ({exc}): {_HINTS['redis']}."
    return None


def main() -> int:
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        print("preflight: set the DATABASE_URL environment variable (see .env.example).", file=sys.stderr)
        return 1
    problems = [
        _check_postgres(database_url),
        _check_redis(os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")),
    ]
    for problem in filter(None, problems):
        print(f"preflight: {problem}", file=sys.stderr)
    return 1 if any(problems) else 0


if __name__ == "__main__":
    sys.exit(main())
