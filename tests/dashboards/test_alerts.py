"""Alerting as an operator relies on it: the Prometheus rules of ``dashboards/alerts`` load and pass their
promtool unit tests, every alert is documented and tested both firing and quiet, expressions read only the
metrics of ``docs/metrics.md`` (counters only through ``rate``/``increase``) and the recorded series it lists,
which are exactly those the recording rules make; the Sentry rules of
``dashboards/sentry/alert-rules.json`` match what the project sends, and ``manage.py sentry_alert_rules``
applies them through a local fake of Sentry's API without ever showing the token.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs

import pytest
import sentry_sdk
import yaml
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command

from observability import sentry
from observability.failure import Failure
from observability.sentry import setup as sentry_setup
from tests.conftest import ROOT
from tests.metrics_catalogue import catalogue, readable_names, recorded
from tests.net import LocalServer, free_port
from tests.sentry_receiver import SentryReceiver

ALERTS_DIR = ROOT / "dashboards" / "alerts"
RULE_FILES = sorted(ALERTS_DIR.glob("*.yml"))
TEST_FILES = sorted((ALERTS_DIR / "tests").glob("*.test.yml"))
RUNBOOK = ROOT / "docs" / "alerts.md"
SENTRY_RULES_FILE = ROOT / "dashboards" / "sentry" / "alert-rules.json"
SEVERITIES = {"critical", "warning"}


# --- Readers ------------------------------------------------------------------------------------------------


def load_rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of ``dashboards/alerts/*.yml`` of ``kind``: ``alert`` or ``record``."""
    rules: list[dict[str, Any]] = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(rule for rule in group["rules"] if kind in rule)
    return rules


ALERTS = load_rules("alert")
ALERT_NAMES = [alert["alert"] for alert in ALERTS]
RECORDS = load_rules("record")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {github_anchor(line.lstrip("#")) for line in RUNBOOK.read_text().splitlines() if line.startswith("#")}


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# An identifier that is not a function or aggregation (those are followed by a parenthesis).
_IDENTIFIER = re.compile(r"\b[a-zA-Z_:][\w:]*\b(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = expr
    for pattern in (_STRING, _MATCHERS, _RANGE, _LABEL_LIST):
        text = pattern.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


@dataclass
class Coverage:
    firing: int = 0
    #: Test groups of healthy data for the alert: it is tested there and never expected to fire.
    quiet_groups: int = 0


def promtool_coverage() -> dict[str, Coverage]:
    coverage: dict[str, Coverage] = {}
    for path in TEST_FILES:
        for group in yaml.safe_load(path.read_text())["tests"]:
            cases = group.get("alert_rule_test", [])
            for name in {case["alertname"] for case in cases}:
                fires = sum(bool(case.get("exp_alerts")) for case in cases if case["alertname"] == name)
                entry = coverage.setdefault(name, Coverage())
                entry.firing += fires
                entry.quiet_groups += fires == 0
    return coverage


# --- Prometheus rules -----------------------------------------------------------------------------------------


def promtool(*args: str) -> None:
    """Run promtool; fail with its output unless it exits 0."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (Debian's package; .ci/run does it).")
    result = subprocess.run([binary, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (
        f"promtool {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )


def test_rule_files_load():
    """``promtool check rules`` accepts every rule file (syntax, PromQL, templates)."""
    assert RULE_FILES
    promtool("check", "rules", *(str(path.relative_to(ROOT)) for path in RULE_FILES))


def test_rule_unit_tests_pass():
    """Every promtool unit test passes: each alert fires on its failure data and stays quiet on healthy data."""
    assert TEST_FILES
    promtool("test", "rules", *(str(path.relative_to(ROOT)) for path in TEST_FILES))


def test_each_rule_file_is_one_group_and_has_its_unit_tests():
    """One group per file, and every rule file is loaded by some unit test file."""
    for path in RULE_FILES:
        assert len(yaml.safe_load(path.read_text())["groups"]) == 1, path.name
    tested = {
        (test_file.parent / rule_file).resolve()
        for test_file in TEST_FILES
        for rule_file in yaml.safe_load(test_file.read_text())["rule_files"]
    }
    assert {path.resolve() for path in RULE_FILES} == tested


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook_section():
    """Alert names are unique; each alert has severity critical or warning, a summary, a templated description
    and a runbook_url pointing at its own section of docs/alerts.md."""
    assert len(ALERT_NAMES) == len(set(ALERT_NAMES))
    anchors = runbook_anchors()
    for alert in ALERTS:
        name, annotations = alert["alert"], alert.get("annotations", {})
        assert alert.get("labels", {}).get("severity") in SEVERITIES, name
        assert annotations.get("summary"), name
        assert "{{" in annotations.get("description", ""), f"{name}: the description names labels or the value"
        assert annotations.get("runbook_url") == f"docs/alerts.md#{name.lower()}", name
        assert name.lower() in anchors, f"docs/alerts.md has no section {name}"


def test_the_runbooks_links_to_its_own_sections_resolve():
    """Every ``(#anchor)`` link of docs/alerts.md - the alert table, the cross references - names a section."""
    links = set(re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text()))
    assert links
    assert links - runbook_anchors() == set()


def test_every_alert_has_a_firing_case_and_a_quiet_case():
    """Each alert has promtool cases where it fires and a test group of healthy data where it stays quiet."""
    coverage = promtool_coverage()
    for name in ALERT_NAMES:
        assert coverage.get(name, Coverage()).firing >= 1, f"{name}: no promtool case where it fires"
        assert coverage.get(name, Coverage()).quiet_groups >= 1, f"{name}: no healthy group where it stays quiet"
    assert set(coverage) <= set(ALERT_NAMES), "a promtool case tests an alert no rule defines"


def test_the_metric_name_reader_finds_names_and_nothing_else():
    """The reader the next tests use: names only - no functions, labels, strings, ranges or keywords."""
    expr = """sum by (task, le) (rate(a_total{outcome=~"x|y"}[5m])) / on (task) b_seconds
              and on () (count(c) > 0) unless time() - max without (instance) (d offset 5m) > 3 * 1e3"""
    assert metric_names(expr) == {"a_total", "b_seconds", "c", "d"}


def test_rules_use_only_the_metrics_of_the_catalogue():
    """Every metric a rule reads is in docs/metrics.md's Prometheus column (histograms via _bucket/_sum/_count);
    alerts may also read the recorded series of its "Recorded series" table, recording rules never (no chains)."""
    entries = catalogue()
    assert "celery_worker_heartbeat_seconds" in entries and entries["celery_task_duration_seconds"].kind == "histogram"
    allowed = readable_names(entries)
    for rule in ALERTS + RECORDS:
        name = rule.get("alert") or rule["record"]
        readable = allowed | set(recorded()) if "alert" in rule else allowed
        used = metric_names(rule["expr"])
        assert used, f"{name}: no metric found in its expression"
        assert used <= readable, f"{name} reads metrics not in docs/metrics.md: {sorted(used - readable)}"


def test_the_recorded_series_are_those_the_catalogue_lists_with_their_labels():
    """Each recording rule makes a series of docs/metrics.md's "Recorded series" table, with the labels it gives;
    each series of that table is made by some rule."""
    assert RECORDS
    listed = recorded()
    assert {rule["record"] for rule in RECORDS} == set(listed)
    for rule in RECORDS:
        assert set(rule.get("labels", {})) == listed[rule["record"]], rule["record"]


def test_counters_are_read_only_through_rate_or_increase():
    """Counters and histogram series are cumulative per process: a rule reads them only through rate() or
    increase() (never raw, never avg_over_time), so recycled children and resets cannot skew it."""
    cumulative = {
        series for series in readable_names(catalogue()) if series.endswith(("_total", "_bucket", "_count", "_sum"))
    }
    for rule in ALERTS + RECORDS:
        expr = rule["expr"]
        for name in metric_names(expr) & cumulative:
            for use in re.finditer(rf"\b{name}\b", expr):
                before = expr[: use.start()]
                assert re.search(r"\b(?:rate|increase)\(\s*$", before), (
                    f"{rule.get('alert', rule.get('record'))} reads {name} raw"
                )


# --- Sentry rules: the data -----------------------------------------------------------------------------------

SENTRY_RULES: list[dict[str, Any]] = json.loads(SENTRY_RULES_FILE.read_text())["rules"]
RULE_NAMES = [rule["name"] for rule in SENTRY_RULES]
# Constraints of Sentry's API (https://docs.sentry.io/api/alerts/create-an-issue-alert-rule-for-a-project/).
FREQUENCY_INTERVALS = {"1m", "5m", "15m", "1h", "1d", "1w", "30d"}
TAG_MATCHES = {"eq", "ne", "sw", "ew", "co", "nc", "is", "ns"}
EVENT_FREQUENCY = "sentry.rules.conditions.event_frequency.EventFrequencyCondition"
TAGGED_EVENT = "sentry.rules.filters.tagged_event.TaggedEventFilter"


def tag_filters(rule: dict[str, Any]) -> list[dict[str, Any]]:
    return [node for node in rule.get("filters", []) if node["id"] == TAGGED_EVENT]


def filter_passes(node: dict[str, Any], tags: dict[str, str]) -> bool:
    """Sentry's TaggedEventFilter for the two matches the rules use."""
    if node["match"] == "is":
        return node["key"] in tags
    assert node["match"] == "eq", node
    return tags.get(node["key"], "").lower() == str(node["value"]).lower()


def test_sentry_rules_have_the_shape_sentrys_api_takes():
    """Each rule has a unique name, actionMatch, conditions, a frequency within 5-43200 minutes, at least one
    action, filterMatch with its filters, and condition, filter and action nodes as Sentry's API documents them."""
    assert len(RULE_NAMES) == len(set(RULE_NAMES)) == 3
    for rule in SENTRY_RULES:
        assert rule["actionMatch"] in {"all", "any", "none"}
        assert rule["conditions"] and rule["actions"]
        assert 5 <= rule["frequency"] <= 43_200
        assert rule["filterMatch"] in {"all", "any", "none"} if rule.get("filters") else True
        for node in rule["conditions"] + rule.get("filters", []) + rule["actions"]:
            assert node["id"].startswith("sentry.")
        for node in rule["conditions"]:
            if node["id"] == EVENT_FREQUENCY:
                assert node["interval"] in FREQUENCY_INTERVALS and node["value"] > 0
        for node in tag_filters(rule):
            assert node["match"] in TAG_MATCHES
            assert node["match"] in {"is", "ns"} or node["value"]
        for node in rule["actions"]:
            assert node["id"] != "sentry.mail.actions.NotifyEmailAction" or node["targetType"] == "IssueOwners"


@pytest.fixture
def sentry_events(settings, monkeypatch) -> Iterator[SentryReceiver]:
    """Sentry on in this process, sending to a local receiver; off again afterwards."""
    receiver = SentryReceiver()
    receiver.start()
    monkeypatch.setattr(sentry_setup, "_initialised_in_pid", None)
    settings.SENTRY_DSN = receiver.dsn
    sentry.init_sentry(role="test")
    yield receiver
    sentry_sdk.get_client().close()
    scope = sentry_sdk.get_global_scope()
    scope.set_client(None)
    scope.remove_tag("role")
    receiver.stop()


def test_the_dead_letter_rules_match_the_events_of_dead_letters(sentry_events):
    """The tag filters of the dead-letter rules pass for the event the project sends per dead letter, recorded or
    deferred (Postgres down), so the rules are keyed on tags that exist."""
    failure = Failure(
        reason="max_retries_exceeded",
        task_name="promotions.tasks.deliver_notification_batch",
        task_id="task-" + uuid.uuid4().hex,
        queue="celery",
        exception_type="observability.errors.TransientError",
        exception_message="SMTP server unavailable",
    )
    sentry.report_dead_letter(failure, 41)
    sentry.report_dead_letter(failure, None)
    sentry_sdk.flush()
    events = sentry_events.wait_for("event", count=2)
    dead_letter_rules = [rule for rule in SENTRY_RULES if rule["name"].startswith("Dead letter")]
    assert len(dead_letter_rules) == 2
    for rule in dead_letter_rules:
        assert tag_filters(rule)
        for event in events:
            assert all(filter_passes(node, dict(event["tags"])) for node in tag_filters(rule)), rule["name"]


def test_the_check_in_rule_names_every_beat_entry_monitor():
    """The Crons rule filters on the monitor slugs the project checks in with: every beat entry, no other."""
    (rule,) = [rule for rule in SENTRY_RULES if rule["name"].startswith("Beat entry")]
    assert rule["filterMatch"] == "any"
    slugs = {node["value"] for node in tag_filters(rule) if node["key"] == "monitor.slug" and node["match"] == "eq"}
    assert slugs == set(sentry.MONITORS) == set(django_settings.CELERY_BEAT_SCHEDULE)


# --- Sentry rules: manage.py sentry_alert_rules ---------------------------------------------------------------

TOKEN = "sntrys_" + uuid.uuid4().hex
RULES_PATH = "/api/0/projects/acme/marketplace/rules/"


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    #: Header names in lower case.
    headers: dict[str, str]
    body: Any


@dataclass
class FakeSentryApi(LocalServer):
    """Enough of Sentry's issue alert rules API for the command, on 127.0.0.1: the paged list (Sentry's Link
    header, ``page_size`` rules a page), create and update, for organization ``acme``, project ``marketplace``.
    ``errors[method] = (status, body, headers)`` makes a method answer that instead. Records every request."""

    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    page_size: int = 100
    errors: dict[str, tuple[int, Any, dict[str, str]]] = field(default_factory=dict)
    requests: list[ApiRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self._handler(), name="fake-sentry-api")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, rule_id: int, name: str) -> None:
        self.rules[str(rule_id)] = {"id": str(rule_id), "name": name, "actionMatch": "all", "frequency": 30}

    def writes(self) -> list[ApiRequest]:
        return [request for request in self.requests if request.method != "GET"]

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        if method in self.errors:
            return self.errors[method]
        route, _, query = path.partition("?")
        if method == "GET" and route == RULES_PATH:
            return self._page(int(parse_qs(query).get("cursor", ["0:0:0"])[0].split(":")[1]))
        if method == "POST" and route == RULES_PATH:
            rule_id = str(max((int(key) for key in self.rules), default=0) + 1)
            self.rules[rule_id] = {**body, "id": rule_id}
            return 201, self.rules[rule_id], {}
        rule_id = route.removeprefix(RULES_PATH).rstrip("/")
        if method == "PUT" and rule_id in self.rules:
            self.rules[rule_id] = {**body, "id": rule_id}
            return 200, self.rules[rule_id], {}
        return 404, {"detail": "The requested resource does not exist"}, {}

    def _page(self, offset: int) -> tuple[int, Any, dict[str, str]]:
        ordered = sorted(self.rules.values(), key=lambda rule: -int(rule["id"]))
        after = offset + self.page_size
        more = "true" if after < len(ordered) else "false"
        link = (
            f'<{self.url}{RULES_PATH}?cursor=0:0:1>; rel="previous"; results="false"; cursor="0:0:1", '
            f'<{self.url}{RULES_PATH}?cursor=0:{after}:0>; rel="next"; results="{more}"; cursor="0:{after}:0"'
        )
        return 200, ordered[offset:after], {"Link": link}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def do_PUT(self) -> None:
                self._serve()

            def _serve(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw) if raw else None
                headers = {name.lower(): value for name, value in self.headers.items()}
                api.requests.append(ApiRequest(self.command, self.path, headers, body))
                status, answer, extra_headers = api.answer(self.command, self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **extra_headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test output is for assertions

        return Handler


@pytest.fixture
def sentry_api(monkeypatch) -> Iterator[FakeSentryApi]:
    """A fake Sentry API, and the command's environment pointing at it with ``TOKEN``."""
    api = FakeSentryApi()
    api.start()
    monkeypatch.setenv("SENTRY_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("SENTRY_API_URL", api.url)
    yield api
    api.stop()


def apply(*args: str) -> str:
    """Run ``sentry_alert_rules apply`` for acme/marketplace; its output, which never holds the token."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(
            "sentry_alert_rules", "apply", "--org", "acme", "--project", "marketplace", *args, stdout=out, stderr=err
        )
    finally:
        assert TOKEN not in out.getvalue() + err.getvalue()
    return out.getvalue()


def apply_fails(*args: str) -> str:
    """The message of the ``CommandError`` the command stops with, which never holds the token."""
    with pytest.raises(CommandError) as raised:
        apply(*args)
    assert TOKEN not in str(raised.value)
    return str(raised.value)


class TestApply:
    def test_creates_every_rule_of_the_file_authenticated_with_the_token(self, sentry_api):
        output = apply()
        assert [(r.method, r.path) for r in sentry_api.requests] == [("GET", RULES_PATH)] + [("POST", RULES_PATH)] * 3
        assert [r.body for r in sentry_api.writes()] == SENTRY_RULES
        for request in sentry_api.requests:
            assert request.headers["authorization"] == f"Bearer {TOKEN}"
            assert request.headers["accept"] == "application/json"
        assert all(r.headers["content-type"] == "application/json" for r in sentry_api.writes())
        assert output.splitlines() == [
            *(f"Created rule {name!r} (id {rule_id})." for rule_id, name in enumerate(RULE_NAMES, start=1)),
            "Applied 3 rule(s) to acme/marketplace: 3 created, 0 updated.",
        ]

    def test_updates_the_rules_of_the_same_name_and_leaves_the_others_alone(self, sentry_api):
        sentry_api.add(7, RULE_NAMES[0])
        sentry_api.add(8, "Someone else's rule")
        output = apply()
        assert [(r.method, r.path) for r in sentry_api.writes()] == [
            ("PUT", f"{RULES_PATH}7/"),
            ("POST", RULES_PATH),
            ("POST", RULES_PATH),
        ]
        assert sentry_api.writes()[0].body == SENTRY_RULES[0]
        assert sentry_api.rules["8"]["name"] == "Someone else's rule"
        assert f"Updated rule {RULE_NAMES[0]!r} (id 7)." in output.splitlines()
        assert output.splitlines()[-1] == "Applied 3 rule(s) to acme/marketplace: 2 created, 1 updated."

    def test_a_second_run_creates_nothing(self, sentry_api):
        apply()
        sentry_api.requests.clear()
        apply()
        assert {r.method for r in sentry_api.writes()} == {"PUT"}
        assert sorted(rule["name"] for rule in sentry_api.rules.values()) == sorted(RULE_NAMES)

    def test_reads_every_page_of_the_list(self, sentry_api):
        sentry_api.page_size = 2
        sentry_api.add(1, RULE_NAMES[2])
        for rule_id in range(2, 6):
            sentry_api.add(rule_id, f"Other rule {rule_id}")
        apply()
        listed = [r.path for r in sentry_api.requests if r.method == "GET"]
        assert listed == [RULES_PATH, f"{RULES_PATH}?cursor=0%3A2%3A0", f"{RULES_PATH}?cursor=0%3A4%3A0"]
        assert ("PUT", f"{RULES_PATH}1/") in [(r.method, r.path) for r in sentry_api.writes()]
        assert len(sentry_api.rules) == 7

    def test_a_dry_run_only_reads(self, sentry_api):
        sentry_api.add(7, RULE_NAMES[1])
        output = apply("--dry-run")
        assert sentry_api.writes() == []
        assert output.splitlines() == [
            f"Would create rule {RULE_NAMES[0]!r}.",
            f"Would update rule {RULE_NAMES[1]!r} (id 7).",
            f"Would create rule {RULE_NAMES[2]!r}.",
            "Dry run: 2 to create, 1 to update in acme/marketplace; nothing changed.",
        ]

    def test_an_environment_restricts_every_rule(self, sentry_api):
        apply("--environment", "production")
        assert [r.body for r in sentry_api.writes()] == [{**rule, "environment": "production"} for rule in SENTRY_RULES]


class TestApplyErrors:
    def test_a_missing_token_is_named_before_any_request(self, sentry_api, monkeypatch):
        monkeypatch.delenv("SENTRY_AUTH_TOKEN")
        message = apply_fails()
        assert "Set SENTRY_AUTH_TOKEN" in message and "alerts:write" in message
        assert sentry_api.requests == []

    def test_the_token_never_travels_in_clear_to_another_machine(self, monkeypatch):
        monkeypatch.setenv("SENTRY_AUTH_TOKEN", TOKEN)
        monkeypatch.setenv("SENTRY_API_URL", "http://sentry.example.com")
        assert "refusing to send the token over plain http to another machine; use https" in apply_fails()

    @pytest.mark.parametrize(
        ("method", "status", "body", "expected"),
        [
            pytest.param(
                "GET",
                401,
                {"detail": f"Invalid token {TOKEN}"},
                "Sentry rejected the token (HTTP 401) when asked to list the alert rules of acme/marketplace: "
                'check SENTRY_AUTH_TOKEN. {"detail": "Invalid token [SENTRY_AUTH_TOKEN]"}',
                id="401, with the token Sentry echoes redacted",
            ),
            pytest.param(
                "GET",
                403,
                {"detail": "You do not have permission to perform this action."},
                "The token may not list the alert rules of acme/marketplace (HTTP 403): it needs the alerts:write "
                "scope and access to acme/marketplace.",
                id="403",
            ),
            pytest.param(
                "GET",
                404,
                {"detail": "The requested resource does not exist"},
                "Sentry has no project acme/marketplace (HTTP 404): check --org and --project (slugs) and "
                "SENTRY_API_URL (http://127.0.0.1:",
                id="404",
            ),
            pytest.param(
                "POST",
                400,
                {"name": ["This rule is an exact duplicate of 'Old' in this project and may not be created."]},
                f"Sentry refused to create rule {RULE_NAMES[0]!r} (HTTP 400): "
                '{"name": ["This rule is an exact duplicate of \'Old\' in this project and may not be created."]}',
                id="400, with Sentry's reason",
            ),
            pytest.param(
                "POST",
                502,
                {"detail": "Bad gateway"},
                f"Sentry failed to create rule {RULE_NAMES[0]!r} (HTTP 502); try again later: rules already applied "
                "stay, and a rerun updates them.",
                id="5xx",
            ),
        ],
    )
    def test_http_errors_say_what_to_check(self, sentry_api, method, status, body, expected):
        sentry_api.errors[method] = (status, body, {})
        message = apply_fails()
        assert message.startswith(expected)
        # The command stops at the first refusal.
        assert len(sentry_api.writes()) == (1 if method == "POST" else 0)

    def test_a_rule_deleted_between_list_and_update_is_explained(self, sentry_api):
        sentry_api.add(7, RULE_NAMES[0])
        sentry_api.errors["PUT"] = (404, {"detail": "The requested resource does not exist"}, {})
        assert apply_fails() == (
            f"Sentry could not update rule {RULE_NAMES[0]!r} (id 7) (HTTP 404): it was deleted meanwhile; run this "
            "again to create it."
        )

    def test_a_redirect_is_reported_not_followed(self, sentry_api):
        elsewhere = FakeSentryApi()
        elsewhere.start()
        try:
            sentry_api.errors["GET"] = (302, {}, {"Location": f"{elsewhere.url}{RULES_PATH}"})
            message = apply_fails()
        finally:
            elsewhere.stop()
        assert f"with a redirect (HTTP 302) to {elsewhere.url}{RULES_PATH}: set SENTRY_API_URL" in message
        assert elsewhere.requests == []

    def test_an_unreachable_sentry_is_named(self, monkeypatch):
        url = f"http://127.0.0.1:{free_port()}"
        monkeypatch.setenv("SENTRY_AUTH_TOKEN", TOKEN)
        monkeypatch.setenv("SENTRY_API_URL", url)
        message = apply_fails()
        assert message.startswith(f"Cannot reach Sentry at {url} (")
        assert message.endswith("check SENTRY_API_URL and the network.")

    def test_two_rules_of_one_name_are_not_guessed_between(self, sentry_api):
        sentry_api.add(3, RULE_NAMES[0])
        sentry_api.add(9, RULE_NAMES[0])
        message = apply_fails()
        assert message.startswith(f"acme/marketplace has 2 rules named {RULE_NAMES[0]!r} (ids 9, 3)")
        assert sentry_api.writes() == []

    @pytest.mark.parametrize(
        ("content", "expected"),
        [
            ("not json", "is not JSON"),
            ('{"rules": [{"frequency": 30}]}', 'must hold {"rules": [...]}, each rule with a name'),
            ('{"rules": [{"name": "A"}, {"name": "A"}]}', "names several rules 'A': names match"),
        ],
    )
    def test_a_bad_rules_file_is_refused_before_any_request(self, sentry_api, tmp_path, content, expected):
        rules = tmp_path / "rules.json"
        rules.write_text(content)
        assert expected in apply_fails("--rules", str(rules))
        assert sentry_api.requests == []

    def test_in_a_real_process_the_error_is_one_line_without_the_token(self, sentry_api):
        sentry_api.errors["GET"] = (401, {"detail": f"Invalid token {TOKEN}"}, {})
        env = {**os.environ, "SENTRY_AUTH_TOKEN": TOKEN, "SENTRY_API_URL": sentry_api.url}
        result = subprocess.run(
            [sys.executable, "manage.py", "sentry_alert_rules", "apply", "--org", "acme", "--project", "marketplace"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 1
        assert result.stderr.startswith("CommandError: Sentry rejected the token (HTTP 401)")
        assert TOKEN not in result.stdout + result.stderr
