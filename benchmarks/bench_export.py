"""Eager torch against ONNX Runtime at batch 1 and 256, for both built-in tasks, side by side.

The same measurement the export stage writes to reports/<task>/export.json (torch and onnxruntime
timed in alternating blocks, one intra-op thread each), repeated in rounds so one noisy moment does
not decide the figure. For the tabular model it also times the dense formulation of the first layer
(one-hot vector times the full weight, `forward_encoded(encode(...))`) against the gathered one the
model uses, both eager and exported, so the effect of that choice is measured rather than claimed.

Uses the trained models in models/<task> when present, else the architecture from params.yaml with
initial weights (latency does not depend on weight values). Needs data/processed/<task>
(`dvc repro preprocess@adult preprocess@mnist`).

    .venv/bin/python benchmarks/bench_export.py [--rounds 3] [--seconds 2]

Writes benchmarks/results/export.json and export.md with the machine and its load.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
FLOOR = 3.0


class DenseFirstLayer(nn.Module):
    """The tabular model computed the textbook way: the full one-hot vector into the first Linear."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        return self.model.forward_encoded(self.model.encode(x_num, x_cat))


def measure(model: nn.Module, test, kind: str, rounds: int, seconds: float) -> dict:
    import onnx

    import torchcycle.export.onnx as X

    blob = X.export_onnx(model, test.inputs, kind)
    session = X.ort_session(blob, threads=1)
    parity = X.parity(X.torch_proba(model, test.inputs), X.run_session(session, tuple(t.numpy() for t in test.inputs)),
                      1e-4)
    runs = [X.benchmark(model, session, test.inputs, repeats=1000, min_seconds=seconds, threads=1)
            for _ in range(rounds)]  # fmt: skip
    out = {"parity_max_abs_diff": parity["max_abs_diff"], "onnx_nodes": len(onnx.load_from_string(blob).graph.node),
           "rounds": runs}
    for batch in ("batch1", "batch256"):
        out[batch] = {key: float(np.median([r[batch][key] for r in runs]))
                      for key in ("torch_ms", "onnxruntime_ms", "speedup")}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export.json")
    args = parser.parse_args()

    from common import machine_now, model_for

    from torchcycle.atomic import write_json, write_text
    from torchcycle.paths import TaskPaths
    from torchcycle.stages.common import load_split

    results, weights = {}, {}
    for task, kind in (("adult", "tabular"), ("mnist", "image")):
        model, weights[task] = model_for(task)
        test = load_split(TaskPaths(task, ROOT), "test")
        results[task] = measure(model, test, kind, args.rounds, args.seconds)
        if kind == "tabular":
            results["adult (dense one-hot first layer)"] = measure(DenseFirstLayer(model), test, kind, args.rounds,
                                                                   args.seconds)
    record = {
        "benchmark": "batch-1 latency and batch-256 throughput, eager torch vs ONNX Runtime (1 thread each)",
        "floor_batch1_speedup": FLOOR,
        "weights": weights,
        "results": results,
        "machine": machine_now(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": ".venv/bin/python benchmarks/bench_export.py",
    }  # fmt: skip
    write_json(args.out, record)
    lines = [
        "# Export: eager torch vs ONNX Runtime", "",
        (f"`{record['command']}` — {record['measured_at']}, {record['machine']['cpu']}, "
        f"{record['machine']['cores']} cores, load {record['machine']['load_average_1m']:.1f}; "
        f"median of {args.rounds} rounds, torch and ONNX Runtime timed in alternating blocks. Floor: {FLOOR:g}x at batch 1."),
        "",
        ("| model | batch-1 torch ms | batch-1 ORT ms | batch-1 speed-up | batch-256 torch ms | batch-256 ORT ms "
        "| batch-256 speed-up | parity max abs diff | ONNX nodes |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, r in results.items():
        b1, b256 = r["batch1"], r["batch256"]
        lines.append(f"| {name} | {b1['torch_ms']:.3f} | {b1['onnxruntime_ms']:.3f} | {b1['speedup']:.2f}x | "
                     f"{b256['torch_ms']:.2f} | {b256['onnxruntime_ms']:.2f} | {b256['speedup']:.2f}x | "
                     f"{r['parity_max_abs_diff']:.1e} | {r['onnx_nodes']} |")
    write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
