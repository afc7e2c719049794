"""`make schedule`: make sure a Prefect server runs on 127.0.0.1 (its SQLite home in the project unless
PREFECT_HOME says otherwise), then serve the retraining deployment on the cron schedule from params.yaml
until Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
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
    """Start `prefect server start` unless one already answers; returns the process we started (also kept in
    `_server`, for `main` to stop on the way out). It runs in a session of its own, so that a Ctrl-C in the
    terminal stops the scheduler first and then the server (`stop_server`), not both at once."""
    global _server
    api_url = f"http://{host}:{port}/api"
    if _healthy(api_url):
        return None
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    _spawning.set()  # an interrupt now waits until the process is ours to stop
    try:
        with open(home / "server.log", "a") as log:  # the server keeps its own copy of the descriptor
            _server = subprocess.Popen(
                [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", host, "--port",
                 str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
    finally:
        _spawning.clear()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _interrupted.is_set():
            raise KeyboardInterrupt
        if _healthy(api_url):
            return _server
        if _server.poll() is not None:
            break
        time.sleep(0.5)
    stop_server(_server)
    _server = None
    raise SystemExit(f"the Prefect server did not start on {api_url}; see {home / 'server.log'}")


def stop_server(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after `timeout` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)


# The shutdown. A SIGTERM or Ctrl-C becomes a KeyboardInterrupt in the main thread, and `main` stops the
# server it started on the way out. Prefect's runner takes SIGTERM over while it serves (it exits), and make
# forwards the SIGTERM it gets, so a second one can land in that cleanup: it is retried. Python only prints
# an exception raised inside a weakref callback or a __del__, so an interrupt can get lost: a watchdog then
# stops the server and exits.
_server: subprocess.Popen | None = None  # the Prefect server this process started
_interrupted = threading.Event()
_spawning = threading.Event()
_cleaning_up = threading.Event()
WATCHDOG_SECONDS = 20


def _interrupt(signum: int, frame: object) -> None:
    if _interrupted.is_set():
        return  # one is enough; the cleanup it starts is not cut short
    _interrupted.set()
    threading.Thread(target=_watchdog, name="shutdown-watchdog", daemon=True).start()
    if not _spawning.is_set():  # else ensure_server raises it once it holds the server's process
        raise KeyboardInterrupt


def _watchdog() -> None:
    if _cleaning_up.wait(WATCHDOG_SECONDS):
        return  # the main thread is shutting down
    print(f"shutting down: no clean exit {WATCHDOG_SECONDS} s after the signal; stopping", file=sys.stderr)
    if _server is not None:
        stop_server(_server)
    os._exit(1)


def _stop_our_server() -> None:
    global _server
    _cleaning_up.set()
    while _server is not None:
        with contextlib.suppress(KeyboardInterrupt, SystemExit):
            stop_server(_server)
            _server = None


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
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        if os.environ.get("PREFECT_API_URL"):
            api_url = os.environ["PREFECT_API_URL"].rstrip("/")
            wait_for(api_url)
        else:
            host = os.environ.get("PREFECT_HOST") or "127.0.0.1"
            port = int(os.environ.get("PREFECT_PORT") or 4200)  # `make schedule` passes an empty one if unset
            home = Path(os.environ.get("PREFECT_HOME") or ROOT / ".prefect")
            os.environ["PREFECT_HOME"] = str(home)
            api_url = f"http://{host}:{port}/api"
            ensure_server(host, port, home)
            os.environ["PREFECT_API_URL"] = api_url
        from prefect import serve

        deployment = build_deployment()
        print(f"Prefect UI: {api_url.removesuffix('/api')}  (runs of '{deployment.name}' appear there)", flush=True)
        if _interrupted.is_set():
            raise KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.default_int_handler)  # asyncio's own Ctrl-C handling in serve()
        serve(deployment, pause_on_shutdown=False)
    except KeyboardInterrupt:
        pass
    finally:
        _stop_our_server()


if __name__ == "__main__":
    main()
