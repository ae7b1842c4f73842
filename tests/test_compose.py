"""Contract of docker-compose.yml and of the observability configuration it mounts, checked without a Docker
engine.

The file validates against the official Compose Specification schema (vendored in tests/data); it keeps the
seed's Celery services and commands; every service has a healthcheck or says why it cannot, and starts only
once what it needs is healthy, started or finished; the app roles share one image; the broker cannot lose
messages; Flower and Grafana need a password, and whatever has no authentication is reachable from this
machine only; .env.example documents every variable the file interpolates and every one the settings
(marketplace/settings/) read.
The OpenTelemetry Collector takes OTLP from the app and hands metrics to Prometheus and traces to Tempo;
Prometheus scrapes it, keeps its labels and exemplars and passes `promtool check config`; Grafana's data
sources link an exemplar's trace id to Tempo.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
#: The override that runs RabbitMQ as the broker: ``docker compose -f docker-compose.yml -f <it> up``.
RABBITMQ_OVERRIDE = ROOT / "docker-compose.rabbitmq.yml"
ENV_EXAMPLE = ROOT / ".env.example"
#: The settings package: each of its modules reads its own variables.
SETTINGS_DIR = ROOT / "marketplace" / "settings"
DOCKERFILE = ROOT / "Dockerfile"
PROCFILE = ROOT / "Procfile"
README = ROOT / "README.md"
#: Verbatim copy of schema/compose-spec.json from github.com/compose-spec/compose-spec
#: (commit 00655e2222608fa6eaecdf12ac5195889ca2244a).
COMPOSE_SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
DASHBOARDS = ROOT / "dashboards"
COLLECTOR_CONFIG = DASHBOARDS / "otel-collector.yaml"
PROMETHEUS_CONFIG = DASHBOARDS / "prometheus.yml"
TEMPO_CONFIG = DASHBOARDS / "tempo.yaml"
GRAFANA_DATASOURCES = DASHBOARDS / "grafana" / "provisioning" / "datasources" / "datasources.yml"
GRAFANA_DASHBOARD_PROVIDERS = DASHBOARDS / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"

APP_IMAGE = "flash-promos-marketplace:local"
#: The services that run the project's image; all but migrate wait for migrate.
#: The worker services, one per queue group (README "Workers"); the seed's one `celery` worker was split by queue.
WORKER_SERVICES = ("celery-promos", "celery-fanout", "celery-deliveries", "celery-ops")
APP_SERVICES = ("migrate", "web", *WORKER_SERVICES, "celery-beat", "flower")
LONG_RUNNING_APP_SERVICES = tuple(name for name in APP_SERVICES if name != "migrate")
#: What each long-running app service waits for, and how.
APP_DEPENDENCIES = {
    "postgres": "service_healthy",
    "redis": "service_healthy",
    "migrate": "service_completed_successfully",
}
#: The roles that export traces and metrics (settings read OTEL_EXPORTER_OTLP_ENDPOINT).
TELEMETRY_SERVICES = ("web", *WORKER_SERVICES, "celery-beat")
#: Services without a healthcheck, each for a reason written in a comment of its block: one-shots exit, and
#: the Collector and Tempo images have no shell or HTTP client to probe with.
WITHOUT_HEALTHCHECK = {"migrate", "tempo-init", "otel-collector", "tempo"}
#: The one service whose port is published on every interface: the app itself.
PUBLIC_SERVICES = {"web"}
#: The third-party images of the observability stack, each pinned to a full version.
OBSERVABILITY_IMAGES = {
    "otel-collector": "otel/opentelemetry-collector-contrib",
    "prometheus": "prom/prometheus",
    "alertmanager": "prom/alertmanager",
    "tempo": "grafana/tempo",
    "grafana": "grafana/grafana",
}
#: From the seed document (celery-config.es.md, "Configuración de Docker"): names and commands are kept - but the
#: seed's single `celery` worker, now a worker per queue group (WORKER_SERVICES).
SEED_COMMANDS = {"celery-beat": "celery -A marketplace beat --loglevel=info"}
SEED_REDIS_URL = "redis://redis:6379/0"
SNS_TOPIC_ARN = "arn:aws:sns:us-east-1:000000000000:flash-promos"

# `$$` is an escaped dollar; `${NAME}`, `${NAME:-default}`, `${NAME:?error}` ... and `$NAME` interpolate.
_INTERPOLATION = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_]\w*)(?P<modifier>:?[-?+])?(?P<argument>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))"
)
# A variable line of .env.example, set (`NAME=value`) or commented out (`# NAME=value`).
_ENV_ENTRY = re.compile(r"^(?:#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=")

Services = dict[str, dict[str, Any]]


class Interpolation(NamedTuple):
    """One `${NAME...}` or `$NAME` of the compose file."""

    name: str
    modifier: str  # "" for a plain ${NAME}; ":?" or "?" when compose refuses to start without the variable
    argument: str  # the default, alternative or error message after the modifier

    @property
    def required(self) -> bool:
        return self.modifier in {":?", "?"}


# --- Readers ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> Services:
    services: Services = compose["services"]
    return services


@pytest.fixture(scope="module")
def rabbitmq_override() -> dict[str, Any]:
    document = yaml.safe_load(RABBITMQ_OVERRIDE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def interpolations(compose: dict[str, Any], rabbitmq_override: dict[str, Any]) -> list[Interpolation]:
    found = []
    for text in [*_strings(compose), *_strings(rabbitmq_override)]:
        for match in _INTERPOLATION.finditer(text):
            name = match["braced"] or match["bare"]
            if name:  # an escaped `$$` matches with no name
                found.append(Interpolation(name, match["modifier"] or "", match["argument"] or ""))
    return found


@pytest.fixture(scope="module")
def env_entries() -> list[tuple[str, str]]:
    """(variable, the comment line right above it or "") for each variable line of .env.example."""
    entries = []
    previous = ""
    for line in ENV_EXAMPLE.read_text().splitlines():
        if entry := _ENV_ENTRY.match(line):
            is_comment = previous.startswith("#") and not _ENV_ENTRY.match(previous)
            entries.append((entry["name"], previous.lstrip("# ").strip() if is_comment else ""))
        previous = line
    return entries


@pytest.fixture(scope="module")
def env_docs(env_entries: list[tuple[str, str]]) -> dict[str, str]:
    return dict(env_entries)


@pytest.fixture(scope="module")
def settings_reads() -> dict[str, bool]:
    """Variables the settings modules read through ``marketplace.env``, each mapped to True when some read has
    no default. Parsed, not imported: importing settings would need the very variables it checks."""
    reads: dict[str, bool] = {}
    nodes = (node for path in sorted(SETTINGS_DIR.glob("*.py")) for node in ast.walk(ast.parse(path.read_text())))
    for node in nodes:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("env_"):
            name = node.args[0]
            assert isinstance(name, ast.Constant), f"line {node.lineno}: variable name is not a literal"
            assert isinstance(name.value, str), f"line {node.lineno}: variable name is not a string"
            has_default = len(node.args) > 1 or any(keyword.arg == "default" for keyword in node.keywords)
            reads[name.value] = reads.get(name.value, False) or not has_default
    assert "DATABASE_URL" in reads, "no env_*() read found in marketplace/settings/"
    return reads


@pytest.fixture(scope="module")
def service_sources() -> dict[str, str]:
    """Each service's block of docker-compose.yml as written, comments included: the comment lines right above
    a service's name belong to it."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    pending: list[str] = []
    in_services = False
    for line in COMPOSE_FILE.read_text().splitlines():
        if not line.startswith((" ", "#")) and line.strip():
            in_services = line.startswith("services:")
            current = None
            continue
        if not in_services:
            continue
        if service := re.fullmatch(r"  ([A-Za-z0-9._-]+):\s*", line):
            current = blocks.setdefault(service[1], [])
            current.extend(pending)
            pending = []
        elif line.startswith("  #"):
            pending.append(line)
        elif current is not None:
            current.extend([*pending, line])
            pending = []
    return {name: "\n".join(lines) for name, lines in blocks.items()}


def _load_yaml(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), path
    return document


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    return _load_yaml(COLLECTOR_CONFIG)


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    return _load_yaml(PROMETHEUS_CONFIG)


@pytest.fixture(scope="module")
def tempo_config() -> dict[str, Any]:
    return _load_yaml(TEMPO_CONFIG)


@pytest.fixture(scope="module")
def datasources() -> dict[str, dict[str, Any]]:
    """Grafana's provisioned data sources by uid."""
    return {source["uid"]: source for source in _load_yaml(GRAFANA_DATASOURCES)["datasources"]}


def _strings(node: Any) -> Iterator[str]:
    """Every string of a loaded YAML document, keys included."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _argv(command: str | list[str]) -> list[str]:
    """A command in either compose form as an argument list (compose splits the string form like a shell)."""
    return shlex.split(command) if isinstance(command, str) else list(command)


def _volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume a service mounts, in either compose syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((volume.get("source", ""), volume["target"]))
        else:
            source, target = volume.split(":")[:2]
            mounts.append((source, target))
    return mounts


def _bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Each file or directory of the repository a service mounts (as `dashboards/...`) mapped to its target."""
    return {source.removeprefix("./"): target for source, target in _volume_mounts(service) if source.startswith(".")}


def _seconds(duration: str) -> float:
    """A Go or Prometheus duration such as "15s", "5m" or "1h30m" in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(number + unit for number, unit in parts) == duration, duration
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(number) * scale[unit] for number, unit in parts)


def _port(endpoint: str) -> int:
    """The port of "host:port" or "scheme://host:port"."""
    return int(endpoint.rsplit(":", 1)[1].strip("/"))


def _flags(command: str | list[str]) -> dict[str, str]:
    """-name=value or --name=value arguments of a command (a bare flag maps to "")."""
    arguments = [argument.lstrip("-") for argument in _argv(command) if argument.startswith("-")]
    return dict(argument.partition("=")[::2] for argument in arguments)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(item.partition("=")[::2] for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Each dependency of a service mapped to its condition."""
    return {name: spec["condition"] for name, spec in service.get("depends_on", {}).items()}


def _awaited(services: Services, condition: str) -> set[str]:
    """The services some other service waits on with ``condition``."""
    return {
        dependency
        for service in services.values()
        for dependency, awaited_condition in _depends_on(service).items()
        if awaited_condition == condition
    }


def _healthcheck_command(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def _published_host_ips(service: dict[str, Any]) -> list[str]:
    """The host address of each published port ("" when the port is published on every interface)."""
    host_ips = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            host_ips.append(port.get("host_ip", ""))
        else:
            parts = str(port).split(":")
            host_ips.append(":".join(parts[:-2]) if len(parts) > 2 else "")
    return host_ips


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined."""
    lines = [line.strip() for line in re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines()]
    instructions = [line.partition(" ") for line in lines if line and not line.startswith("#")]
    return [(keyword.upper(), arguments.strip()) for keyword, _, arguments in instructions]


# --- The file as a whole ------------------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    """docker-compose.yml validates against the official Compose Specification JSON schema."""
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    validator.check_schema(schema)
    errors = validator.iter_errors(compose)
    assert [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in errors] == []


def test_vendored_schema_rejects_what_compose_rejects() -> None:
    """The vendored schema is strict, so the validation above means something: it rejects an unknown service
    key and a long-form dependency without a condition."""
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    assert not validator.is_valid({"services": {"web": {"imagee": "python:3.11-slim"}}})
    assert not validator.is_valid({"services": {"web": {"image": "x", "depends_on": {"db": {}}}}})


def test_compose_file_has_no_obsolete_version_key(compose: dict[str, Any]) -> None:
    """The Compose Specification ignores `version:` and current Compose warns about it."""
    assert "version" not in compose


def test_no_service_uses_a_pickle_serializer(compose: dict[str, Any]) -> None:
    """Nothing configures pickle: anyone who can write to the broker could run code in the worker."""
    assert [text for text in _strings(compose) if "pickle" in text.lower()] == []


def test_named_volumes_are_declared(compose: dict[str, Any], services: Services) -> None:
    """Every named volume a service mounts is declared at the top level, and postgres and redis keep their
    data in one."""
    named = {
        name: {source for source, _ in _volume_mounts(service) if source and not source.startswith((".", "/"))}
        for name, service in services.items()
    }
    assert set().union(*named.values()) <= set(compose.get("volumes", {}))
    assert named["postgres"]
    assert named["redis"]


def test_bind_mounted_files_exist_and_localstack_init_scripts_are_executable(services: Services) -> None:
    """Every bind-mounted source exists in the repository (a missing one, Docker would create empty, as root);
    LocalStack runs only executable init scripts."""
    missing = []
    for service in services.values():
        for source, target in _volume_mounts(service):
            if source.startswith("."):
                if not (ROOT / source).exists():
                    missing.append(source)
                elif target.startswith("/etc/localstack/init/"):
                    assert (ROOT / source).stat().st_mode & 0o111, f"{source} is not executable"
    assert missing == []


def test_repository_files_are_mounted_read_only(services: Services) -> None:
    """Configuration mounted from the repository is read-only in the containers: no service can rewrite the
    working tree."""
    writable = [
        f"{name}: {volume}"
        for name, service in services.items()
        for volume in service.get("volumes", [])
        if isinstance(volume, str) and volume.startswith(".") and not volume.endswith(":ro")
    ]
    assert writable == []


@pytest.mark.parametrize(("name", "repository"), OBSERVABILITY_IMAGES.items())
def test_observability_images_are_pinned_to_a_release(services: Services, name: str, repository: str) -> None:
    """Each observability service runs its vendor's image at a full version: the configuration in dashboards/
    was checked against those releases, and `latest` would change under it."""
    image, _, tag = services[name]["image"].partition(":")
    assert image == repository
    assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), services[name]["image"]


# --- Seed services and the shared image ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "command"), SEED_COMMANDS.items())
def test_seed_celery_services_keep_their_names_and_commands(services: Services, name: str, command: str) -> None:
    """The seed's `celery` and `celery-beat` services exist, are built from the repository and run exactly
    the seed's command."""
    assert services[name]["build"] == "."
    assert services[name]["command"] == command


def test_app_services_share_one_image_built_from_the_repository(services: Services) -> None:
    """Only the app services build, all from `.` into one tag, so the image is built once for every role."""
    built = {name: (spec["build"], spec.get("image")) for name, spec in services.items() if "build" in spec}
    assert built == dict.fromkeys(APP_SERVICES, (".", APP_IMAGE))


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_use_the_compose_network_backends(services: Services, name: str) -> None:
    """Every app service talks to the compose Postgres, the seed's Redis URLs and LocalStack's SNS topic."""
    environment = _environment(services[name])
    assert environment["DATABASE_URL"] == "postgres://postgres:postgres@postgres:5432/marketplace"
    assert environment["CELERY_BROKER_URL"] == SEED_REDIS_URL
    assert environment["CELERY_RESULT_BACKEND"] == SEED_REDIS_URL
    assert environment["NOTIFICATION_BACKEND"] == "sns"
    assert environment["SNS_TOPIC_ARN"] == SNS_TOPIC_ARN
    assert environment["AWS_ENDPOINT_URL"] == "http://localstack:4566"


def test_web_serves_the_image_default_gunicorn_command(services: Services) -> None:
    """web keeps the image's default command: gunicorn serving the WSGI app on 0.0.0.0:8000."""
    assert "command" not in services["web"]
    (cmd,) = [arguments for keyword, arguments in _dockerfile_instructions() if keyword == "CMD"]
    argv = json.loads(cmd)
    assert argv[:2] == ["gunicorn", "marketplace.wsgi:application"]
    assert argv[argv.index("--bind") + 1] == "0.0.0.0:8000"


def test_image_runs_as_a_non_root_user() -> None:
    """The image's last USER is neither root nor uid 0."""
    users = [arguments for keyword, arguments in _dockerfile_instructions() if keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}


# --- Start order --------------------------------------------------------------------------------------------


def test_every_dependency_names_a_condition(services: Services) -> None:
    """depends_on is always the long form with a condition: a bare name waits only for the container to
    start, not for the dependency to be usable."""
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on is a list"
        assert all("condition" in spec for spec in depends_on.values()), name


def test_services_waited_on_as_healthy_define_a_healthcheck(services: Services) -> None:
    """A service others wait on with `service_healthy` has a healthcheck, or they would wait forever."""
    awaited = _awaited(services, "service_healthy")
    assert awaited
    for name in awaited:
        assert "test" in services[name].get("healthcheck", {}), name
        assert not services[name]["healthcheck"].get("disable"), name


def test_services_waited_on_to_complete_are_one_shot(services: Services) -> None:
    """A service others wait on with `service_completed_successfully` is never restarted."""
    assert _awaited(services, "service_completed_successfully") == {"migrate", "tempo-init"}
    assert services["migrate"]["restart"] == "no"
    assert services["tempo-init"]["restart"] == "no"


def test_every_service_has_a_healthcheck_or_says_why_not(services: Services, service_sources: dict[str, str]) -> None:
    """A service without a healthcheck is a known exception, and its block says why in a comment ("No
    healthcheck: ..."), so the next reader does not add one that cannot work."""
    without = {name for name, service in services.items() if "test" not in service.get("healthcheck", {})}
    assert without == WITHOUT_HEALTHCHECK
    assert [name for name in without if "no healthcheck" not in service_sources[name].lower()] == []


def test_nothing_waits_for_a_service_that_cannot_report_health(services: Services) -> None:
    """Services without a healthcheck are waited for as started (long-running) or completed (one-shots)."""
    for name, service in services.items():
        for dependency, condition in _depends_on(service).items():
            if dependency in WITHOUT_HEALTHCHECK:
                assert condition in {"service_started", "service_completed_successfully"}, (name, dependency)


def test_observability_services_start_in_order(services: Services) -> None:
    """Tempo starts once its data volume is handed over; the Collector after Tempo, Prometheus after the
    Collector and Alertmanager (started: Prometheus evaluates its rules without it); Grafana once Prometheus
    answers and Tempo runs."""
    assert _depends_on(services["tempo"]) == {"tempo-init": "service_completed_successfully"}
    assert _depends_on(services["otel-collector"]) == {"tempo": "service_started"}
    assert _depends_on(services["prometheus"]) == {
        "otel-collector": "service_started",
        "alertmanager": "service_started",
    }
    assert _depends_on(services["grafana"]) == {"prometheus": "service_healthy", "tempo": "service_started"}


def test_tempo_init_hands_tempos_data_volume_to_tempos_user(services: Services) -> None:
    """Tempo runs as uid 10001; the one-shot before it chowns the very volume Tempo writes to."""
    init, tempo = services["tempo-init"], services["tempo"]
    assert _argv(init["command"]) == ["chown", "-R", "10001:10001", "/var/tempo"]
    assert init["user"] == "root"
    assert ("tempo-data", "/var/tempo") in _volume_mounts(init)
    assert ("tempo-data", "/var/tempo") in _volume_mounts(tempo)


@pytest.mark.parametrize("name", LONG_RUNNING_APP_SERVICES)
def test_app_services_start_after_postgres_redis_and_migrations(services: Services, name: str) -> None:
    """Each long-running app service waits for healthy Postgres and Redis and for finished migrations."""
    assert APP_DEPENDENCIES.items() <= _depends_on(services[name]).items()


@pytest.mark.parametrize("name", WORKER_SERVICES)
def test_workers_start_after_localstack_is_healthy(services: Services, name: str) -> None:
    """A worker publishes to SNS, so it waits for LocalStack (and its topic) to be ready."""
    assert _depends_on(services[name])["localstack"] == "service_healthy"


def test_migrate_applies_migrations_then_seeds_demo_data(services: Services) -> None:
    """migrate runs `migrate --noinput`, then `seed_demo` only if the migrations succeeded."""
    script = _argv(services["migrate"]["command"])[-1]
    assert script == "python manage.py migrate --noinput && python manage.py seed_demo"
    assert _depends_on(services["migrate"]) == {"postgres": "service_healthy", "redis": "service_healthy"}


# --- Healthchecks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WORKER_SERVICES)
def test_worker_healthcheck_pings_its_own_node(services: Services, name: str) -> None:
    """Each worker's healthcheck pings its own node, named by its `-n role@%h`; `$$` stops compose from
    interpolating HOSTNAME, and a shell (CMD-SHELL) expands it in the container."""
    argv = shlex.split(services[name]["command"])
    role = argv[argv.index("-n") + 1].removesuffix("@%h")
    test = services[name]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    assert f"celery -A marketplace inspect ping -d {role}@$$HOSTNAME" in test[1]


def test_beat_healthcheck_pings_beats_remote_control_node(services: Services) -> None:
    """Beat's healthcheck pings the node beat answers on (`celerybeat@HOST`, Celery 5.7's remote control),
    which stays silent while its scheduler is stalled (tests/observability/test_beat.py)."""
    test = services["celery-beat"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    assert "celery -A marketplace inspect ping -d celerybeat@$$HOSTNAME" in test[1]


def test_web_healthcheck_requests_healthz_on_an_allowed_host(
    services: Services, interpolations: list[Interpolation]
) -> None:
    """web's healthcheck requests /healthz on localhost, which the default DJANGO_ALLOWED_HOSTS accepts."""
    assert "http://localhost:8000/healthz" in _healthcheck_command(services["web"])
    (allowed_hosts,) = {i.argument for i in interpolations if i.name == "DJANGO_ALLOWED_HOSTS"}
    assert "localhost" in allowed_hosts.split(",")


def test_app_healthchecks_need_no_curl(services: Services) -> None:
    """python:3.11-slim ships neither curl nor wget, so app healthchecks use Python or the celery CLI."""
    checked = {name: _healthcheck_command(services[name]) for name in APP_SERVICES if "healthcheck" in services[name]}
    assert checked.keys() >= {"web", *WORKER_SERVICES}
    assert [name for name, command in checked.items() if re.search(r"\b(curl|wget)\b", command)] == []


# --- Worker roles: the Procfile, this file and the README runbook deploy the same workers -------------------


class WorkerRole(NamedTuple):
    """What a `celery -A marketplace worker` command deploys: its queues, node name and processes."""

    queues: tuple[str, ...]
    node: str
    concurrency: int


def _worker_role(command: str) -> WorkerRole:
    argv = shlex.split(command)
    assert argv[:4] == ["celery", "-A", "marketplace", "worker"], command
    options = dict(arg.split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)
    return WorkerRole(
        tuple(argv[argv.index("-Q") + 1].split(",")), argv[argv.index("-n") + 1], int(options["--concurrency"])
    )


def _procfile_workers() -> dict[str, WorkerRole]:
    lines = [line.split(":", 1) for line in PROCFILE.read_text().splitlines() if line.startswith("worker-")]
    return {name.removeprefix("worker-"): _worker_role(command) for name, command in lines}


def _readme_workers() -> dict[str, WorkerRole]:
    lines = README.read_text().splitlines()
    commands = [line.split("#", 1)[0] for line in lines if line.startswith("celery -A marketplace worker -Q")]
    roles = [_worker_role(command) for command in commands]
    return {role.node.removesuffix("@%h"): role for role in roles}


def test_each_worker_role_is_deployed_alike_by_the_procfile_compose_and_the_readme(services: Services) -> None:
    """`make run` (the Procfile), `docker compose up` and the README runbook start the same worker roles, each
    with the same queues, node name (`role@%h`, so workers on one host never clash) and concurrency."""
    compose_workers = {
        name.removeprefix("celery-"): _worker_role(services[name]["command"]) for name in WORKER_SERVICES
    }

    assert _procfile_workers() == compose_workers
    assert _readme_workers() == compose_workers
    assert all(role.node == f"{name}@%h" for name, role in compose_workers.items())


def test_every_declared_queue_has_exactly_one_worker_role_and_promos_shares_none() -> None:
    """Every queue of the settings (the default one too) is consumed by one role, and the time-critical
    queue's worker consumes nothing else: it is never busy with bulk work."""
    from django.conf import settings

    roles = _procfile_workers()
    consumed = [queue for role in roles.values() for queue in role.queues]

    assert sorted(consumed) == sorted(queue.name for queue in settings.CELERY_TASK_QUEUES)
    assert roles["promos"].queues == (settings.PROMOS_QUEUE,)


# --- Broker, LocalStack and Flower --------------------------------------------------------------------------


def test_redis_persists_and_never_evicts(services: Services) -> None:
    """Redis keeps an append-only file and refuses writes when full rather than evicting queued messages."""
    argv = _argv(services["redis"]["command"])
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction"


def test_localstack_creates_the_topic_the_app_publishes_to(services: Services) -> None:
    """LocalStack runs only SNS, and its ready hook creates the topic of SNS_TOPIC_ARN in its region."""
    localstack = services["localstack"]
    assert _environment(localstack)["SERVICES"] == "sns"
    (hook,) = [source for source, target in _volume_mounts(localstack) if "/init/ready.d/" in target]
    _, _, _, region, _, topic = SNS_TOPIC_ARN.split(":")
    script = (ROOT / hook).read_text()
    assert f"awslocal sns create-topic --name {topic} --region {region}" in script


def test_flower_is_published_on_loopback_only(services: Services) -> None:
    """Flower can revoke tasks and shut workers down: its port is reachable from this machine only."""
    assert _published_host_ips(services["flower"]) == ["127.0.0.1"]


def test_only_the_app_is_published_beyond_this_machine(services: Services) -> None:
    """Prometheus, Tempo and the Collector's receivers have no authentication, Flower and Grafana guard
    operations or data: every port but web's is published on loopback only."""
    published = {name: _published_host_ips(service) for name, service in services.items() if "ports" in service}
    assert published.keys() >= {"web", "flower", "grafana", "prometheus", "tempo", "otel-collector"}
    exposed = {
        name: ips for name, ips in published.items() if name not in PUBLIC_SERVICES and set(ips) != {"127.0.0.1"}
    }
    assert exposed == {}


def test_flower_requires_basic_auth(services: Services) -> None:
    """Flower runs the usual command and takes its basic-auth credentials from FLOWER_BASIC_AUTH."""
    flower = services["flower"]
    assert flower["command"] == "celery -A marketplace flower --port=5555"
    assert _environment(flower)["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


def test_flower_reads_its_guard_from_the_image(services: Services) -> None:
    """The image holds flowerconfig.py (Flower's default --conf in /app: no authentication, no start); it
    listens on the container's interface, which is published on the host's loopback only."""
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert (ROOT / "flowerconfig.py").is_file()
    assert not any(fnmatch(name, pattern) for name in ("flowerconfig.py",) for pattern in ignored)
    assert _environment(services["flower"])["FLOWER_ADDRESS"] == "0.0.0.0"
    assert _published_host_ips(services["flower"]) == ["127.0.0.1"]


@pytest.mark.parametrize("name", ["DJANGO_SECRET_KEY", "FLOWER_BASIC_AUTH", "GRAFANA_ADMIN_PASSWORD"])
def test_secrets_are_required_at_start(interpolations: list[Interpolation], name: str) -> None:
    """A secret has no default: compose refuses to start without it and says what to set."""
    uses = [i for i in interpolations if i.name == name]
    assert uses
    assert all(i.modifier == ":?" and i.argument.strip() for i in uses)


# --- Telemetry: the app, the Collector, Tempo ---------------------------------------------------------------


@pytest.mark.parametrize("name", TELEMETRY_SERVICES)
def test_app_services_export_to_the_collector_without_depending_on_it(services: Services, name: str) -> None:
    """web, worker and beat send OTLP/HTTP to the Collector's HTTP receiver. They wait for it to be started,
    not healthy, and not even that is required: exports are best effort, the app serves without them."""
    endpoint = _environment(services[name])["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint == "http://otel-collector:4318"
    assert services[name]["depends_on"]["otel-collector"] == {"condition": "service_started", "required": False}


def test_collector_runs_the_repository_configuration(services: Services) -> None:
    """The Collector is started with dashboards/otel-collector.yaml, mounted where its --config points."""
    collector = services["otel-collector"]
    target = _bind_mounts(collector)["dashboards/otel-collector.yaml"]
    assert _flags(collector["command"])["config"] == target


def test_collector_receives_otlp_over_grpc_and_http_from_other_containers(collector: dict[str, Any]) -> None:
    """The OTLP receiver listens on every interface (the Collector's default is localhost, which other
    containers cannot reach), on the standard ports 4317 (gRPC) and 4318 (HTTP)."""
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"


def test_collector_pipelines_send_metrics_to_prometheus_and_traces_to_tempo(collector: dict[str, Any]) -> None:
    """Both pipelines take OTLP in and protect the Collector's memory first; metrics go to the prometheus
    exporter, traces to an OTLP gRPC exporter aimed at Tempo's receiver."""
    pipelines = collector["service"]["pipelines"]
    assert pipelines.keys() == {"metrics", "traces"}
    for pipeline in pipelines.values():
        assert pipeline["receivers"] == ["otlp"]
        assert pipeline["processors"][0] == "memory_limiter"
        assert "batch" in pipeline["processors"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    (tempo_exporter,) = pipelines["traces"]["exporters"]
    assert tempo_exporter.split("/")[0] in {"otlp_grpc", "otlp"}
    assert collector["exporters"][tempo_exporter]["endpoint"] == "tempo:4317"
    assert collector["exporters"][tempo_exporter]["tls"]["insecure"] is True


def test_collector_defines_what_its_pipelines_use_and_uses_what_it_defines(collector: dict[str, Any]) -> None:
    """A misspelt component name stops the Collector at start: every name in a pipeline is defined, and every
    defined component is used (an unused one is dead configuration)."""
    service = collector["service"]
    for kind in ("receivers", "processors", "exporters"):
        used = {name for pipeline in service["pipelines"].values() for name in pipeline.get(kind, [])}
        assert used == collector[kind].keys(), kind
    assert set(service["extensions"]) == collector["extensions"].keys() == {"health_check"}


def test_prometheus_exporter_keeps_names_exemplars_and_bounded_labels(collector: dict[str, Any]) -> None:
    """The prometheus exporter serves OpenMetrics (the only format carrying exemplars, i.e. trace ids), names
    metrics the way docs/metrics.md lists them (suffixes on), and does not copy resource attributes onto
    every series (labels stay bounded; they remain on target_info)."""
    exporter = collector["exporters"]["prometheus"]
    assert exporter["endpoint"] == "0.0.0.0:8889"
    assert exporter["enable_open_metrics"] is True
    assert exporter.get("translation_strategy", "UnderscoreEscapingWithSuffixes") == "UnderscoreEscapingWithSuffixes"
    assert exporter.get("add_metric_suffixes", True) is True
    assert not exporter.get("resource_to_telemetry_conversion", {}).get("enabled", False)
    assert "resource_constant_labels" not in exporter


def test_metric_expiration_outlasts_the_worker_heartbeat_threshold(collector: dict[str, Any]) -> None:
    """A stopped process's series stay exposed long enough for its heartbeat's age to cross "down" (3 export
    intervals of 15 s) and for an age-based alert's `for` (1 min) to elapse with two minutes to spare; and no
    longer than the exporter's default 5 m, so series of recycled prefork children do not pile up."""
    expiration = _seconds(collector["exporters"]["prometheus"]["metric_expiration"])
    assert 3 * 15 + 120 <= expiration <= 300


def test_tempo_receives_what_the_collector_sends_and_stores_it_on_its_volume(
    services: Services, collector: dict[str, Any], tempo_config: dict[str, Any]
) -> None:
    """Tempo's OTLP gRPC receiver is on the port the Collector exports to; its blocks and WAL live under the
    tempo-data volume; it runs the repository's configuration."""
    receiver = tempo_config["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    (exporter,) = collector["service"]["pipelines"]["traces"]["exporters"]
    assert _port(receiver) == _port(collector["exporters"][exporter]["endpoint"])
    trace_storage = tempo_config["storage"]["trace"]
    assert trace_storage["backend"] == "local"
    volume_target = dict(_volume_mounts(services["tempo"]))["tempo-data"]
    assert trace_storage["wal"]["path"].startswith(volume_target + "/")
    assert trace_storage["local"]["path"].startswith(volume_target + "/")
    tempo = services["tempo"]
    assert _flags(tempo["command"])["config.file"] == _bind_mounts(tempo)["dashboards/tempo.yaml"]


# --- Prometheus ---------------------------------------------------------------------------------------------


def test_prometheus_runs_the_repository_configuration_and_rules(services: Services) -> None:
    """prometheus.yml and the alerts directory sit side by side in the container as in the repository, so the
    relative `rule_files` glob resolves alike in both; exemplars are stored; retention is explicit."""
    prometheus = services["prometheus"]
    mounts = _bind_mounts(prometheus)
    flags = _flags(prometheus["command"])
    assert flags["config.file"] == mounts["dashboards/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["dashboards/alerts"] == "/etc/prometheus/alerts"
    assert flags["enable-feature"] == "exemplar-storage"
    assert re.fullmatch(r"\d+[hdwy]", flags["storage.tsdb.retention.time"])
    assert "wget -qO- http://localhost:9090/-/ready" in _healthcheck_command(prometheus)


def test_prometheus_loads_the_alert_rules(prometheus_config: dict[str, Any]) -> None:
    """Every rule file of dashboards/alerts is loaded, by a path relative to prometheus.yml."""
    assert prometheus_config["rule_files"] == ["alerts/*.yml"]


def test_prometheus_scrapes_the_collector_keeping_its_labels(
    prometheus_config: dict[str, Any], collector: dict[str, Any]
) -> None:
    """One job scrapes the Collector's prometheus exporter every 15 s (the SDK's export interval) and honors
    the exporter's job and instance labels (service.name, and one instance per process)."""
    (job,) = prometheus_config["scrape_configs"]
    assert job["job_name"] == "otel-collector"
    assert job["static_configs"] == [{"targets": ["otel-collector:8889"]}]
    assert _port(job["static_configs"][0]["targets"][0]) == _port(collector["exporters"]["prometheus"]["endpoint"])
    assert job["honor_labels"] is True
    assert _seconds(job.get("scrape_interval", prometheus_config["global"]["scrape_interval"])) == 15


@pytest.mark.parametrize(
    ("exported", "stored"),
    [("marketplace/marketplace-worker", "marketplace-worker"), ("marketplace-web", "marketplace-web")],
)
def test_job_label_is_the_service_name(prometheus_config: dict[str, Any], exported: str, stored: str) -> None:
    """The exporter writes job as "<service.namespace>/<service.name>"; the scrape keeps the service name, the
    label the dashboards and alerts select on (relabelling applied as Prometheus does: anchored regex)."""
    (job,) = prometheus_config["scrape_configs"]
    rules = job.get("metric_relabel_configs", [])
    value = exported
    for rule in [rule for rule in rules if rule.get("source_labels") == ["job"] and rule.get("target_label") == "job"]:
        if match := re.fullmatch(rule.get("regex", "(.*)"), value):
            value = match.expand(rule.get("replacement", "$1").replace("$", "\\"))
    assert value == stored


def test_prometheus_sends_its_alerts_to_the_stacks_alertmanager(
    services: Services, prometheus_config: dict[str, Any]
) -> None:
    """Prometheus's one Alertmanager target is the compose service, on the port it listens on."""
    (alertmanager,) = prometheus_config["alerting"]["alertmanagers"]
    (target,) = [target for config in alertmanager["static_configs"] for target in config["targets"]]
    host, _, port = target.partition(":")
    assert host == "alertmanager" and host in services
    assert "wget -qO- http://localhost:9093/-/ready" in _healthcheck_command(services["alertmanager"])
    assert int(port) == 9093


def test_alertmanager_runs_the_repository_routing_tree_with_its_secrets_from_the_environment(
    services: Services,
) -> None:
    """The container renders dashboards/alertmanager.yml with the two webhook URLs of the environment (never
    committed, never required) into a private copy and runs Alertmanager on it, keeping its state in a
    volume; its port is published on loopback only (anyone reaching it can add silences)."""
    alertmanager = services["alertmanager"]
    mounts = _bind_mounts(alertmanager)
    (script,) = alertmanager["command"]
    render, _, run = script.partition("&&")
    assert _argv(render) == [
        mounts["dashboards/alertmanager-config.sh"], mounts["dashboards/alertmanager.yml"], "/tmp/alertmanager.yml"
    ]  # fmt: skip
    assert _argv(run)[:2] == ["exec", "/bin/alertmanager"]
    assert _flags(run)["config.file"] == "/tmp/alertmanager.yml"
    assert _flags(run)["storage.path"] == dict(_volume_mounts(alertmanager))["alertmanager-data"]
    assert _environment(alertmanager) == {
        "ALERTMANAGER_PAGE_WEBHOOK_URL": "${ALERTMANAGER_PAGE_WEBHOOK_URL:-}",
        "ALERTMANAGER_TICKET_WEBHOOK_URL": "${ALERTMANAGER_TICKET_WEBHOOK_URL:-}",
    }
    assert _published_host_ips(alertmanager) == ["127.0.0.1"]


def _promtool(config: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found: install Debian's package (apt-get install prometheus); .ci/run does")
    return subprocess.run([binary, "check", "config", str(config)], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_prometheus_configuration() -> None:
    """`promtool check config dashboards/prometheus.yml` succeeds; it also checks every rule file the
    configuration loads from dashboards/alerts."""
    result = _promtool(PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_rule_files_next_to_the_configuration(tmp_path: Path) -> None:
    """The configuration's rule glob resolves next to the file itself: a copy beside a valid rule file passes,
    and beside a broken one fails, so the check above covers the real alerts."""
    (tmp_path / "alerts").mkdir()
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.read_text())
    rule = {"alert": "CollectorDown", "expr": 'up{job="otel-collector"} == 0', "for": "1m"}
    (tmp_path / "alerts" / "valid.yml").write_text(yaml.safe_dump({"groups": [{"name": "t", "rules": [rule]}]}))
    passed = _promtool(config)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "1 rule files found" in passed.stdout
    broken = {**rule, "expr": "up =="}
    (tmp_path / "alerts" / "broken.yml").write_text(yaml.safe_dump({"groups": [{"name": "t", "rules": [broken]}]}))
    assert _promtool(config).returncode != 0


# --- Grafana ------------------------------------------------------------------------------------------------


def test_grafana_requires_an_admin_password_and_keeps_anonymous_access_off(
    services: Services, interpolations: list[Interpolation]
) -> None:
    """The admin password comes from GRAFANA_ADMIN_PASSWORD, without which compose does not start; anonymous
    access is off unless GRAFANA_ANONYMOUS_ENABLED turns it on, and then only with the Viewer role."""
    environment = _environment(services["grafana"])
    assert environment["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "${GRAFANA_ANONYMOUS_ENABLED:-false}"
    (anonymous,) = [i for i in interpolations if i.name == "GRAFANA_ANONYMOUS_ENABLED"]
    assert (anonymous.modifier, anonymous.argument) == (":-", "false")
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert environment.get("GF_USERS_ALLOW_SIGN_UP", "false") == "false"


def test_grafana_healthcheck_asks_its_health_api(services: Services) -> None:
    """Grafana is healthy once /api/health answers (its database migrated, its server up)."""
    assert "http://localhost:3000/api/health" in _healthcheck_command(services["grafana"])


def test_grafana_is_provisioned_from_the_repository(services: Services) -> None:
    """Data sources and the dashboard provider come from dashboards/grafana/provisioning, and the dashboard
    JSON files are mounted where the provider reads them."""
    mounts = _bind_mounts(services["grafana"])
    provisioning = "dashboards/grafana/provisioning"
    assert mounts[f"{provisioning}/datasources"] == "/etc/grafana/provisioning/datasources"
    assert mounts[f"{provisioning}/dashboards"] == "/etc/grafana/provisioning/dashboards"
    (provider,) = _load_yaml(GRAFANA_DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "Flash Promos"
    assert provider["options"]["path"] == mounts["dashboards/grafana/json"] == "/var/lib/grafana/dashboards"


def test_grafana_data_sources_are_prometheus_and_tempo_by_fixed_uids(
    datasources: dict[str, dict[str, Any]], tempo_config: dict[str, Any]
) -> None:
    """The dashboards refer to data sources by uid: `prometheus` (the default) and `tempo`, each at its
    service's address on the compose network."""
    assert datasources.keys() == {"prometheus", "tempo"}
    prometheus, tempo = datasources["prometheus"], datasources["tempo"]
    assert (prometheus["type"], prometheus["url"], prometheus["isDefault"]) == (
        "prometheus",
        "http://prometheus:9090",
        True,
    )
    assert (tempo["type"], tempo["url"]) == ("tempo", f"http://tempo:{tempo_config['server']['http_listen_port']}")


def test_an_exemplars_trace_id_links_to_tempo(datasources: dict[str, dict[str, Any]]) -> None:
    """The `trace_id` label of an exemplar (as the Collector names it) opens that trace in the Tempo data
    source; from a span, Tempo links back to the task metrics of its service and task."""
    destinations = datasources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert {"name": "trace_id", "datasourceUid": "tempo"} in destinations
    traces_to_metrics = datasources["tempo"]["jsonData"]["tracesToMetrics"]
    assert traces_to_metrics["datasourceUid"] == "prometheus"
    assert {"key": "service.name", "value": "job"} in traces_to_metrics["tags"]


def test_dashboards_use_only_provisioned_data_sources(datasources: dict[str, dict[str, Any]]) -> None:
    """Every data source a dashboard of dashboards/grafana/json names by uid is provisioned, with that type
    (template variables and Grafana's built-in sources aside)."""
    provisioned = {uid: source["type"] for uid, source in datasources.items()}
    referenced: set[tuple[str, str, str | None]] = set()
    for path in sorted((DASHBOARDS / "grafana" / "json").glob("*.json")):
        stack: list[Any] = [json.loads(path.read_text())]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                source = node.get("datasource")
                if isinstance(source, dict) and not str(source.get("uid", "$")).startswith(("$", "-- ", "grafana")):
                    referenced.add((path.name, source["uid"], source.get("type")))
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    wrong = [(name, uid, kind) for name, uid, kind in referenced if kind not in (None, provisioned.get(uid, kind))]
    unknown = [(name, uid, kind) for name, uid, kind in referenced if uid not in provisioned]
    assert (unknown, wrong) == ([], [])


def test_grafana_provisioning_escapes_every_dollar() -> None:
    """Grafana replaces $NAME in provisioning files with its environment variable (empty when unset): a query
    placeholder such as $__tags must be written $$__tags to reach the data source intact."""
    for path in (GRAFANA_DATASOURCES, GRAFANA_DASHBOARD_PROVIDERS):
        values = [text for text in _strings(_load_yaml(path)) if re.search(r"(?<!\$)\$(?:\$\$)*(?!\$)", text)]
        assert values == [], path


# --- .env.example -------------------------------------------------------------------------------------------


def test_every_interpolated_variable_is_documented(
    interpolations: list[Interpolation], env_docs: dict[str, str]
) -> None:
    """Every ${VARIABLE} of docker-compose.yml has an entry in .env.example."""
    assert {i.name for i in interpolations} - env_docs.keys() == set()


def test_variables_required_by_compose_are_documented_as_required(
    interpolations: list[Interpolation], env_docs: dict[str, str]
) -> None:
    """A variable compose cannot start without (`${NAME:?...}`) says "Required" in .env.example."""
    required = {i.name for i in interpolations if i.required}
    assert required
    assert [name for name in required if "Required" not in env_docs[name]] == []


def test_every_variable_settings_reads_is_documented(settings_reads: dict[str, bool], env_docs: dict[str, str]) -> None:
    """Every variable the settings read has an entry in .env.example."""
    assert settings_reads.keys() - env_docs.keys() == set()


def test_variables_settings_require_are_documented_as_required(
    settings_reads: dict[str, bool], env_docs: dict[str, str]
) -> None:
    """A variable the settings read without a default says "Required" in .env.example."""
    required = [name for name, no_default in settings_reads.items() if no_default]
    assert [name for name in required if "Required" not in env_docs[name]] == []


def test_each_variable_is_documented_once_with_its_default_or_requirement(
    env_entries: list[tuple[str, str]], env_docs: dict[str, str]
) -> None:
    """Each variable appears once in .env.example, after a one-line comment that gives its default or says
    it is required."""
    assert len(env_entries) == len(env_docs)
    assert [name for name, doc in env_docs.items() if "Default:" not in doc and "Required" not in doc] == []


# --- RabbitMQ instead of Redis (docker-compose.rabbitmq.yml) ------------------------------------------------


def _merged(base: Any, override: Any) -> Any:
    """Compose's merge of an override file: mappings merged key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {key: _merged(base.get(key), value) for key, value in override.items()} | {
            key: value for key, value in base.items() if key not in override
        }
    return override


def test_the_rabbitmq_override_gives_a_valid_file_where_every_app_role_uses_rabbitmq(
    compose: dict[str, Any], rabbitmq_override: dict[str, Any]
) -> None:
    """Merged over docker-compose.yml, the override validates against the Compose Specification; every app
    service publishes to RabbitMQ (amqp), keeps Redis for results and state, and waits for RabbitMQ healthy."""
    merged = _merged(compose, rabbitmq_override)
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    assert [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(merged)] == []
    for name in APP_SERVICES:
        service = merged["services"][name]
        environment = service["environment"]
        assert environment["CELERY_BROKER_URL"].startswith("amqp://marketplace:${RABBITMQ_PASSWORD:?"), name
        assert environment["REDIS_URL"] == environment["CELERY_RESULT_BACKEND"] == "redis://redis:6379/0", name
        assert service["depends_on"]["rabbitmq"] == {"condition": "service_healthy"}, name
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}, name  # the base's kept
    assert set(rabbitmq_override["services"]) == {"rabbitmq", *APP_SERVICES}


def test_the_override_rabbitmq_has_a_healthcheck_a_volume_and_ports_on_this_machine_only(
    rabbitmq_override: dict[str, Any],
) -> None:
    """RabbitMQ reports healthy only once it accepts AMQP connections, keeps its data in a named volume, and
    publishes AMQP and its management UI on 127.0.0.1 only; its password is required, never written here."""
    rabbitmq = rabbitmq_override["services"]["rabbitmq"]
    assert rabbitmq["healthcheck"]["test"][:2] == ["CMD", "rabbitmq-diagnostics"]
    assert set(_published_host_ips(rabbitmq)) == {"127.0.0.1"}
    assert {str(port).rsplit(":", 1)[-1] for port in rabbitmq["ports"]} == {"5672", "15672"}
    assert "rabbitmq-data:/var/lib/rabbitmq" in rabbitmq["volumes"] and "rabbitmq-data" in rabbitmq_override["volumes"]
    assert rabbitmq["environment"]["RABBITMQ_DEFAULT_PASS"].startswith("${RABBITMQ_PASSWORD:?")
