"""Debian's Prometheus and Alertmanager as test servers on 127.0.0.1, and a webhook receiver for the alerts.

``running_prometheus`` runs ``dashboards/prometheus.yml`` with its Collector target replaced by a
``tests.otlp_prometheus.PrometheusBridge``, 1 s intervals and the rule files by absolute path (everything else as
shipped) - optionally sending its alerts to an Alertmanager. ``running_alertmanager`` runs
``dashboards/alertmanager.yml`` rendered by ``dashboards/alertmanager-config.sh`` with the webhook URLs of a
``WebhookReceiver``, as the compose service renders it with the real ones. Each server has its own data
directory and port and is stopped on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, start_process, stop_process, wait_for
from tests.net import free_port
from tests.otlp_prometheus import PrometheusBridge

ALERT_FILES = sorted((ROOT / "dashboards" / "alerts").glob("*.yml"))


@dataclass
class Prometheus:
    url: str

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def numbers(self, expr: str, start: float, end: float) -> list[float]:
        """Every non-NaN value ``expr`` takes between ``start`` and ``end`` (1 s steps)."""
        data = self.api("query_range", query=expr, start=str(start), end=str(end), step="1")
        values = [float(v) for series in data["result"] for _, v in series["values"]]
        return [v for v in values if v == v]


def _binary(name: str, package: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        pytest.fail(f"{name} not found: install Debian's package (apt-get install {package}); make test does")
    return binary


def _prometheus_config(bridge: PrometheusBridge, tmp_path: Path, alertmanager: str | None) -> Path:
    config = yaml.safe_load((ROOT / "dashboards" / "prometheus.yml").read_text())
    config["global"] = {**config.get("global", {}), "scrape_interval": "1s", "evaluation_interval": "1s"}
    (job,) = [job for job in config["scrape_configs"] if "otel-collector" in json.dumps(job)]
    job["static_configs"] = [{"targets": [bridge.endpoint.removeprefix("http://")]}]
    job["scrape_interval"] = "1s"
    config["scrape_configs"] = [job]
    config["rule_files"] = [str(path) for path in ALERT_FILES]
    if alertmanager is None:
        config.pop("alerting", None)
    else:
        (target,) = config["alerting"]["alertmanagers"]
        target["static_configs"] = [{"targets": [alertmanager.removeprefix("http://")]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _serve(command: list[str], log_path: Path, ready: Any, what: str) -> subprocess.Popen[bytes]:
    log = log_path.open("w")
    process = start_process(command, stdout=log, stderr=subprocess.STDOUT)
    log.close()

    def answered() -> bool:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            return bool(ready())
        except OSError:
            return False

    wait_for(answered, timeout=30, what=f"{what} to start")
    return process


@contextlib.contextmanager
def running_prometheus(
    bridge: PrometheusBridge, tmp_path: Path, *, alertmanager: str | None = None
) -> Iterator[Prometheus]:
    """Prometheus scraping ``bridge``, once it has scraped it; sending alerts to ``alertmanager`` if given."""
    port = free_port()
    server = Prometheus(f"http://127.0.0.1:{port}")
    command = [
        _binary("prometheus", "prometheus"), f"--config.file={_prometheus_config(bridge, tmp_path, alertmanager)}",
        f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        "--enable-feature=exemplar-storage", "--log.level=warn",
    ]  # fmt: skip
    process = _serve(command, tmp_path / "prometheus.log", lambda: server.query("up") != [], "prometheus")
    try:
        yield server
    finally:
        stop_process(process)


# --- Alertmanager and a webhook receiver --------------------------------------------------------------------


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it, by path (``/page``, ``/ticket``)."""

    def __init__(self) -> None:
        received: list[tuple[str, dict[str, Any]]] = []
        self.received = received
        self._lock = threading.Lock()
        lock = self._lock

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    received.append((self.path, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def alerts(self, path: str) -> list[dict[str, Any]]:
        """Every alert of every notification POSTed to ``path``, in order, each with its notification's status."""
        with self._lock:
            bodies = [body for received_path, body in self.received if received_path == path]
        return [alert for body in bodies for alert in body["alerts"]]


@dataclass
class Alertmanager:
    url: str

    def api(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/api/v2/{path}", data=data, method="GET" if data is None else "POST"
        )
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def post(self, *alerts: dict[str, str]) -> None:
        """Fire alerts with these labels (Alertmanager's API, as Prometheus sends them)."""
        self.api("alerts", [{"labels": labels} for labels in alerts])

    def resolve(self, *alerts: dict[str, str]) -> None:
        """End alerts with these labels now, as Prometheus does when a rule stops firing."""
        now = datetime.now(UTC).isoformat()
        self.api("alerts", [{"labels": labels, "endsAt": now} for labels in alerts])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts"))


def render_alertmanager_config(tmp_path: Path, env: dict[str, str], *, timings: dict[str, str] | None = None) -> Path:
    """dashboards/alertmanager.yml as ``dashboards/alertmanager-config.sh`` renders it with ``env``; ``timings``
    (group_wait, group_interval...) replace those of every route, to keep a test short."""
    template = ROOT / "dashboards" / "alertmanager.yml"
    if timings:
        config = yaml.safe_load(template.read_text())
        for route in [config["route"], *config["route"].get("routes", [])]:
            route.update({key: value for key, value in timings.items() if key in route or route is config["route"]})
        template = tmp_path / "alertmanager-template.yml"
        template.write_text(yaml.safe_dump(config))
    rendered = tmp_path / "alertmanager.yml"
    script = ROOT / "dashboards" / "alertmanager-config.sh"
    subprocess.run(["sh", str(script), str(template), str(rendered)], env={**os.environ, **env}, check=True, timeout=30)
    return rendered


@contextlib.contextmanager
def running_alertmanager(config: Path, tmp_path: Path) -> Iterator[Alertmanager]:
    """Debian's Alertmanager on ``config``, alone (no cluster peers), once it answers."""
    port = free_port()
    server = Alertmanager(f"http://127.0.0.1:{port}")
    command = [
        _binary("prometheus-alertmanager", "prometheus-alertmanager"), f"--config.file={config}",
        f"--storage.path={tmp_path / 'alertmanager-data'}", f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=", "--log.level=warn",
    ]  # fmt: skip
    process = _serve(command, tmp_path / "alertmanager.log", lambda: server.api("status"), "alertmanager")
    try:
        yield server
    finally:
        stop_process(process)
