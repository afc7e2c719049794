"""The image and the compose stack, checked without a container engine: hadolint on the Dockerfile, the
install steps of the image are the ones `make venv` runs, and every compose service has a health check."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


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
    assert re.search(r"pip install -c requirements/constraints.txt \.", dockerfile)


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
    assert "postgresql" in " ".join(services["mlflow"]["command"].split())
    assert "--artifacts-destination" in services["mlflow"]["command"]
    for published in (p for s in services.values() for p in s.get("ports", [])):
        assert published.startswith("127.0.0.1:"), published  # nothing exposed beyond the host by default
