"""Beat's liveness probe, against a real ``celery beat``: Celery 5.7's remote control
(``CELERY_BEAT_ENABLE_REMOTE_CONTROL``) makes beat answer ``celery inspect ping -d celerybeat@HOST`` - the compose
healthcheck - while its scheduler ticks, and go silent once it has not ticked for the max tick age."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from marketplace.celery import app as celery_app
from tests.conftest import ROOT, one_queue, running_beat, wait_for

pytestmark = [pytest.mark.django_db(transaction=True)]

BEAT_NODE = f"celerybeat@{socket.gethostname()}"


def _answers() -> bool:
    return bool(celery_app.control.ping(destination=[BEAT_NODE], timeout=0.5))


def _healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The compose healthcheck's command."""
    command = [sys.executable, "-m", "celery", "-A", "marketplace", "inspect", "ping", "-d", BEAT_NODE, "-t", "2"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_beat_answers_ping_while_it_ticks_and_goes_silent_when_its_scheduler_stalls(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    stall = tmp_path / "stall"
    env = {
        **worker_env,
        **one_queue("beat-probe"),
        "BEAT_STALL_FILE": str(stall),
        "CELERY_BEAT_MAX_LOOP_INTERVAL_SECONDS": "0.5",
        "CELERY_BEAT_REMOTE_CONTROL_MAX_TICK_AGE_SECONDS": "3",
    }
    with running_beat(env, tmp_path, "-S", "tests.beat_schedulers:StallingScheduler") as log_path:
        wait_for(_answers, timeout=60, what=f"{BEAT_NODE} to answer ping")
        live = _healthcheck(env)
        assert live.returncode == 0, live.stdout + live.stderr
        assert "pong" in live.stdout

        stall.touch()
        wait_for(lambda: not _answers() and not _answers(), timeout=30, what="a stalled beat to stop answering")
        stalled = _healthcheck(env)
        assert stalled.returncode != 0, stalled.stdout
        assert "not answering ping" in log_path.read_text()

        stall.unlink()
        wait_for(_answers, timeout=30, what="beat to answer again once its scheduler ticks")
