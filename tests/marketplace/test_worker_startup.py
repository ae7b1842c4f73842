"""A pool child's start-up stays small: with the project's child recycling (a new child every
``max_tasks_per_child`` tasks), whatever a child does at ``worker_process_init`` is paid again and again.

Checked in a separate interpreter, as a worker does it: the main process's ``worker_init`` (Sentry and
telemetry on), then ``fork``, then the child's ``worker_process_init``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.conftest import ROOT
from tests.otlp_receiver import OtlpReceiver

_SCRIPT = textwrap.dedent(
    """
    import gc, json, os, sys
    import django
    django.setup()
    from celery import signals
    import marketplace.celery  # connects the project's signal handlers, as `celery -A marketplace` does

    signals.worker_init.send(sender=None)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        before = set(sys.modules)
        signals.worker_process_init.send(sender=None)
        child = {"imported": sorted(set(sys.modules) - before), "frozen": gc.get_freeze_count()}
        os.write(write, json.dumps(child).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        print(pipe.read())
    os.waitpid(pid, 0)
    """
)


def test_a_pool_child_starts_with_everything_loaded_and_frozen(otlp_receiver: OtlpReceiver) -> None:
    """Every module a child needs is loaded before the fork: importing the SQL instrumentation after it was
    72-90 ms of CPU per child, about 80 us per task at 1,000 tasks per child. And the main process froze its
    start-up objects before forking, which the child inherits frozen: no collection in either process scans
    (and so writes to, and copies) the pages they share (docs/performance.md)."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "marketplace.settings",
        "SENTRY_DSN": "http://public@127.0.0.1:9/1",  # on; nothing is sent (no error happens)
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
    }
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    child = json.loads(done.stdout.strip().splitlines()[-1])
    assert child["imported"] == []
    assert child["frozen"] > 50_000, child["frozen"]
