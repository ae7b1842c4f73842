"""``python -m marketplace.devrun``, the last step of ``make run``: the Procfile's processes under honcho, where
a stop by Ctrl-C (SIGINT) or SIGTERM exits 0 - so ``make`` prints no ``Error 130``/``Error 143`` - and a
process dying on its own still fails the run with its status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, wait_for


def _devrun(procfile, log_path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "marketplace.devrun", "--procfile", str(procfile)],
            cwd=ROOT, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_by_signal_stops_every_process_and_exits_0(tmp_path, stop):
    """Given two long-running processes under devrun, when it receives SIGINT or SIGTERM, then it stops both
    and exits 0."""
    procfile = tmp_path / "Procfile"
    sleeper = f"{sys.executable} -c 'import time; time.sleep(60)'"
    procfile.write_text(f"one: {sleeper}\ntwo: {sleeper}\n")
    log_path = tmp_path / "devrun.log"
    process = _devrun(procfile, log_path)
    try:
        wait_for(lambda: log_path.read_text().count(" started (pid=") == 2, timeout=30, what="both processes")

        process.send_signal(stop)

        assert process.wait(timeout=30) == 0, log_path.read_text()
        assert log_path.read_text().count(" stopped (rc=") == 2
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_a_process_that_dies_on_its_own_fails_the_run(tmp_path):
    """Given a process that exits 3 by itself, when it does, then devrun stops the others and exits 3."""
    procfile = tmp_path / "Procfile"
    crash = f"{sys.executable} -c 'import sys; sys.exit(3)'"
    procfile.write_text(f"crash: {crash}\nlong: {sys.executable} -c 'import time; time.sleep(60)'\n")
    process = _devrun(procfile, tmp_path / "devrun.log")
    try:
        assert process.wait(timeout=60) == 3
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
