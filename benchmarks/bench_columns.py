"""Columns as users have them cost (almost) nothing at prediction time: a table with a date column, an
ID column and a 5,000-level text column against the same table without them, side by side in one run.

    python benchmarks/bench_columns.py

Both tables go through the pipeline's own code: the tabular kind's column roles (the ID column dropped,
the date turned into five numbers, the many-level column capped at `preprocess.max_categories`),
preprocessing fitted on the rows, the default MLP spec, the ONNX graph with the target head, and the
served path (`Predictor.outputs` on one raw record). Batch-1 latency of the ONNX model and of the raw
record path are timed in alternating blocks. Floor: the wide table within 2x of the plain one at batch 1.
Results: benchmarks/results/columns.json and columns.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
# isort: off
import torchcycle  # noqa: E402,F401  (sets the OpenMP policy before torch loads, as the CLI does)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
# isort: on

ROWS = 20_000
LEVELS = 5_000
FLOOR = 2.0


def table(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    day = pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 700, rows), unit="D")
    return pd.DataFrame({
        "case_number": [f"C-{i:07d}" for i in rng.permutation(rows)],
        "opened": day.strftime("%Y-%m-%d"),
        "street": [f"street {i}" for i in rng.integers(0, LEVELS, rows)],
        "amount": rng.gamma(2.0, 50.0, rows).round(2),
        "age": rng.integers(18, 90, rows),
        "channel": rng.choice(["web", "phone", "branch"], rows),
        "approved": rng.choice(["yes", "no"], rows),
    })  # fmt: skip


def build(frame: pd.DataFrame) -> dict:
    """What preprocess, train (untrained weights: timing does not depend on them) and export produce."""
    import torch

    from torchcycle.config import parse_params
    from torchcycle.export import onnx as X
    from torchcycle.kinds import get_kind
    from torchcycle.kinds.tabular.preprocess import fit_tabular, transform_tabular
    from torchcycle.kinds.tabular.validate import resolve_roles
    from torchcycle.models.factory import build_model
    from torchcycle.serving import Predictor
    from torchcycle.targets import get_target

    params = parse_params({"tasks": ["t"], "t": {"kind": "tabular", "source": {"path": "x.csv", "target": "approved"},
                                               "split": {}, "preprocess": {}, "model": {}, "train": {}}})
    cfg = params.task("t")
    roles = resolve_roles(frame, cfg.source)
    state = fit_tabular(frame, roles.numeric, roles.categorical, cfg.preprocess, roles.dates)
    target = get_target(roles.target_type)
    target_state = target.fit(frame["approved"], cfg.source)
    x_num, x_cat = transform_tabular(frame, state)
    kind = get_kind("tabular")
    schema = {"numeric": state["numeric"], "categorical": state["categorical"]}
    from torchcycle.training.loop import TensorData

    torch.manual_seed(0)
    inputs = (torch.from_numpy(x_num), torch.from_numpy(x_cat))
    model = build_model(kind.model_spec(cfg, schema, TensorData(inputs, torch.zeros(len(frame))),
                                           target.n_outputs(target_state))).eval()
    graph = kind.onnx_module(model, target.head(target_state)).eval()
    blob = X.export_onnx(graph, inputs, kind.input_names(state), "outputs",
                         X.metadata_for(state, target_state, kind.describe_input(state)))
    predictor = Predictor(blob)
    feeds = {"x_num": x_num[:1], "x_cat": x_cat[:1]}
    record = frame.drop(columns="approved").head(1)
    return {"roles": {"dropped": roles.dropped, "dates": roles.dates, "categorical": roles.categorical,
                      "numeric": roles.numeric},
            "levels_kept": {c["name"]: len(c["categories"]) for c in state["categorical"]},
            "onnx_bytes": len(blob), "model": lambda: predictor.session.run(["outputs"], feeds),
            "raw_record": lambda: predictor.outputs(record)}


def main() -> None:
    from common import machine_now

    from torchcycle.atomic import write_json, write_text
    from torchcycle.export.onnx import _time_side_by_side

    wide = table(ROWS)
    plain = wide.drop(columns=["case_number", "opened", "street"])
    built = {"wide (date, ID, 5,000-level text)": build(wide), "plain": build(plain)}
    fns = {f"{name}: {what}": b[what] for name, b in built.items() for what in ("model", "raw_record")}
    times = _time_side_by_side(fns, min_repeats=2000, min_seconds=3.0)
    results = {name: {"roles": b["roles"], "levels_kept": b["levels_kept"], "onnx_bytes": b["onnx_bytes"],
                      "batch1_model_ms": times[f"{name}: model"] * 1e3,
                      "batch1_raw_record_ms": times[f"{name}: raw_record"] * 1e3}
               for name, b in built.items()}
    wide_r, plain_r = results["wide (date, ID, 5,000-level text)"], results["plain"]
    ratio_model = wide_r["batch1_model_ms"] / plain_r["batch1_model_ms"]
    ratio_raw = wide_r["batch1_raw_record_ms"] / plain_r["batch1_raw_record_ms"]
    record = {"benchmark": "batch-1 latency of a table with a date, an ID and a 5,000-level column vs without them",
              "rows": ROWS, "results": results, "ratio_model": ratio_model, "ratio_raw_record": ratio_raw,
              "floor": FLOOR, "machine": machine_now(),
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": ".venv/bin/python benchmarks/bench_columns.py"}  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "columns.json"
    write_json(out, record)
    m = record["machine"]
    lines = [
        "# Columns as users have them: batch-1 cost", "",
        (f"`{record['command']}` — {record['measured_at']}, {m['cpu']}, {m['cores']} cores, load "
        f"{m['load_average_1m']:.1f}; {ROWS:,} rows, timed in alternating blocks."), "",
        "| table | dropped | dates | levels kept | ONNX bytes | batch-1 ONNX ms | batch-1 raw record ms |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, r in results.items():
        lines.append(f"| {name} | {', '.join(r['roles']['dropped']) or '-'} | {', '.join(r['roles']['dates']) or '-'} "
                     f"| {r['levels_kept']} | {r['onnx_bytes']:,} | {r['batch1_model_ms']:.3f} | "
                     f"{r['batch1_raw_record_ms']:.3f} |")
    lines += ["", (f"Ratio wide / plain: ONNX model **{ratio_model:.2f}x**, raw record path **{ratio_raw:.2f}x** "
              f"(floor: at most {FLOOR:g}x).")]
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
