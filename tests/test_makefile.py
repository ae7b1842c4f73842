"""The Makefile's ``make run`` as a newcomer meets it: the first run writes ``.env`` (local defaults and a
generated secret key, owner-only, never overwritten), and the run checks its ports before it migrates or
seeds anything, then hands over to the launcher that stops cleanly."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make(folder, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(folder), f"PYTHON={sys.executable}", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture
def project(tmp_path):
    """A folder with the project's Makefile and nothing else: what make writes there is all it wrote."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    return tmp_path


def _values(path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_first_run_writes_env_with_the_local_defaults_and_a_secret_key(project):
    """Given no .env, when make builds it, then it holds the local defaults and a generated secret key, and
    only its owner can read it."""
    result = _make(project, ".env")

    assert result.returncode == 0, result.stderr
    values = _values(project / ".env")
    assert values.pop("DJANGO_SECRET_KEY").isascii()
    assert values == {
        "DJANGO_DEBUG": "true",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/marketplace",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
        "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/0",
    }
    assert stat.S_IMODE((project / ".env").stat().st_mode) == 0o600


def test_secret_keys_differ_between_checkouts(project, tmp_path_factory):
    """Given two fresh checkouts, when each writes its .env, then their secret keys differ (generated)."""
    other = tmp_path_factory.mktemp("other")
    shutil.copy(ROOT / "Makefile", other / "Makefile")

    _make(project, ".env")
    _make(other, ".env")

    assert len(_values(project / ".env")["DJANGO_SECRET_KEY"]) >= 40
    assert _values(project / ".env")["DJANGO_SECRET_KEY"] != _values(other / ".env")["DJANGO_SECRET_KEY"]


def test_an_existing_env_is_never_overwritten(project):
    """Given a .env of the developer's own, when make runs its .env step again, then the file is unchanged."""
    (project / ".env").write_text("DATABASE_URL=postgres://me@127.0.0.1:5432/mine\n")

    result = _make(project, ".env")

    assert result.returncode == 0, result.stderr
    assert (project / ".env").read_text() == "DATABASE_URL=postgres://me@127.0.0.1:5432/mine\n"


def test_run_checks_ports_before_it_migrates_or_seeds_and_ends_in_the_launcher(project):
    """Given make run's commands (printed, not run), then the preflight with the web and Flower ports comes
    before migrate, the admin password and the seed, no step hides its errors, and the last command execs
    the launcher that turns a stop by signal into a clean exit."""
    (project / ".env").write_text("")  # -o: the virtualenv counts as set up, so nothing is installed

    commands = [line.strip() for line in _make(project, "-n", "-o", ".venv/.synced", "run").stdout.splitlines()]

    def index(fragment: str) -> int:
        return next(n for n, command in enumerate(commands) if fragment in command)

    preflight = index("-m marketplace.preflight --port web=8000 --port flower=5555")
    assert preflight < index("manage.py migrate") < index("manage.py demo_admin") < index("manage.py seed_demo")
    assert not any("2>/dev/null" in command or "|| true" in command for command in commands)
    assert commands[-1].startswith("exec ") and commands[-1].endswith("-m marketplace.devrun")
