"""`make schedule`: make sure a Prefect server runs on 127.0.0.1 (its SQLite home in the project unless
PREFECT_HOME says otherwise), then serve the retraining deployment on the cron schedule from params.yaml
until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def ensure_server(host: str, port: int, home: Path, timeout: float = 90) -> subprocess.Popen | None:
    """Start `prefect server start` unless one already answers; returns the process we started."""
    api_url = f"http://{host}:{port}/api"
    if _healthy(api_url):
        return None
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = open(home / "server.log", "a")  # noqa: SIM115 (the server writes to it for its lifetime)
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", host, "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _healthy(api_url):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the Prefect server did not start on {api_url}; see {home / 'server.log'}")


def build_deployment(root: Path = ROOT):
    """The retrain-all deployment with the cron schedule and name from params.yaml (`retrain:`)."""
    from pipelines.retrain import retrain_all
    from torchcycle.config import load_params

    params = load_params(root / "params.yaml")
    return retrain_all.to_deployment(
        name=params.retrain.deployment,
        cron=params.retrain.cron,
        parameters={"root": str(root)},
        description="Check new data and drift for every task; retrain, evaluate and register when warranted.",
        tags=["torchcycle", "retraining"],
    )


def wait_for(api_url: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not _healthy(api_url):
        if time.time() > deadline:
            raise SystemExit(f"no Prefect server answers at {api_url}")
        time.sleep(1)


def main() -> None:
    """With PREFECT_API_URL set, use that server (a team's, or the compose service); otherwise start a
    local one on PREFECT_HOST:PREFECT_PORT (default 127.0.0.1:4200) unless it is already running."""
    server = None
    if os.environ.get("PREFECT_API_URL"):
        api_url = os.environ["PREFECT_API_URL"].rstrip("/")
        wait_for(api_url)
    else:
        host = os.environ.get("PREFECT_HOST", "127.0.0.1")
        port = int(os.environ.get("PREFECT_PORT", "4200"))
        home = Path(os.environ.get("PREFECT_HOME", ROOT / ".prefect"))
        os.environ["PREFECT_HOME"] = str(home)
        api_url = f"http://{host}:{port}/api"
        server = ensure_server(host, port, home)
        os.environ["PREFECT_API_URL"] = api_url
    # turn SIGTERM into the same clean shutdown as Ctrl-C
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    from prefect import serve

    deployment = build_deployment()
    print(f"Prefect UI: {api_url.removesuffix('/api')}  (runs of '{deployment.name}' appear there)")
    try:
        serve(deployment, pause_on_shutdown=False)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
