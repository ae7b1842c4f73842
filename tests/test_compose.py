"""Contract of docker-compose.yml, checked without a Docker engine.

The file validates against the official Compose Specification schema (vendored in tests/data); it keeps the
seed's Celery services and commands; every service starts only once what it needs is healthy or finished;
the app roles share one image; the broker cannot lose messages; Flower needs a password and stays on
loopback; and .env.example documents every variable the file interpolates and every one settings.py reads.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SETTINGS_FILE = ROOT / "marketplace" / "settings.py"
DOCKERFILE = ROOT / "Dockerfile"
#: Verbatim copy of schema/compose-spec.json from github.com/compose-spec/compose-spec
#: (commit 00655e2222608fa6eaecdf12ac5195889ca2244a).
COMPOSE_SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"

APP_IMAGE = "flash-promos-marketplace:local"
#: The services that run the project's image; all but migrate wait for migrate.
APP_SERVICES = ("migrate", "web", "celery", "celery-beat", "flower")
LONG_RUNNING_APP_SERVICES = tuple(name for name in APP_SERVICES if name != "migrate")
#: What each long-running app service waits for, and how.
APP_DEPENDENCIES = {
    "postgres": "service_healthy",
    "redis": "service_healthy",
    "migrate": "service_completed_successfully",
}
#: From the seed document (celery-config.es.md, "Configuración de Docker"): names and commands are kept.
SEED_COMMANDS = {
    "celery": "celery -A marketplace worker --loglevel=info",
    "celery-beat": "celery -A marketplace beat --loglevel=info",
}
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
def interpolations(compose: dict[str, Any]) -> list[Interpolation]:
    found = []
    for text in _strings(compose):
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
    """Variables settings.py reads through ``marketplace.env``, each mapped to True when some read has no
    default. Parsed, not imported: importing settings would need the very variables it checks."""
    reads: dict[str, bool] = {}
    for node in ast.walk(ast.parse(SETTINGS_FILE.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("env_"):
            name = node.args[0]
            assert isinstance(name, ast.Constant), f"line {node.lineno}: variable name is not a literal"
            assert isinstance(name.value, str), f"line {node.lineno}: variable name is not a string"
            has_default = len(node.args) > 1 or any(keyword.arg == "default" for keyword in node.keywords)
            reads[name.value] = reads.get(name.value, False) or not has_default
    assert "DATABASE_URL" in reads, "no env_*() read found in settings.py"
    return reads


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
    """Every bind-mounted source exists in the repository; LocalStack runs only executable init scripts."""
    for service in services.values():
        for source, target in _volume_mounts(service):
            if source.startswith("."):
                assert (ROOT / source).exists(), source
                if target.startswith("/etc/localstack/init/"):
                    assert (ROOT / source).stat().st_mode & 0o111, f"{source} is not executable"


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
    assert _awaited(services, "service_completed_successfully") == {"migrate"}
    assert services["migrate"]["restart"] == "no"


@pytest.mark.parametrize("name", LONG_RUNNING_APP_SERVICES)
def test_app_services_start_after_postgres_redis_and_migrations(services: Services, name: str) -> None:
    """Each long-running app service waits for healthy Postgres and Redis and for finished migrations."""
    assert APP_DEPENDENCIES.items() <= _depends_on(services[name]).items()


def test_worker_starts_after_localstack_is_healthy(services: Services) -> None:
    """The worker publishes to SNS, so it waits for LocalStack (and its topic) to be ready."""
    assert _depends_on(services["celery"])["localstack"] == "service_healthy"


def test_migrate_applies_migrations_then_seeds_demo_data(services: Services) -> None:
    """migrate runs `migrate --noinput`, then `seed_demo` only if the migrations succeeded."""
    script = _argv(services["migrate"]["command"])[-1]
    assert script == "python manage.py migrate --noinput && python manage.py seed_demo"
    assert _depends_on(services["migrate"]) == {"postgres": "service_healthy", "redis": "service_healthy"}


# --- Healthchecks -------------------------------------------------------------------------------------------


def test_worker_healthcheck_pings_its_own_node(services: Services) -> None:
    """The worker's healthcheck pings its own node; `$$` stops compose from interpolating HOSTNAME, and a
    shell (CMD-SHELL) expands it in the container."""
    test = services["celery"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    assert "celery -A marketplace inspect ping -d celery@$$HOSTNAME" in test[1]


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
    assert checked.keys() >= {"web", "celery"}
    assert [name for name, command in checked.items() if re.search(r"\b(curl|wget)\b", command)] == []


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


def test_flower_requires_basic_auth(services: Services) -> None:
    """Flower runs the usual command and takes its basic-auth credentials from FLOWER_BASIC_AUTH."""
    flower = services["flower"]
    assert flower["command"] == "celery -A marketplace flower --port=5555"
    assert _environment(flower)["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


@pytest.mark.parametrize("name", ["DJANGO_SECRET_KEY", "FLOWER_BASIC_AUTH"])
def test_secrets_are_required_at_start(interpolations: list[Interpolation], name: str) -> None:
    """A secret has no default: compose refuses to start without it and says what to set."""
    uses = [i for i in interpolations if i.name == name]
    assert uses
    assert all(i.modifier == ":?" and i.argument.strip() for i in uses)


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
    """Every variable settings.py reads has an entry in .env.example."""
    assert settings_reads.keys() - env_docs.keys() == set()


def test_variables_settings_require_are_documented_as_required(
    settings_reads: dict[str, bool], env_docs: dict[str, str]
) -> None:
    """A variable settings.py reads without a default says "Required" in .env.example."""
    required = [name for name, no_default in settings_reads.items() if no_default]
    assert [name for name in required if "Required" not in env_docs[name]] == []


def test_each_variable_is_documented_once_with_its_default_or_requirement(
    env_entries: list[tuple[str, str]], env_docs: dict[str, str]
) -> None:
    """Each variable appears once in .env.example, after a one-line comment that gives its default or says
    it is required."""
    assert len(env_entries) == len(env_docs)
    assert [name for name, doc in env_docs.items() if "Default:" not in doc and "Required" not in doc] == []
