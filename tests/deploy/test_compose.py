"""docker-compose.yml, Dockerfile and .env.example: schema and the checks a schema cannot do.

No Docker engine here: `docker compose config` is unavailable, so the compose-spec JSON schema
plus these semantic checks stand in for it; `docker compose up` is a manual smoke step.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.deploy.conftest import COMPOSE_FILE, PROMETHEUS_DIR, REPO, load_yaml, run_tool

DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
REQUIRED_REF = re.compile(r"^\$\{(\w+):\?[^}]+\}$")
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def env_example() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def test_compose_spec_schema(check_jsonschema: str) -> None:
    result = run_tool(check_jsonschema, "--builtin-schema", "vendor.compose-spec", COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_expected_services_without_obsolete_version(compose: dict[str, Any]) -> None:
    assert "version" not in compose
    assert set(services(compose)) == {"db", "app", "postgres-exporter", "prometheus", "grafana"}


def test_ports_bind_to_loopback(compose: dict[str, Any]) -> None:
    published = [(n, str(p)) for n, s in services(compose).items() for p in s.get("ports", [])]
    assert published
    for name, port in published:
        assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_images_are_tag_pinned(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if "build" in service:
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
    assert services(compose)["db"]["image"].startswith("postgres:18")
    assert services(compose)["prometheus"]["image"].startswith("prom/prometheus:v3.")
    exporter = services(compose)["postgres-exporter"]["image"]
    assert exporter.startswith("quay.io/prometheuscommunity/postgres-exporter:v0.")


def test_postgres_exporter_scrapes_the_apps_database(compose: dict[str, Any]) -> None:
    exporter = services(compose)["postgres-exporter"]
    env = exporter["environment"]
    assert env["DATA_SOURCE_URI"].startswith("db:5432/app")
    assert REQUIRED_REF.match(env["DATA_SOURCE_PASS"])
    assert "ports" not in exporter  # only Prometheus reads it, inside the compose network
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "postgres"]
    (target,) = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert target == "postgres-exporter:9187"  # the image's default listen port


def test_secrets_come_from_the_environment(compose: dict[str, Any]) -> None:
    secrets = 0
    for name, service in services(compose).items():
        for key, value in service.get("environment", {}).items():
            if SECRET_KEY.search(key):
                assert REQUIRED_REF.match(str(value)), f"{name}.{key} must be ${{VAR:?...}}"
                secrets += 1
        url = service.get("environment", {}).get("DATABASE_URL")
        if url:
            password = re.match(r"^[\w+]+://[^:/@]+:(.+)@[^@]+$", url)
            assert password and REQUIRED_REF.match(password.group(1)), "password in DATABASE_URL"
    assert secrets >= 2
    # A `${VAR:-default}` fallback would be a plaintext default password.
    assert not re.search(r"\$\{\w*PASSWORD\w*:?-", COMPOSE_FILE.read_text(encoding="utf-8"))


def test_grafana_requires_a_login(compose: dict[str, Any]) -> None:
    env = services(compose)["grafana"]["environment"]
    assert REQUIRED_REF.match(env["GF_SECURITY_ADMIN_PASSWORD"])
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_env_example_documents_every_variable() -> None:
    documented = env_example()
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{(\w+)", text))
    assert used and used <= set(documented), sorted(used - set(documented))
    # Required secrets stay empty so compose refuses to start with a shared default.
    for name in set(re.findall(r"\$\{(\w+):\?", text)):
        assert documented[name] == "", f".env.example must not ship a value for {name}"


def test_dependencies_exist_and_health_is_checked(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    assert all_services["app"]["depends_on"]["db"]["condition"] == "service_healthy"
    for name, service in all_services.items():
        for target, condition in service.get("depends_on", {}).items():
            assert target in all_services, f"{name} depends on missing {target}"
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in all_services[target], f"{target} has no healthcheck"


def test_db_health_and_volume(compose: dict[str, Any]) -> None:
    db = services(compose)["db"]
    # During init the image runs a socket-only server: only TCP means really ready.
    assert "pg_isready -h 127.0.0.1" in " ".join(db["healthcheck"]["test"])
    assert any(v.split(":")[1] == "/var/lib/postgresql" for v in db["volumes"])


def test_mounts_exist(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes", {}))
    for name, service in services(compose).items():
        for volume in service.get("volumes", []):
            source, target, *mode = volume.split(":")
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: {source} is not in the repository"
                assert mode == ["ro"], f"{name}: {source} should be mounted read-only"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
            assert target.startswith("/")


def test_prometheus_loads_the_mounted_config(compose: dict[str, Any]) -> None:
    prometheus = services(compose)["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_scrape_target_is_the_app_port(compose: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    (target,) = [
        t
        for job in config["scrape_configs"]
        if job["job_name"] == "pool-monitor"
        for sc in job["static_configs"]
        for t in sc["targets"]
    ]
    host, port = target.split(":")
    app = services(compose)[host]
    assert [p.rsplit(":", 1)[1] for p in app["ports"]] == [port]
    dockerfile = dict(dockerfile_instructions())
    cmd = json.loads(dockerfile["CMD"])
    assert cmd[cmd.index("--port") + 1] == port
    assert port in dockerfile["EXPOSE"].split()
    # Starlette's TrustedHostMiddleware would answer the scraper's Host header with 400.
    assert host in app["environment"]["MONITOR_TRUSTED_HOSTS"].split(",")


def test_dockerfile_runs_the_cli_as_non_root() -> None:
    instructions = dockerfile_instructions()
    keys = [key for key, _ in instructions]
    args = dict(instructions)  # the last of each instruction wins, as in Docker
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert any(k == "RUN" and "pip install ." in a for k, a in instructions)
    assert "USER" in keys and args["USER"].split(":")[0] not in {"root", "0"}
    assert keys.index("USER") < keys.index("CMD")
    cmd = json.loads(args["CMD"])
    assert cmd[:2] == ["pool-monitor", "serve"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    healthcheck = args["HEALTHCHECK"]
    assert "/healthz" in healthcheck and "python" in healthcheck and "curl" not in healthcheck


@pytest.mark.parametrize("pattern", [".env", ".git", ".venv"])
def test_dockerignore_keeps_local_state_out(pattern: str) -> None:
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert pattern in ignored
