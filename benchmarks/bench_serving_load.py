"""Load test of the served model: `mlflow models serve` of the adult champion under 16 concurrent clients,
with ONNX Runtime called in-process on the same requests alongside, to show what serving over HTTP costs.

    .venv/bin/python benchmarks/bench_serving_load.py [--root PROJECT] [--seconds 60] [--clients 16]
        [--workers 1,2] [--ort-threads 1] [--timeout 30]

Not a test: it needs a project with a registered champion of torchcycle-adult (this repository after
`make run`, or `dvc repro register@adult`; `--root` for another one, whose mlflow.db is used) and takes
about (--seconds + 15 s) per server setting. For each setting (MLflow's `--workers` × ONNX Runtime
intra-op threads in the model's loader, TORCHCYCLE_ORT_THREADS) it starts the server on 127.0.0.1 with the
Makefile's other settings, then:

- serial: one client, one request at a time, for a tenth of --seconds: the latency without queueing;
- load: --clients threads, each with its own keep-alive `http.client` connection, for --seconds (and at
  most --max-requests requests), sending raw-record requests: half 1 row, half 64 rows of adult's test
  split, with 10% malformed (a missing column, a non-number, an empty body, truncated JSON, no
  `dataframe_records` key);
- once, on the first server: one request over the row limit (TORCHCYCLE_MAX_ROWS + 1 rows).

Floors: no 5xx and no connection errors; every malformed request a 400 whose message names the problem;
every good answer identical to `torchcycle predict`'s (`Predictor.predict` on the same rows, in this
process). Writes benchmarks/results/serving_load.json and .md with the machine and its load; the clients
run on the same cores as the server, so the figures are a lower bound on what the server alone does.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only: the load never leaves the machine
POOL = {"good_1": 90, "good_64": 90, "bad": 20}  # requests in the pool (10% malformed); clients cycle through it
BAD_KINDS = ("missing_column", "not_a_number", "empty_body", "truncated_json", "no_records_key")


@dataclass
class Request:
    kind: str
    body: bytes
    rows: int = 0
    expected: pd.DataFrame | None = None  # good requests: Predictor.predict on the same rows
    frame: pd.DataFrame | None = None
    names: tuple[str, ...] = ()  # malformed requests: what the 400's message must name


@dataclass
class Outcome:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    bodies: dict[int, dict[bytes, tuple[int, bytes]]] = field(default_factory=dict)  # pool index -> distinct answers
    requests: int = 0


def build_pool(raw: pd.DataFrame, predictor: Any, seed: int = 0) -> list[Request]:
    """The requests the clients send, made once: good ones with the answer `torchcycle predict` gives."""
    rng = random.Random(seed)
    numeric = [c for c in raw.columns if pd.api.types.is_numeric_dtype(raw[c])]

    def records(frame: pd.DataFrame) -> list[dict]:
        return json.loads(frame.to_json(orient="records"))  # missing values as null, as a client sends them

    def rows(n: int) -> pd.DataFrame:
        start = rng.randrange(0, len(raw) - n)
        return raw.iloc[start : start + n].reset_index(drop=True)

    pool: list[Request] = []
    for kind, n in (("good_1", 1), ("good_64", 64)):
        for _ in range(POOL[kind]):
            frame = rows(n)
            body = json.dumps({"dataframe_records": records(frame)}).encode()
            pool.append(Request(kind, body, n, predictor.predict(frame), frame))
    for i in range(POOL["bad"]):
        kind = BAD_KINDS[i % len(BAD_KINDS)]
        frame = rows(rng.choice((1, 64)))
        recs = records(frame)
        if kind == "missing_column":
            column = rng.choice(list(raw.columns))
            body, names = json.dumps({"dataframe_records": records(frame.drop(columns=[column]))}), ("missing", column)
        elif kind == "not_a_number":
            column, row = rng.choice(numeric), rng.randrange(len(recs))
            recs[row][column] = "forty"
            body, names = json.dumps({"dataframe_records": recs}), (f"column '{column}', row {row}", "not a number")
        elif kind == "empty_body":
            body, names = "", ("json",)
        elif kind == "truncated_json":
            text = json.dumps({"dataframe_records": recs})
            body, names = text[: len(text) // 2], ("json",)
        else:
            body, names = json.dumps({"records": recs}), ("dataframe_records",)
        pool.append(Request(kind, body.encode(), len(recs), names=names))
    return pool


# ----------------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int, workers: int, ort_threads: int, timeout: int) -> subprocess.Popen:
    """`make serve`'s command, in a process group of its own (so the uvicorn workers stop with it)."""
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true", "TORCHCYCLE_ORT_THREADS": str(ort_threads)}
    cmd = [str(bindir / "mlflow"), "models", "serve", "-m", "models:/torchcycle-adult@champion",
           "--env-manager", "local", "-h", HOST, "-p", str(port), "--workers", str(workers), "--timeout", str(timeout)]
    log = tempfile.NamedTemporaryFile(prefix=f"serving_load_{port}_", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}); see {log.name}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                conn.close()
                # every worker loads the model on its own: ask until each one has answered (bounded)
                for _ in range(8 * workers):
                    conn = http.client.HTTPConnection(HOST, port, timeout=30)
                    conn.request("GET", "/ping")
                    conn.getresponse().read()
                    conn.close()
                return proc
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise SystemExit(f"the server did not answer /ping within 180 s; see {log.name}")


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # our own process group: mlflow, uvicorn and its workers
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.log.close()  # type: ignore[attr-defined]
    Path(proc.log.name).unlink(missing_ok=True)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------- the clients
def client(port: int, pool: list[Request], order: list[int], stop_at: float, budget: list[int],
           lock: threading.Lock, out: Outcome) -> None:
    """One keep-alive connection sending the pool in `order`, cyclically, until `stop_at` or the budget."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    latencies: dict[str, list[float]] = {}
    statuses: Counter = Counter()
    bodies: dict[int, dict[bytes, tuple[int, bytes]]] = {}
    headers = {"Content-Type": "application/json"}
    i = 0
    while time.monotonic() < stop_at:
        with lock:
            if budget[0] <= 0:
                break
            budget[0] -= 1
        index = order[i % len(order)]
        i += 1
        request = pool[index]
        start = time.perf_counter()
        try:
            conn.request("POST", "/invocations", body=request.body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            status: int | str = response.status
        except (OSError, http.client.HTTPException) as exc:
            status, payload = f"connection error ({type(exc).__name__})", b""
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=30)
        latencies.setdefault(request.kind, []).append(time.perf_counter() - start)
        statuses[(request.kind, status)] += 1
        seen = bodies.setdefault(index, {})
        digest = hashlib.blake2b(payload, digest_size=16).digest()
        if digest not in seen:  # only distinct answers are kept, and checked after the run
            seen[digest] = (status, payload)
    conn.close()
    with lock:
        for kind, values in latencies.items():
            out.latencies.setdefault(kind, []).extend(values)
        out.statuses.update(statuses)
        for index, seen in bodies.items():
            out.bodies.setdefault(index, {}).update(seen)
        out.requests += sum(statuses.values())


def drive(port: int, pool: list[Request], clients: int, seconds: float, max_requests: int, seed: int) -> tuple[Outcome, float]:
    out, lock, budget = Outcome(), threading.Lock(), [max_requests]
    orders = []
    for c in range(clients):
        order = list(range(len(pool)))
        random.Random(seed + c).shuffle(order)
        orders.append(order)
    stop_at = time.monotonic() + seconds
    threads = [threading.Thread(target=client, args=(port, pool, orders[c], stop_at, budget, lock, out), daemon=True)
               for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 60)  # a request is bounded by the socket timeout (30 s)
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------------- checking
def check(pool: list[Request], out: Outcome) -> dict[str, Any]:
    """Every good answer identical to Predictor.predict's; every malformed one a 400 naming the problem."""
    wrong_answers, unnamed, max_diff, examples = 0, 0, 0.0, {}
    for index, seen in out.bodies.items():
        request = pool[index]
        for status, payload in seen.values():
            if request.expected is not None:
                if status != 200:
                    continue  # counted by status
                got = pd.DataFrame(json.loads(payload)["predictions"])
                exp = request.expected
                proba = [c for c in exp.columns if c != "predicted"]
                same_class = list(got["predicted"]) == list(exp["predicted"].astype(str))
                diff = float(np.max(np.abs(got[proba].to_numpy(np.float64) - exp[proba].to_numpy(np.float64))))
                max_diff = max(max_diff, diff)
                wrong_answers += int(not same_class or diff > 1e-6)
            else:
                message = payload.decode(errors="replace")
                if status != 400 or not all(n.lower() in message.lower() for n in request.names):
                    unnamed += 1
                if request.kind not in examples:
                    examples[request.kind] = {"status": status, "must_name": list(request.names),
                                              "message_tail": message[-300:]}
    return {"good_answers_wrong": wrong_answers, "good_answers_max_abs_diff": max_diff,
            "malformed_not_a_400_naming_the_problem": unnamed, "malformed_examples": examples}


def summarise(out: Outcome, wall: float) -> dict[str, Any]:
    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(np.asarray(values) * 1e3, q)) if values else float("nan")

    by_kind = {}
    for kind, values in sorted(out.latencies.items()):
        by_kind[kind] = {"requests": len(values), "p50_ms": pct(values, 50), "p99_ms": pct(values, 99)}
    good = out.latencies.get("good_1", []) + out.latencies.get("good_64", [])
    statuses = Counter()
    for (_, status), n in out.statuses.items():
        statuses[str(status)] += n
    rows = sum(n * (64 if kind == "good_64" else 1) for (kind, status), n in out.statuses.items()
               if kind.startswith("good") and status == 200)
    return {"seconds": wall, "requests": out.requests, "requests_per_s": out.requests / wall,
            "good_rows_per_s": rows / wall, "p50_ms": pct(good, 50), "p99_ms": pct(good, 99),
            "by_kind": by_kind, "statuses": dict(sorted(statuses.items())),
            "statuses_by_kind": {f"{k} {s}": n for (k, s), n in sorted(out.statuses.items(), key=str)}}


def in_process(pool: list[Request], predictor: Any, seconds: float) -> dict[str, Any]:
    """ONNX Runtime called in-process (Predictor.predict) on the good requests' rows, one at a time."""
    good = [r for r in pool if r.frame is not None]
    random.Random(7).shuffle(good)  # 1-row and 64-row requests interleaved
    latencies: dict[str, list[float]] = {"good_1": [], "good_64": []}
    stop_at, i = time.monotonic() + seconds, 0
    start = time.perf_counter()
    while time.monotonic() < stop_at:
        request = good[i % len(good)]
        i += 1
        t = time.perf_counter()
        predictor.predict(request.frame)
        latencies[request.kind].append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    out = {kind: {"requests": len(v), "p50_ms": float(np.percentile(v, 50) * 1e3),
                  "p99_ms": float(np.percentile(v, 99) * 1e3)} for kind, v in latencies.items() if v}
    return {"seconds": wall, "requests_per_s_one_thread": i / wall, "by_kind": out}


def row_limit_probe(port: int, raw: pd.DataFrame, limit: int) -> dict[str, Any]:
    """One request of limit + 1 rows: a 400 naming the limit (after MLflow has read and parsed it all)."""
    frame = pd.concat([raw] * (limit // len(raw) + 1)).head(limit + 1)
    body = json.dumps({"dataframe_records": json.loads(frame.to_json(orient="records"))}).encode()
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    start = time.perf_counter()
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    message = response.read().decode(errors="replace")
    ms = (time.perf_counter() - start) * 1e3
    conn.close()
    return {"rows": limit + 1, "body_bytes": len(body), "status": response.status, "ms": ms,
            "names_the_limit": "TORCHCYCLE_MAX_ROWS" in message, "message_tail": message[-200:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="project with a registered adult champion")
    parser.add_argument("--seconds", type=float, default=60.0, help="load per server setting")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", default="1,2", help="MLflow --workers values to compare")
    parser.add_argument("--ort-threads", default="1", help="TORCHCYCLE_ORT_THREADS values to compare")
    parser.add_argument("--timeout", type=int, default=30, help="MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT (s)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="per server setting")
    parser.add_argument("--note", default="", help="written into the results (e.g. what else ran)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving_load.json")
    args = parser.parse_args()

    from common import machine_now

    from torchcycle.atomic import write_json, write_text
    from torchcycle.served_model import DEFAULT_MAX_ROWS, MAX_ROWS_ENV
    from torchcycle.serving import load_registered

    root = args.root.resolve()
    predictor, info = load_registered("adult", tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    target = predictor.target_state.get("name")
    raw = pd.read_parquet(root / "data" / "raw" / "adult" / "test.parquet")
    raw = raw.drop(columns=[c for c in (target, "income") if c in raw.columns])
    pool = build_pool(raw, predictor)
    limit = int(os.environ.get(MAX_ROWS_ENV, DEFAULT_MAX_ROWS))
    machine_before = machine_now()

    settings, probe = [], None
    for workers in [int(w) for w in args.workers.split(",")]:
        for threads in [int(t) for t in args.ort_threads.split(",")]:
            port = free_port()
            print(f"--workers {workers}, ORT threads {threads}: starting the server on {HOST}:{port}", flush=True)
            proc = start_server(root, port, workers, threads, args.timeout)
            try:
                serial, serial_wall = drive(port, pool, 1, max(2.0, args.seconds / 10), args.max_requests, 99)
                load, load_wall = drive(port, pool, args.clients, args.seconds, args.max_requests, 0)
                if probe is None:
                    probe = row_limit_probe(port, raw, limit)
            finally:
                stop_server(proc)
            result = {"workers": workers, "ort_threads": threads, "serial": summarise(serial, serial_wall),
                      "load": summarise(load, load_wall), "checks": check(pool, load)}
            checks, statuses = result["checks"], result["load"]["statuses"]
            result["floors_met"] = (
                not any(s.startswith(("5", "connection")) for s in statuses)
                and checks["good_answers_wrong"] == 0 and checks["malformed_not_a_400_naming_the_problem"] == 0
            )
            settings.append(result)
            print(f"  {result['load']['requests_per_s']:.0f} requests/s, p50 {result['load']['p50_ms']:.1f} ms, "
                  f"p99 {result['load']['p99_ms']:.1f} ms, statuses {statuses}, floors met: {result['floors_met']}",
                  flush=True)
    local = in_process(pool, predictor, max(2.0, args.seconds / 4))
    passing = [s for s in settings if s["floors_met"]]
    best = max(passing or settings, key=lambda s: s["load"]["requests_per_s"])
    report = {
        "model": info, "clients": args.clients, "seconds_per_setting": args.seconds, "timeout_s": args.timeout,
        "pool": {**POOL, "malformed_kinds": list(BAD_KINDS)}, "settings": settings, "in_process": local,
        "row_limit_probe": probe, "best": {"workers": best["workers"], "ort_threads": best["ort_threads"]},
        "floors_met": all(s["floors_met"] for s in settings) and bool(probe and probe["status"] == 400
                                                                      and probe["names_the_limit"]),
        "machine": machine_now(), "load_average_1m_at_start": machine_before["load_average_1m"], "note": args.note,
    }
    write_json(args.out, report)
    write_text(args.out.with_suffix(".md"), markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}; floors met: {report['floors_met']}")
    if not report["floors_met"]:
        raise SystemExit(1)


def best_line(r: dict[str, Any]) -> str:
    """The setting with the most requests/s (every floor met), and whether the others are within 5% of it."""
    best = next(s for s in r["settings"] if (s["workers"], s["ort_threads"]) == (r["best"]["workers"],
                                                                                r["best"]["ort_threads"]))
    rate = best["load"]["requests_per_s"]
    close = [s for s in r["settings"] if s is not best and s["load"]["requests_per_s"] >= 0.95 * rate]
    line = (f"**Best setting in this run**: `--workers {best['workers']}`, TORCHCYCLE_ORT_THREADS="
            f"{best['ort_threads']} ({rate:.0f} requests/s, the most with every floor met)")
    if close:
        others = ", ".join(f"`--workers {s['workers']}` with {s['ort_threads']} ORT thread(s) "
                           f"({s['load']['requests_per_s']:.0f}, p99 {s['load']['p99_ms']:.0f} ms)" for s in close)
        line += (f"; {others} within 5% of it: a tie, which this run cannot separate (when the cores are already "
                 "busy, a second worker has no idle core to use)")
    return line + "."


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Serving under load: `mlflow models serve` vs ONNX Runtime in-process",
        "",
        (f"`.venv/bin/python benchmarks/bench_serving_load.py --seconds {r['seconds_per_setting']:g}` — "
        f"{m['cpu']}, {m['cores']} cores, load average {r['load_average_1m_at_start']:.1f} at the start and "
        f"{m['load_average_1m']:.1f} at the end. {r['model']['name']} version {r['model']['version']} "
        f"(@{r['model']['alias']}); {r['clients']} client threads with keep-alive connections on 127.0.0.1, "
        f"{r['seconds_per_setting']:g} s per server setting; requests: half 1 row, half 64 rows of adult's test "
        f"split, 10% malformed ({', '.join(r['pool']['malformed_kinds'])}); request timeout {r['timeout_s']} s."),
        "",
    ]
    if r["note"]:
        lines += [r["note"], ""]
    lines += [
        ("| --workers | ORT threads | requests/s | good rows/s | p50 ms | p99 ms | 1-row p50 / p99 ms | "
        "64-row p50 / p99 ms | serial 1-row p50 ms | serial 64-row p50 ms | statuses | floors |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in r["settings"]:
        load, serial = s["load"], s["serial"]["by_kind"]
        k1, k64 = load["by_kind"].get("good_1", {}), load["by_kind"].get("good_64", {})
        lines.append(
            f"| {s['workers']} | {s['ort_threads']} | {load['requests_per_s']:.0f} | {load['good_rows_per_s']:.0f} | "
            f"{load['p50_ms']:.1f} | {load['p99_ms']:.1f} | {k1.get('p50_ms', float('nan')):.1f} / "
            f"{k1.get('p99_ms', float('nan')):.1f} | {k64.get('p50_ms', float('nan')):.1f} / "
            f"{k64.get('p99_ms', float('nan')):.1f} | {serial.get('good_1', {}).get('p50_ms', float('nan')):.1f} | "
            f"{serial.get('good_64', {}).get('p50_ms', float('nan')):.1f} | "
            f"{', '.join(f'{k}: {v}' for k, v in load['statuses'].items())} | {'met' if s['floors_met'] else 'MISSED'} |"
        )
    local = r["in_process"]
    lines += [
        "",
        (f"**In-process** (`Predictor.predict` on the same good requests' rows, one thread, one at a time): "
        f"{local['requests_per_s_one_thread']:.0f} requests/s; 1 row p50 {local['by_kind']['good_1']['p50_ms']:.2f} ms "
        f"(p99 {local['by_kind']['good_1']['p99_ms']:.2f}), 64 rows p50 {local['by_kind']['good_64']['p50_ms']:.2f} ms "
        f"(p99 {local['by_kind']['good_64']['p99_ms']:.2f}). The serial columns above, one request at a time over "
        "HTTP, less these, are what serving adds per request (JSON in and out, MLflow's schema check, the HTTP "
        "round trip)."),
        "",
        best_line(r),
        "",
        ("**Checks** (floors: no 5xx or connection errors; every malformed request a 400 naming the problem; good "
        "answers identical to `torchcycle predict`):"),
        "",
    ]
    for s in r["settings"]:
        c = s["checks"]
        lines.append(f"- `--workers {s['workers']}`: good answers differing from Predictor.predict: "
                     f"{c['good_answers_wrong']} (max abs diff of probabilities {c['good_answers_max_abs_diff']:.1e}); "
                     f"malformed requests not answered by a 400 naming the problem: "
                     f"{c['malformed_not_a_400_naming_the_problem']}.")
    lines += ["", "What a malformed request gets (status, the end of the message):", ""]
    for kind, e in r["settings"][0]["checks"]["malformed_examples"].items():
        tail = " ".join(e["message_tail"].split())[-160:].replace("|", "\\|")
        lines.append(f"- {kind}: {e['status']}, must name {e['must_name']}: …{tail}")
    p = r["row_limit_probe"]
    if p:
        lines += ["", (f"**Row limit**: one request of {p['rows']:,} rows ({p['body_bytes'] / 1e6:.1f} MB of JSON): "
                  f"{p['status']} in {p['ms']:.0f} ms, naming TORCHCYCLE_MAX_ROWS: {p['names_the_limit']}. MLflow's "
                  "scoring server reads the whole body into memory and parses it (JSON, a DataFrame, the signature "
                  "check) before the model sees it; it sets no cap on the body, so a byte cap belongs to a proxy in "
                  "front, and the model's own checks (rows, bytes of records) stop the preprocessing and ONNX "
                  "Runtime from ever allocating for an oversized request.")]
    lines += ["", ("The clients run in the same process and on the same cores as the server (Python threads), so "
              "the requests/s are a lower bound on what the server alone does."), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
