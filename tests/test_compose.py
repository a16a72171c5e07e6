"""docker-compose.yml: parsed and checked (no docker engine needed)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from statekit.config import parse_url

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", "minio", "minio-init", "postgres", "app1", "app2", "nginx"}
    for name in ("redis", "minio", "postgres", "app1", "app2", "nginx"):
        assert compose["services"][name]["healthcheck"]["test"], name


def test_published_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["nginx"]["ports"] == ["8080:80"]
    assert services["minio"]["ports"] == ["9000:9000"]
    # the apps are reached through nginx only
    assert "ports" not in services["app1"] and "ports" not in services["app2"]


@pytest.mark.parametrize("name", ["app1", "app2"])
def test_app_instances_run_statekit_serve(compose: dict[str, Any], name: str) -> None:
    app = compose["services"][name]
    command = app["command"]
    assert command[:2] == ["statekit", "serve"]
    module, _, attr = command[2].partition(":")
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file() and attr
    assert _flag(command, "--bind") == "0.0.0.0:8000"
    assert int(_flag(command, "--workers")) >= 2
    broadcaster = _flag(command, "--broadcaster").split(":")[0]
    assert (ROOT / (broadcaster.replace(".", "/") + ".py")).is_file()
    # SIGTERM leaves time to drain before docker sends SIGKILL
    grace = float(app["stop_grace_period"].rstrip("s"))
    assert grace > float(_flag(command, "--graceful-timeout")) + float(_flag(command, "--pre-stop-delay"))
    assert "/readyz" in " ".join(app["healthcheck"]["test"])
    env = app["environment"]
    assert parse_url(env["STATEKIT_REDIS_URL"]).hosts == (("redis", 6379),)
    blobs = parse_url(env["STATEKIT_BLOBS_URL"])
    assert blobs.options["endpoint_url"] == "http://minio:9000"
    assert blobs.options["public_endpoint_url"] == "http://localhost:9000"  # where MinIO is published
    assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in env["DATABASE_URL"]
    # the apps start only once their services are up and the bucket exists
    assert app["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "minio-init": {"condition": "service_completed_successfully"},
        "postgres": {"condition": "service_healthy"},
    }
    init = " ".join(compose["services"]["minio-init"]["command"])
    assert f"mc mb --ignore-existing local/{blobs.bucket}" in init
    user = compose["services"]["minio"]["environment"]["MINIO_ROOT_USER"]
    assert env["AWS_ACCESS_KEY_ID"] == user


def test_the_dockerfile_matches(compose: dict[str, Any]) -> None:
    build = compose["services"]["app1"]["build"]
    dockerfile = (ROOT / build["context"] / build["dockerfile"]).read_text()
    assert "statekit" in dockerfile and "examples.flask_app.wsgi:app" in dockerfile


def test_nginx_uses_the_tested_config(compose: dict[str, Any]) -> None:
    nginx = compose["services"]["nginx"]
    mounts = [v.split(":") for v in nginx["volumes"]]
    configs = [(src, dst) for src, dst, *_ in mounts if src.startswith("./deploy/nginx/")]
    assert len(configs) == 1, mounts
    src, dst = configs[0]
    path = ROOT / src
    assert path.is_file(), f"{src} is missing"
    # the nginx tests render this very file (through deploy/nginx/render.py)
    renderer = path.parent / "render.py"
    assert path.name in renderer.read_text()
    users = [p.name for p in (ROOT / "tests").glob("test_*.py") if "deploy/nginx/render.py" in p.read_text()]
    assert users, "no test under tests/ renders deploy/nginx/render.py"
    # the official image renders /etc/nginx/templates/*.template into conf.d with envsubst
    assert dst == "/etc/nginx/templates/default.conf.template"
    env = nginx["environment"]
    rendered = _envsubst(path.read_text(), {k: str(v) for k, v in env.items()})
    assert "${STATEKIT_" not in rendered
    assert "server app1:8000" in rendered and "server app2:8000" in rendered
    assert "$http_host" in rendered  # nginx's own variables are left alone
    assert "proxy_next_upstream error timeout http_502 http_503;" in rendered
    assert env["NGINX_ENVSUBST_FILTER"] == "STATEKIT_"
    # the same upstream lines the renderer used by the tests writes
    spec = importlib.util.spec_from_file_location("compose_nginx_render", renderer)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.upstream_servers(["app1:8000", "app2:8000"])
    assert " ".join(env["STATEKIT_UPSTREAM_SERVERS"].split()) == " ".join(expected.split())
    assert nginx["depends_on"] == {"app1": {"condition": "service_healthy"},
                                   "app2": {"condition": "service_healthy"}}


def _envsubst(text: str, env: dict[str, str]) -> str:
    """What envsubst does with the variables it is given (others stay as they are)."""
    return re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), m.group(0)), text)


def _compose_cli() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        try:
            probe = subprocess.run([*cmd, "version"], capture_output=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return cmd
    return None


def test_docker_compose_config() -> None:
    cmd = _compose_cli()
    if cmd is None:
        pytest.skip("no docker CLI with the compose plugin on this machine (docker compose version failed)")
    result = subprocess.run([*cmd, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True,
                            timeout=60, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
