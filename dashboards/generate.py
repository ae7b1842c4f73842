"""Writes the Grafana dashboards and the README's panel reference from the panel specs of ``dashboards/boards.py``,
and the SLO rules from ``dashboards/slo.py``.

``python -m dashboards.generate`` rewrites ``dashboards/grafana/json/*.json``, ``dashboards/README.md`` and
``dashboards/alerts/slo.yml``;
with ``--check`` it writes nothing and exits 1 if a committed file is not what the generator makes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dashboards import readme, slo
from dashboards.boards import BOARDS
from dashboards.render import render

__all__ = ["JSON_DIR", "README", "SLO_RULES", "main", "outputs"]

ROOT = Path(__file__).resolve().parent
#: Provisioned into Grafana from here (see dashboards/grafana/provisioning/).
JSON_DIR = ROOT / "grafana" / "json"
README = ROOT / "README.md"
SLO_RULES = ROOT / "alerts" / "slo.yml"


def outputs() -> dict[Path, str]:
    """Every generated file and the text it must have."""
    files = {JSON_DIR / f"{board.uid}.json": render(board) for board in BOARDS}
    files[README] = readme.with_reference(README.read_text(encoding="utf-8"), BOARDS)
    files[SLO_RULES] = slo.rules_yaml()
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashboards.generate",
        description="Write the Grafana dashboards, their README reference and the SLO rules.",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    files = outputs()
    stale = [path for path, text in files.items() if not path.exists() or path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            sys.stderr.write(f"out of date: {path.relative_to(ROOT.parent)} (run python -m dashboards.generate)\n")
        return 1 if stale else 0
    for path in stale:
        path.write_text(files[path], encoding="utf-8")
        sys.stdout.write(f"wrote {path.relative_to(ROOT.parent)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
