"""The default `diamonds` model against scikit-learn's baselines, side by side in one run on the same
test split (the pipeline's own: 20 % held out with the seed, so the same rows as an 80/20 split with
random_state 42).

    python benchmarks/bench_regression.py        # after `dvc repro preprocess@diamonds`

The torchcycle model is trained here with the pipeline's own code (the kind's model spec, the target's
objective, `fit`, the split-conformal calibration) on the processed training split, exactly as
`train@diamonds` does without MLflow. The baselines are HistGradientBoostingRegressor (default settings,
native categorical support) and a ridge regression on one-hot columns, each fitted twice: on the same
training rows as the model, and on training + validation rows (all 80 %, the usual reference setting).
Floors: the model's RMSE no worse than HGB's, R² >= 0.98, interval coverage within 2 points of nominal.
Results: benchmarks/results/regression.json and regression.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
# isort: off
import torchcycle  # noqa: E402,F401  (sets the OpenMP policy before torch loads, as the CLI does)
import pandas as pd  # noqa: E402
# isort: on

TASK = "diamonds"
R2_FLOOR = 0.98
COVERAGE_SLACK = 0.02


def torchcycle_model(params: Any, paths: Any) -> dict[str, Any]:
    import torch

    from torchcycle.artifacts import load_split, read_schema
    from torchcycle.kinds import kind_of
    from torchcycle.models.factory import build_model
    from torchcycle.targets import target_of
    from torchcycle.training.loop import fit, predict_outputs
    from torchcycle.training.reproducibility import configure_threads, seed_everything

    cfg = params.task(TASK)
    seed_everything(params.seed)
    configure_threads(cfg.train.num_threads)
    train, val, test = (load_split(paths, s) for s in ("train", "val", "test"))
    schema = read_schema(paths)
    target = target_of(schema["target"])
    model = build_model(kind_of(cfg).model_spec(cfg, schema, train, target.n_outputs(schema["target"])))
    tcfg = cfg.train.model_copy(update={"checkpoint": cfg.train.checkpoint.model_copy(update={"enabled": False})})
    start = time.perf_counter()
    fit(model, train, val, tcfg, objective=target.objective(schema["target"], tcfg), seed=params.seed, progress=False)
    state = target.calibrate(schema["target"], predict_outputs(model, val), val.y.numpy())
    seconds = time.perf_counter() - start
    with torch.inference_mode():
        outputs = target.head(state)(torch.from_numpy(predict_outputs(model, test))).numpy()
    metrics = target.metrics(test.y.numpy(), outputs, state)
    return {"train_seconds": round(seconds, 1), "epochs": cfg.train.epochs, **metrics}


def baselines(paths: Any, params: Any) -> dict[str, dict[str, Any]]:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from torchcycle.kinds import kind_of

    kind = kind_of(params.task(TASK))
    frames = {s: kind.raw_inputs(paths, s)[0] for s in ("train", "val", "test")}
    target = params.task(TASK).source.target
    categorical = [c for c in frames["train"].columns
                   if not pd.api.types.is_numeric_dtype(frames["train"][c]) and c != target]
    numeric = [c for c in frames["train"].columns if c not in categorical and c != target]
    x_test, y_test = frames["test"].drop(columns=target), frames["test"][target].to_numpy(float)
    out = {}
    for rows_name, train in (("train rows", frames["train"]),
                             ("train + val rows", pd.concat([frames["train"], frames["val"]]))):
        x, y = train.drop(columns=target), train[target].to_numpy(float)
        hgb_x = x.copy()
        hgb_test = x_test.copy()
        for c in categorical:
            hgb_x[c] = hgb_x[c].astype("category")
            hgb_test[c] = pd.Categorical(hgb_test[c], categories=hgb_x[c].cat.categories)
        models = {
            "HistGradientBoostingRegressor": (HistGradientBoostingRegressor(categorical_features="from_dtype",
                                                                            random_state=42), hgb_x, hgb_test),
            "ridge (one-hot)": (make_pipeline(ColumnTransformer([
                ("num", StandardScaler(), numeric), ("cat", OneHotEncoder(handle_unknown="ignore"), categorical)]),
                Ridge()), x, x_test),
        }
        for name, (model, fit_x, test_x) in models.items():
            start = time.perf_counter()
            model.fit(fit_x, y)
            seconds = time.perf_counter() - start
            pred = model.predict(test_x)
            out[f"{name}, {rows_name}"] = {
                "train_seconds": round(seconds, 2), "rows": len(fit_x),
                "rmse": float(root_mean_squared_error(y_test, pred)), "mae": float(mean_absolute_error(y_test, pred)),
                "r2": float(r2_score(y_test, pred)),
            }
    return out


def main() -> None:
    from common import machine_now

    from torchcycle.atomic import write_json, write_text
    from torchcycle.config import load_params
    from torchcycle.paths import TaskPaths

    params = load_params(ROOT / "params.yaml")
    paths = TaskPaths(TASK, ROOT)
    if not paths.split("test").exists():
        sys.exit(f"run `dvc repro preprocess@{TASK}` first")
    base = baselines(paths, params)
    model = torchcycle_model(params, paths)
    hgb = base["HistGradientBoostingRegressor, train + val rows"]
    nominal = model["interval_nominal_coverage"]
    floors = {
        "rmse_no_worse_than_hgb": model["rmse"] <= hgb["rmse"],
        "r2_at_least_0.98": model["r2"] >= R2_FLOOR,
        "coverage_within_2_points": abs(model["interval_coverage"] - nominal) <= COVERAGE_SLACK,
    }
    record = {
        "benchmark": f"{TASK}: the default torchcycle model vs scikit-learn baselines on the same test split",
        "test_rows": int(model["n_samples"]), "torchcycle": model, "baselines": base, "floors": floors,
        "rmse_ratio_model_to_hgb": model["rmse"] / hgb["rmse"],
        "machine": machine_now(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": ".venv/bin/python benchmarks/bench_regression.py",
    }  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "regression.json"
    write_json(out, record)
    m = record["machine"]
    lines = [
        f"# {TASK}: torchcycle vs scikit-learn on the same test split", "",
        (f"`{record['command']}` — {record['measured_at']}, {m['cpu']}, {m['cores']} cores, load "
        f"{m['load_average_1m']:.1f}. Test split: {record['test_rows']} rows (20 % held out, seed 42)."), "",
        "| model | trained on | RMSE | MAE | R² | train s |", "|---|---|---|---|---|---|",
        (f"| torchcycle default (MLP, log target, {model['epochs']} epochs) | train rows (val: early stopping, "
        f"conformal) | {model['rmse']:.1f} | {model['mae']:.1f} | {model['r2']:.4f} | {model['train_seconds']} |"),
    ]  # fmt: skip
    for name, r in base.items():
        model_name, rows = name.split(", ")
        lines.append(f"| {model_name} | {rows} ({r['rows']}) | {r['rmse']:.1f} | {r['mae']:.1f} | {r['r2']:.4f} | "
                     f"{r['train_seconds']} |")
    lines += ["", (f"RMSE ratio torchcycle / HGB (train + val rows): **{record['rmse_ratio_model_to_hgb']:.3f}**. "
              f"Prediction intervals: nominal {nominal:.0%}, empirical coverage on test "
              f"**{model['interval_coverage']:.3f}**, mean width {model['interval_mean_width']:,.0f} dollars."), "",
              "Floors: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in floors.items()) + "."]
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
