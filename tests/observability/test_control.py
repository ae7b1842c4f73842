"""``celery inspect conf`` (and Flower's worker Config tab, which asks the same command) masks every secret:
passwords inside URLs and Sentry's DSN included, which Celery's own by-name filter missed in a Django project."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from celery.worker import control as celery_control

from observability import control
from observability.logs.redaction import MASK, mask_url_credentials
from tests.conftest import ROOT, broker_url_with_password

PASSWORD = "s3cret-broker-pw"
DSN_KEY = "0123456789abcdef"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("redis://:pw@host:6379/0", f"redis://:{MASK}@host:6379/0"),
        ("redis://default:pw@host/1", f"redis://default:{MASK}@host/1"),
        ("https://key@o1.ingest.sentry.io/42", f"https://{MASK}@o1.ingest.sentry.io/42"),
        ("error at postgres://app:pw@db/x, retrying", f"error at postgres://app:{MASK}@db/x, retrying"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("someone@example.com", "someone@example.com"),
    ],
)
def test_url_credentials_are_masked(text, masked):
    """A URL's password (or its bare user, a DSN's key) is masked; URLs without credentials and addresses stay."""
    assert mask_url_credentials(text) == masked


def test_the_masked_command_replaces_celerys_under_its_name():
    """Celery 5.7's registry, which the override relies on: ``conf`` and its alias ``dump_conf`` answer with ours,
    and Celery's own command is still where it was, called by ours."""
    assert celery_control.Panel.data["conf"] is control.conf
    assert celery_control.Panel.data["dump_conf"] is control.conf
    assert control._celery_conf.__module__ == "celery.worker.control"
    assert celery_control.Panel.meta["conf"].args == [("with_defaults", celery_control.strtobool)]


def test_inspect_conf_masks_the_broker_password_and_the_sentry_dsn(start_worker, worker_env):
    """Given a worker whose broker URL carries a password and with a Sentry DSN, when an operator runs
    ``celery inspect conf``, then neither secret is in the reply, and both settings read masked."""
    broker, password = broker_url_with_password(PASSWORD)
    env = {**worker_env, "CELERY_BROKER_URL": broker, "SENTRY_DSN": f"https://{DSN_KEY}@127.0.0.1:9/1"}
    worker = start_worker(env=env)
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "marketplace", "inspect", "conf", "--json", "-d", worker.name,
         "--timeout=30"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout
    assert DSN_KEY not in result.stdout
    conf = json.loads(result.stdout)[worker.name]
    assert conf["CELERY_BROKER_URL"] == broker.replace(f":{password}@", f":{MASK}@")
    assert conf["SENTRY_DSN"] == MASK
