"""Every command of the seed document runs against the project: worker, beat, inspect, purge, control,
flower - as separate processes, the way an operator types them."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from base64 import b64encode
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from promotions.models import FlashPromo, PromoStatus
from tests.conftest import ROOT, WorkerProcess, running_beat, wait_for
from tests.factories import PromoFactory
from tests.net import free_port, http_status

pytestmark = [pytest.mark.django_db(transaction=True)]


def celery(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "marketplace", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _answered_by(worker: WorkerProcess) -> list[str]:
    """Arguments of an ``inspect``/``control`` command addressed to ``worker``: it returns as soon as that worker
    answers, so the deadline can be long (a busy machine) without each call waiting it out, as a broadcast to
    any number of workers does."""
    return ["-d", worker.name, "--timeout=30"]


@pytest.mark.parametrize("what", ["active", "scheduled", "stats", "conf"])
def test_inspect_commands_answer(celery_worker, worker_env, what):
    """``celery -A marketplace inspect active|scheduled|stats|conf`` reaches the running worker."""
    result = celery("inspect", what, "--json", *_answered_by(celery_worker), env=worker_env)
    assert result.returncode == 0, result.stderr
    replies = json.loads(result.stdout)
    assert replies, "no worker answered"


def test_inspect_conf_shows_the_seed_production_settings(celery_worker, worker_env):
    """The worker runs with the seed's production settings, accepts JSON only and masks its secrets."""
    result = celery("inspect", "conf", "--json", *_answered_by(celery_worker), env=worker_env)
    conf = next(iter(json.loads(result.stdout).values()))
    assert conf["CELERY_WORKER_PREFETCH_MULTIPLIER"] == 1
    assert conf["CELERY_TASK_ACKS_LATE"] is True
    assert conf["CELERY_WORKER_MAX_TASKS_PER_CHILD"] == 1000
    assert conf["CELERY_ACCEPT_CONTENT"] == ["json"]
    assert conf["CELERY_TASK_SERIALIZER"] == "json"
    assert conf["CELERY_WORKER_LOG_FORMAT"] == "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
    assert conf["SECRET_KEY"] == "********"
    assert conf["DATABASE_URL"] == "********"


def test_purge_empties_the_queue(worker_env, broker):
    """``celery -A marketplace purge -f`` drops waiting messages (no worker is consuming here)."""
    from promotions.tasks import cleanup_expired_promos

    queue = "purge-test"
    cleanup_expired_promos.apply_async(queue=queue)
    assert broker.depth(queue) == 1
    result = celery("purge", "-f", "-Q", queue, env=worker_env)
    assert result.returncode == 0, result.stderr
    assert broker.depth(queue) == 0


def test_control_pool_restart_is_enabled(start_worker, worker_env):
    """``celery -A marketplace control pool_restart`` restarts the children (the seed's soft restart)."""
    worker = start_worker()
    result = celery("control", "pool_restart", *_answered_by(worker), env=worker_env)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "reload started" in result.stdout


def test_beat_publishes_the_schedule_and_the_worker_runs_it(celery_worker, worker_env, tmp_path):
    """``celery -A marketplace beat`` publishes every entry that is due; the worker activates a due promo."""
    promo = PromoFactory(starts_at=timezone.now() - timedelta(seconds=1))
    with running_beat(worker_env, tmp_path) as log_path:
        wait_for(
            lambda: FlashPromo.objects.get(pk=promo.pk).status == PromoStatus.ACTIVE,
            what="beat -> worker to activate the promo",
        )
        wait_for(
            lambda: all(f"Sending due task {key}" in log_path.read_text() for key in settings.CELERY_BEAT_SCHEDULE),
            what="beat to publish every due entry",
        )


def test_beat_schedule_is_the_seeds_with_expiry():
    """Keys, tasks and intervals are the seed's (plus the daily dead-letter retention); every entry expires
    within one interval, so an outage does not leave a pile of stale ticks."""
    schedule = settings.CELERY_BEAT_SCHEDULE
    assert {key: (entry["task"], entry["schedule"]) for key, entry in schedule.items()} == {
        "check-flash-promos-every-minute": ("promotions.tasks.check_active_promos", 60.0),
        "cleanup-expired-promos-every-hour": ("promotions.tasks.cleanup_expired_promos", 3600.0),
        "process-notification-queue-every-30s": ("promotions.tasks.process_notification_queue", 30.0),
        "purge-expired-dead-letters-daily": ("observability.deadletters.tasks.purge_expired_dead_letters", 86400.0),
    }
    for entry in schedule.values():
        assert 0 < entry["options"]["expires"] <= entry["schedule"]


def test_flower_runs_and_requires_authentication(worker_env, tmp_path, start_command):
    """``celery -A marketplace flower`` serves its UI only to a user with the configured credentials."""
    port = free_port()
    env = {**worker_env, "FLOWER_BASIC_AUTH": "admin:flower-test-password"}
    # Flower's SIGTERM handler calls sys.exit() inside the signal handler (mher/flower#138): when the signal
    # lands while a weakref callback runs, Python prints "Exception ignored" and Flower keeps running (seen in CI
    # on a slow machine); ``start_command`` then kills it after 20 s. Its UI is checked by then.
    with (tmp_path / "flower.log").open("w") as log:
        start_command(
            [sys.executable, "-m", "celery", "-A", "marketplace", "flower", "--address=127.0.0.1", f"--port={port}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

        def status(headers: dict[str, str]) -> int | None:
            return http_status(urllib.request.Request(f"http://127.0.0.1:{port}/", headers=headers), timeout=2)

        assert wait_for(lambda: status({}), timeout=30, what="flower to listen") == 401
        token = b64encode(b"admin:flower-test-password").decode()
        assert status({"Authorization": f"Basic {token}"}) == 200
