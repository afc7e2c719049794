"""Each user-facing command, run the way a user runs it, on a prepared project (adult only, shrunken, one real
`dvc repro` so that the registry has a champion):

* the Makefile targets that start a service (`schedule`, `mlflow`, `dashboard`, `serve`) run for real with
  `make <target> VAR=…` in their own process group; the service is reached on its port, then the group gets
  SIGTERM and must exit in time, leaving the port free. `make prefect-ui` prints a URL that answers;
* `torchcycle --help` and `--help` of every subcommand, `torchcycle metrics` and `torchcycle check-params`;
* `dvc repro register@adult` after only evaluate@adult's inputs changed reruns evaluate before register, and
  the registered version's MLflow run carries the new test metrics.

`make` runs against the environment these tests run in: `VENV=` points at it and `-o <stamp>` tells make that
its install stamp is up to date, so the targets' `venv` prerequisite installs nothing."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import BIN, Project, copy_project, free_port, project_env

pytestmark = pytest.mark.slow

VENV = Path(sys.executable).parent.parent
START_TIMEOUT = 180  # seconds for a service to answer on a busy 2-core machine (MLflow's UI takes ~30 s there)
STOP_TIMEOUT = 30  # seconds for the whole process group to be gone after SIGTERM


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """adult only, shrunken, after one real `dvc repro`: a champion is registered."""
    project = copy_project(tmp_path_factory.mktemp("user-commands"))
    params = project.params()
    params["tasks"] = ["adult"]
    project.write_params(params)
    project.commit("adult only")
    project.run("dvc", "repro")
    project.commit("first run")
    return project


def make_command(target: str, **variables: object) -> list[str]:
    return ["make", "--no-print-directory", "-o", str(VENV / ".installed"), f"VENV={VENV}", target,
            *(f"{key}={value}" for key, value in variables.items())]


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user's shell, with Prefect's home in a temporary directory and no Prefect server
    configured (`make schedule` starts its own)."""
    env = project_env({"PREFECT_HOME": str(home)})
    for name in ("PREFECT_API_URL", "PREFECT_HOST", "PREFECT_PORT", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


def _http(url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _answers(url: str) -> bool:
    try:
        return _http(url, timeout=3)[0] == 200
    except OSError:
        return False


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return True
    with socket.socket() as s:  # what a server restarting on the port would do
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return True
    return False


def _group_members(pgid: int) -> list[str]:
    """Live (not zombie) processes of a process group."""
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - not Linux
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [f"process group {pgid}"]
    members = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(f"{stat.parent.name}: {cmdline.strip()}")
    return members


def _pids_with(variable: str, value: str) -> list[int]:
    """Live processes whose environment has variable=value (what a service started in a session of its own
    can be found by)."""
    needle = f"{variable}={value}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if needle in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
    return found


def _processes_with(variable: str, value: str) -> list[str]:
    found = []
    for pid in _pids_with(variable, value):
        with contextlib.suppress(OSError):
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return found


def _none_left(variable: str, value: str, timeout: float = STOP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while left := _processes_with(variable, value):
        if time.monotonic() > deadline:
            pytest.fail(f"still running {timeout:.0f} s after SIGTERM: {left}")
        time.sleep(0.2)


class Service:
    """`make <target>` in its own process group, its output in a log file."""

    def __init__(self, project: Project, log_dir: Path, target: str, port: int, **variables: object) -> None:
        self.target, self.port = target, port
        self.log = log_dir / f"make-{target}.log"
        self.home = log_dir / "prefect-home"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                make_command(target, **variables), cwd=project.root, env=user_env(self.home),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, check: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None:
                pytest.fail(f"`make {self.target}` exited ({self.proc.returncode}) before {what}:\n"
                            f"{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:.0f} s of `make {self.target}`:\n{self.output()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM to the process group, as a terminal's Ctrl-C or a process manager would: make, the service
        and whatever it started exit in time, cleanly, and the port is free again."""
        assert self.proc.poll() is None, f"`make {self.target}` died early:\n{self.output()[-3000:]}"
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`make {self.target}` still runs {STOP_TIMEOUT} s after SIGTERM:\n{self.output()[-3000:]}")
        # make itself dies of the signal; the group's other processes may finish shutting down after it
        assert self.proc.returncode in (0, -signal.SIGTERM), self.output()[-3000:]
        deadline = time.monotonic() + STOP_TIMEOUT
        while (left := _group_members(self.proc.pid)) or _port_in_use(self.port):
            if time.monotonic() > deadline:
                pytest.fail(f"{STOP_TIMEOUT} s after SIGTERM to `make {self.target}`: still running {left}, "
                            f"port {self.port} in use: {_port_in_use(self.port)}\n{self.output()[-3000:]}")
            time.sleep(0.2)
        assert "Traceback" not in self.output(), self.output()[-3000:]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)
        for pid in _pids_with("PREFECT_HOME", str(self.home)):  # a Prefect server in a session of its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def service(project: Project, log_dir: Path, target: str, port: int, **variables: object) -> Iterator[Service]:
    running = Service(project, log_dir, target, port, **variables)
    try:
        yield running
    finally:
        if running.proc.poll() is None or _group_members(running.proc.pid):
            running.kill()  # the test failed before stop(): leave nothing behind


# --- Makefile targets ---------------------------------------------------------------------------------------


def test_make_schedule_serves_the_deployment_on_its_cron(prepared: Project, tmp_path: Path) -> None:
    port = free_port()
    retrain = prepared.params()["retrain"]
    api = f"http://127.0.0.1:{port}/api"
    query = {"deployments": {"name": {"any_": [retrain["deployment"]]}}}

    def deployments() -> list[dict]:
        try:
            status, body = _http(f"{api}/deployments/filter", query, timeout=5)
        except OSError:
            return []
        return json.loads(body) if status == 200 else []

    with service(prepared, tmp_path, "schedule", port, PREFECT_PORT=port) as schedule:
        schedule.wait_until(lambda: bool(deployments()), f"deployment '{retrain['deployment']}' on {api}")
        [deployment] = deployments()
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == [retrain["cron"]]
        assert all(s["active"] for s in deployment["schedules"]) and not deployment["paused"]
        assert deployment["parameters"] == {"root": str(prepared.root)}
        assert deployment["entrypoint"].endswith(":retrain_all")
        assert (tmp_path / "prefect-home" / "server.log").exists()  # the server's home is PREFECT_HOME

        # `make prefect-ui` points at this server, and its UI answers there
        shown = subprocess.run(make_command("prefect-ui", PREFECT_PORT=port), cwd=prepared.root,
                               env=user_env(tmp_path), capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        [url] = re.findall(r"https?://[\w.]+:\d+", shown.stdout)
        status, page = _http(url)
        assert status == 200 and b"<html" in page.lower()
        schedule.stop()
    assert "Prefect UI: " + url in schedule.output()
    _none_left("PREFECT_HOME", str(tmp_path / "prefect-home"))  # the server it started, in its own session


def test_make_schedule_stopped_while_its_server_starts_leaves_none_behind(prepared: Project, tmp_path: Path) -> None:
    """SIGTERM to the group while the Prefect server is still starting (make forwards the signal, so the
    scheduler gets it twice): the server, in a session of its own, is stopped too."""
    home = str(tmp_path / "prefect-home")
    port = free_port()
    with service(prepared, tmp_path, "schedule", port, PREFECT_PORT=port) as schedule:
        schedule.wait_until(lambda: any(" server start " in p for p in _processes_with("PREFECT_HOME", home)),
                            "the Prefect server process", timeout=60)
        schedule.stop()
    _none_left("PREFECT_HOME", home)


def test_make_prefect_ui_prints_the_url(prepared: Project, tmp_path: Path) -> None:
    port = free_port()
    shown = subprocess.run(make_command("prefect-ui", PREFECT_PORT=port, HOST="127.0.0.1"), cwd=prepared.root,
                           env=user_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"http://127.0.0.1:{port}" in shown.stdout
    assert "make schedule" in shown.stdout


def test_make_mlflow_serves_the_project_store(prepared: Project, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with service(prepared, tmp_path, "mlflow", port, MLFLOW_PORT=port) as ui:
        ui.wait_until(lambda: _answers(f"{base}/health"), f"MLflow UI on {base}")
        status, page = _http(base)
        assert status == 200 and b"<html" in page.lower() and b"mlflow" in page.lower()
        # it is the project's store: the registered model and its champion are there
        status, body = _http(f"{base}/api/2.0/mlflow/registered-models/get?name=torchcycle-adult")
        assert status == 200, body
        aliases = {a["alias"] for a in json.loads(body)["registered_model"].get("aliases", [])}
        assert "champion" in aliases
        ui.stop()


def test_make_dashboard_is_healthy(prepared: Project, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with service(prepared, tmp_path, "dashboard", port, DASHBOARD_PORT=port) as dashboard:
        dashboard.wait_until(lambda: _answers(f"{base}/_stcore/health"), f"dashboard health on {base}")
        assert _http(f"{base}/_stcore/health") == (200, b"ok")
        status, page = _http(base)
        assert status == 200 and b"<html" in page.lower()
        dashboard.stop()


def test_make_serve_answers_raw_records(prepared: Project, tmp_path: Path) -> None:
    from torchcycle.serving import Predictor

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    rows = pd.read_parquet(prepared.root / "data" / "raw" / "adult" / "test.parquet").head(3)
    records = json.loads(rows.to_json(orient="records"))  # raw records, as in the source file
    expected = Predictor(prepared.root / "exports" / "adult" / "model.onnx").predict(rows)
    with service(prepared, tmp_path, "serve", port, TASK="adult", SERVE_PORT=port) as served:
        served.wait_until(lambda: _answers(f"{base}/ping"), f"model server on {base}")
        status, body = _http(f"{base}/invocations", {"dataframe_records": records}, timeout=60)
        assert status == 200, body
        answer = pd.DataFrame(json.loads(body)["predictions"])
        assert list(answer.columns) == list(expected.columns)
        assert (answer["predicted"] == expected["predicted"]).all()
        pd.testing.assert_frame_equal(answer.iloc[:, 1:].astype(float), expected.iloc[:, 1:].astype(float),
                                      atol=1e-5, check_dtype=False)

        records[1]["age"] = "forty"
        status, body = _http(f"{base}/invocations", {"dataframe_records": records}, timeout=60)
        assert status == 400, body
        assert "column 'age', row 1: 'forty' is not a number" in json.loads(body)["message"]
        served.stop()


# --- the torchcycle command line ----------------------------------------------------------------------------


def _subcommands() -> list[str]:
    from typer.main import get_command

    from torchcycle.cli import app

    return sorted(get_command(app).commands)


def _torchcycle(project: Project, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "torchcycle"), *args], cwd=project.root, env=project_env({"COLUMNS": "200"}),
                          capture_output=True, text=True, timeout=120)


def test_torchcycle_help_lists_every_subcommand(prepared: Project) -> None:
    shown = _torchcycle(prepared, "--help")
    assert shown.returncode == 0, shown.stderr
    assert "Usage: torchcycle" in shown.stdout
    for name in _subcommands():
        assert re.search(rf"\b{re.escape(name)}\b", shown.stdout), name


@pytest.mark.parametrize("command", _subcommands())
def test_torchcycle_subcommand_help(prepared: Project, command: str) -> None:
    shown = _torchcycle(prepared, command, "--help")
    assert shown.returncode == 0, shown.stderr
    assert f"Usage: torchcycle {command}" in shown.stdout
    assert "--help" in shown.stdout and not shown.stderr.strip()


def test_torchcycle_metrics_shows_every_task(prepared: Project) -> None:
    from torchcycle.cli import HEADLINE_METRICS

    shown = _torchcycle(prepared, "metrics")
    assert shown.returncode == 0, shown.stderr
    for task in prepared.params()["tasks"]:
        metrics = json.loads((prepared.root / "reports" / task / "metrics.json").read_text())
        headline = [k for k in HEADLINE_METRICS if isinstance(metrics.get(k), (int, float))]
        assert headline, metrics.keys()
        [row] = [line for line in shown.stdout.splitlines() if re.match(rf"\W*{task}\b", line)]
        cells = [cell.strip() for cell in re.split(r"[│┃|]", row) if cell.strip()]
        for key in headline:
            assert key in shown.stdout
            assert f"{metrics[key]:.4f}" in cells, (key, row)


def test_torchcycle_check_params(prepared: Project, tmp_path: Path) -> None:
    shown = _torchcycle(prepared, "check-params")
    assert shown.returncode == 0, shown.stderr
    assert "params.yaml: OK" in shown.stdout
    assert re.search(r"^adult: tabular", shown.stdout, re.M)

    params = prepared.params()
    params["adult"]["train"]["epocs"] = params["adult"]["train"].pop("epochs")
    typo = tmp_path / "params.yaml"
    typo.write_text(yaml.safe_dump(params, sort_keys=False))
    shown = _torchcycle(prepared, "check-params", "--params", str(typo))
    assert shown.returncode == 2
    assert "adult.train.epocs: unknown key" in shown.stderr and "did you mean 'epochs'" in shown.stderr
    assert "Traceback" not in shown.stderr and "OK" not in shown.stdout


# --- register after evaluate --------------------------------------------------------------------------------


def test_register_reruns_after_evaluate_and_its_run_has_the_test_metrics(prepared: Project) -> None:
    """register depends on evaluate's (and slices', explain's, export's) outputs: `dvc repro register@adult`
    after a change that only evaluate@adult reads runs evaluate first, and registers a version whose run has
    the new test metrics."""
    dag = prepared.run("dvc", "dag", "--md", "register@adult").stdout
    nodes = dict(re.findall(r'(node\d+)\["([^"]+)"\]', dag))
    before_register = {nodes[a] for a, b in re.findall(r"(node\d+)-->(node\d+)", dag) if nodes[b] == "register@adult"}
    assert before_register >= {"evaluate@adult", "slices@adult", "explain@adult", "export@adult"}

    registered_before = json.loads((prepared.root / "reports" / "adult" / "registry.json").read_text())["version"]
    params = prepared.params()
    params["evaluate"]["bootstrap_samples"] += 7  # read by evaluate only; its confidence intervals change
    prepared.write_params(params)
    out = prepared.run("dvc", "repro", "register@adult").stdout
    ran = re.findall(r"Running stage '([^']+)'", out)
    assert ran == ["evaluate@adult", "register@adult"], out

    root = prepared.root
    metrics = json.loads((root / "reports" / "adult" / "metrics.json").read_text())
    report = json.loads((root / "reports" / "adult" / "registry.json").read_text())
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    assert report["version"] != registered_before
    assert metrics["confidence_intervals"]["accuracy"]["samples"] == params["evaluate"]["bootstrap_samples"]
    version = client.get_model_version(report["registered_model"], report["version"])
    assert version.run_id == report["run_id"]
    logged = client.get_run(version.run_id).data.metrics
    for key in ("accuracy", "roc_auc", "f1_macro", "log_loss"):
        assert logged[f"test_{key}"] == pytest.approx(metrics[key])
        for end in ("low", "high"):  # the intervals of this evaluation, not of the first run's
            assert logged[f"test_{key}_ci_{end}"] == pytest.approx(metrics["confidence_intervals"][key][end])
