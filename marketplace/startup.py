"""What every entry point does first: read ``.env``, then load Django's settings or stop in one line.

``manage.py``, ``celery -A marketplace ...`` (through ``marketplace.celery``), the WSGI app and the
preflight call :func:`configure` before anything else. A configuration error (``ImproperlyConfigured``
from ``marketplace.env`` or the settings' own checks) ends the process with exit status 2 and one stderr
line naming the variable, instead of a traceback through Django's or Celery's start-up. Imports only the
standard library, python-dotenv and Django's settings: nothing of the project but what the settings import.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

__all__ = ["CONFIGURATION_EXIT_STATUS", "ENV_FILE_VARIABLE", "configure", "load_env_file"]

#: Names the file to read instead of ``<project>/.env``; set to the empty string to read none (the tests'
#: start-up checks do, so a developer's own ``.env`` cannot fill in the variable they leave out).
ENV_FILE_VARIABLE = "MARKETPLACE_ENV_FILE"
_DEFAULT_ENV_FILE = Path(__file__).resolve().parent.parent / ".env"
#: Exit status of a process stopped by its configuration (argparse's for a usage error; 1 is a failure).
CONFIGURATION_EXIT_STATUS = 2


def load_env_file() -> Path | None:
    """Read ``.env`` into ``os.environ`` without overriding a variable the real environment sets.

    Returns the file read, or None when there is none (a deployment sets its variables itself).
    """
    configured = os.environ.get(ENV_FILE_VARIABLE)
    path = _DEFAULT_ENV_FILE if configured is None else Path(configured) if configured else None
    if path is None or not path.is_file():
        return None
    load_dotenv(path, override=False)
    return path


def configure() -> None:
    """Read ``.env`` and load the settings now, or print the configuration error in one line and exit 2.

    Django loads settings lazily, at the first attribute read - inside Celery's start-up for the
    ``celery`` command, inside ``execute_from_command_line`` for ``manage.py`` - where an error surfaces
    as a traceback of 20 to 60 lines. Loading them here, first, makes the error this process's only output.
    """
    load_env_file()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    from django.conf import settings

    try:
        settings.INSTALLED_APPS  # noqa: B018 - the read that loads the settings module
    except ImproperlyConfigured as exc:
        sys.stderr.write(f"configuration error: {exc}\n")
        raise SystemExit(CONFIGURATION_EXIT_STATUS) from None
