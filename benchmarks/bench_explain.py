"""How long SHAP takes on the Adult model: 1,000 test rows against 100 background rows (the explain
stage's defaults), DeepExplainer with many rows per backward pass. Budget: under 10 s.

Uses the trained model in models/adult when there is one, else the architecture from params.yaml with
its initial weights (the cost of SHAP does not depend on the weight values). Needs data/processed/adult
(`dvc repro preprocess@adult`).

    .venv/bin/python benchmarks/bench_explain.py [--rows 1000] [--repeats 3]

Writes benchmarks/results/explain_adult.json with the machine it ran on and its load at the time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--background", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "explain_adult.json")
    args = parser.parse_args()

    from common import machine_now, model_for

    from torchcycle.artifacts import load_split
    from torchcycle.atomic import read_json, write_json
    from torchcycle.kinds.tabular.preprocess import feature_names
    from torchcycle.kinds.tabular.shap import explain_tabular
    from torchcycle.paths import TaskPaths
    from torchcycle.targets.classification import log_odds

    paths = TaskPaths("adult", ROOT)
    train, test = load_split(paths, "train"), load_split(paths, "test")
    model, weights = model_for("adult")
    state = read_json(paths.preprocessor)
    columns = feature_names(state)
    rng = np.random.default_rng(0)
    bg = np.sort(rng.choice(len(train), args.background, replace=False))
    rows = np.sort(rng.choice(len(test), min(args.rows, len(test)), replace=False))
    background = tuple(t[bg] for t in train.inputs)
    explained = tuple(t[rows] for t in test.inputs)

    wall, cpu, errors = [], [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = explain_tabular(model, background, explained, columns, log_odds())
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        errors.append(result.additivity_error)
    record = {
        "benchmark": "SHAP DeepExplainer on Adult (explain_tabular)",
        "rows": len(rows),
        "background_rows": len(bg),
        "encoded_features": int(model.encode(*background).shape[1]),
        "weights": weights,
        "wall_s": {"median": float(np.median(wall)), "all": wall},
        "cpu_s": {"median": float(np.median(cpu)), "all": cpu},
        "additivity_error_max": float(max(errors)),
        "budget_s": BUDGET_S,
        "within_budget": bool(np.median(wall) < BUDGET_S),
        "machine": machine_now(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    write_json(args.out, record)
    print(f"{record['rows']} rows x {record['background_rows']} background: median {record['wall_s']['median']:.2f} s "
          f"wall ({record['cpu_s']['median']:.2f} s CPU), additivity error {record['additivity_error_max']:.1e}, "
          f"load {record['machine']['load_average_1m']:.1f} on {record['machine']['cores']} cores -> {args.out}")


if __name__ == "__main__":
    main()
