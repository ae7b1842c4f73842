"""Grafana dashboards as code: ``python -m dashboards.generate`` writes ``dashboards/grafana/json/*.json``.

The JSON files are generated, committed and checked against the generator by ``tests/dashboards/test_dashboards.py``.
"""

from __future__ import annotations

__all__: list[str] = []
