"""``python -m marketplace.devrun``: the last step of ``make run`` - web, workers, beat and Flower from the
``Procfile`` under honcho, where a stop by Ctrl-C or SIGTERM is a clean exit (status 0), so ``make`` does not
end a normal stop with ``Error 130``/``Error 143``; a process that dies on its own still fails the run.
"""

from __future__ import annotations

import sys

from honcho.command import main as honcho_main

__all__ = ["main"]

#: honcho's exit status after it stopped every process because it received SIGINT or SIGTERM.
STOPPED_BY_SIGNAL = {130, 143}


def main(argv: list[str] | None = None) -> int:
    """Run the Procfile's processes until one exits or a signal stops them all; return the exit status."""
    # --env /dev/null: honcho would load .env over the real environment; each process reads .env itself
    # (marketplace.startup), under the real environment.
    command = ["start", "--procfile", "Procfile", "--env", "/dev/null", *(argv or [])]
    try:
        honcho_main(command)
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 1
        return 0 if status in STOPPED_BY_SIGNAL else status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
