"""Dashboard speed: first render of every page once the process is warm, and one prediction round trip.

    .venv/bin/python benchmarks/bench_dashboard.py [--root PROJECT] [--repeats 5]

"Warm" means the dashboard process has served each page once (models and stores cached, as in a running
`make dashboard`); every measured render is then a fresh session (a new AppTest) opening that page.
A prediction round trip is what the Predict page does for one input: checks, preprocessing and ONNX
Runtime (adult), plus decoding and Grad-CAM on the torch weights (mnist). Writes
benchmarks/results/dashboard.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
APP = REPO / "dashboards" / "app.py"
PAGES = ("overview", "experiments", "model", "explain", "predict", "dataset")
BUDGET_PAGE_S = 2.0
BUDGET_PREDICT_MS = {"tabular": 100.0, "image": 300.0}


def render(page: str, task: str) -> float:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=300)
    at.run()
    at.session_state["task"] = task
    start = time.perf_counter()
    at.switch_page(f"views/{page}.py").run()
    seconds = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(f"{page}@{task}: {at.exception[0].value}")
    return seconds


def predict_round_trip(task: str, kind: str, repeats: int) -> dict:
    import pandas as pd
    from dashboards import context, data

    model = data.served(task)
    if model is None:
        raise SystemExit(f"no model for {task}: run `make run` first")
    state = model.predictor.state
    if kind == "tabular":
        from torchcycle.kinds.tabular.dashboard import local_shap, range_problems

        row = data.raw_test(task)[0].iloc[[0]]

        def once() -> None:
            record = row.iloc[0].to_dict()
            assert not range_problems(record, state)
            data.served(task).predictor.outputs(row)

        def explain() -> None:
            local_shap(context.page(task, data.served(task)), row)
    else:
        from torchcycle.kinds.image.dashboard import grad_cam, pixels_of

        blob = data.raw_test(task)[0]["image"].iloc[0].read_bytes()

        def once() -> None:
            served = data.served(task)
            pixels = pixels_of("x.png", blob, state)
            k = int(served.predictor.outputs(pd.DataFrame({"image": [blob]}))[0].argmax())
            grad_cam(context.page(task, served), pixels[None], [k])

        explain = None
    for _ in range(3):
        once()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        once()
        samples.append((time.perf_counter() - t) * 1e3)
    out = {"what": "checks + preprocessing + ONNX Runtime" + (" + Grad-CAM (torch)" if kind == "image" else ""),
           "median_ms": statistics.median(samples), "max_ms": max(samples), "repeats": repeats,
           "budget_ms": BUDGET_PREDICT_MS[kind]}
    out["within_budget"] = out["median_ms"] < out["budget_ms"]
    if explain is not None:
        explain()
        t = time.perf_counter()
        for _ in range(repeats):
            explain()
        out["local_shap_median_ms"] = (time.perf_counter() - t) * 1e3 / repeats
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO, help="project with a trained model (default: this one)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "dashboard.json")
    args = parser.parse_args()
    os.environ["TORCHCYCLE_ROOT"] = str(args.root.resolve())
    os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    import logging

    logging.getLogger("streamlit").setLevel(logging.ERROR)
    from dashboards import data

    from torchcycle.machine import machine

    tasks = data.tasks()
    load_at_start = os.getloadavg()
    start = time.perf_counter()
    for task in tasks:  # warm-up: the first visit of each page loads libraries, models and stores
        for page in PAGES:
            render(page, task)
    warmup = time.perf_counter() - start
    pages: dict[str, dict] = {}
    for task in tasks:
        for page in PAGES:
            samples = [render(page, task) for _ in range(args.repeats)]
            pages[f"{page}@{task}"] = {"median_s": statistics.median(samples), "max_s": max(samples)}
            print(f"render {page}@{task}: median {pages[f'{page}@{task}']['median_s']:.3f} s", flush=True)
    predictions = {t: predict_round_trip(t, k, args.repeats * 20) for t, k in tasks.items()}
    for t, r in predictions.items():
        print(f"predict {t}: median {r['median_ms']:.1f} ms (budget {r['budget_ms']:.0f} ms)", flush=True)
    worst = max(v["median_s"] for v in pages.values())
    result = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg()},
        "method": "streamlit.testing.v1.AppTest in one process; each render a fresh session after a warm-up",
        "warmup_s": warmup,
        "page_render": pages,
        "page_budget_s": BUDGET_PAGE_S,
        "pages_within_budget": worst < BUDGET_PAGE_S,
        "prediction_round_trip": predictions,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"slowest page {worst:.3f} s (budget {BUDGET_PAGE_S} s); written to {args.out}")


if __name__ == "__main__":
    main()
