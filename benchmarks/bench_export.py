"""Eager torch against ONNX Runtime at batch 1 and 256, for both built-in tasks, side by side.

The same measurement the export stage writes to reports/<task>/export.json (torch and onnxruntime
timed in alternating blocks, one intra-op thread each, batch 1 first and before the parity pass),
repeated in rounds so one noisy moment does not decide the figure. Each model is measured in a process
of its own, so no earlier model's large batches slow its batch-1 calls. For the tabular model it also
times the dense formulation of the first layer (one-hot vector times the full weight,
`forward_encoded(encode(...))`) against the gathered one the model uses, both eager and exported, so the
effect of that choice is measured rather than claimed. Every model is timed at batch 1 once more after
its parity pass, in the same process, so the effect of that order is on record too.

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


def measure(task: str, kind: str, variant: str, rounds: int, seconds: float) -> dict:
    """One model in a process of its own, timed before anything in that process has run a large batch
    (see `torchcycle.export.onnx.benchmark`), then its parity pass, then batch 1 again on the same
    session: the cost of the other order, measured in the same process."""
    import onnx
    from common import model_for

    import torchcycle.export.onnx as X
    from torchcycle.artifacts import load_split, read_schema
    from torchcycle.kinds import get_kind
    from torchcycle.paths import TaskPaths
    from torchcycle.targets import target_of

    model, weights = model_for(task)
    if variant == "dense":
        model = DenseFirstLayer(model)
    paths = TaskPaths(task, ROOT)
    test, target_state = load_split(paths, "test"), read_schema(paths)["target"]
    kind_obj, target = get_kind(kind), target_of(target_state)
    graph = kind_obj.onnx_module(model, target.head(target_state)).eval()
    blob = X.export_onnx(graph, test.inputs, kind_obj.input_names({}), "outputs")
    session = X.ort_session(blob, threads=1)
    bench = X.benchmark(graph, session, test.inputs, repeats=1000, min_seconds=seconds, threads=1, rounds=rounds)
    parity = target.parity(X.torch_outputs(graph, test.inputs),
                           X.run_session(session, tuple(t.numpy() for t in test.inputs)), 1e-4)  # fmt: skip
    after = X.benchmark(graph, session, test.inputs, repeats=1000, min_seconds=seconds, threads=1, rounds=rounds,
                        batches=(1,))
    return {"weights": weights, "parity_max_abs_diff": parity["max_abs_diff"],
            "onnx_nodes": len(onnx.load_from_string(blob).graph.node), **bench,
            "batch1_after_parity_pass": after["batch1"]}


MODELS = {  # name: (task, kind, variant)
    "adult": ("adult", "tabular", "default"),
    "adult (dense one-hot first layer)": ("adult", "tabular", "dense"),
    "mnist": ("mnist", "image", "default"),
}


def main() -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export.json")
    args = parser.parse_args()

    from common import machine_now

    from torchcycle.atomic import write_json, write_text

    results = {}
    for name, (task, kind, variant) in MODELS.items():
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results[name] = pool.submit(measure, task, kind, variant, args.rounds, args.seconds).result()
        print(f"{name}: batch-1 speed-up {results[name]['batch1']['speedup']:.2f}x", flush=True)
    record = {
        "benchmark": "batch-1 latency and batch-256 throughput, eager torch vs ONNX Runtime (1 thread each)",
        "floor_batch1_speedup": FLOOR,
        "results": results,
        "machine": machine_now(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": ".venv/bin/python benchmarks/bench_export.py",
    }  # fmt: skip
    write_json(args.out, record)
    lines = [
        "# Export: eager torch vs ONNX Runtime", "",
        (f"`{record['command']}` — {record['measured_at']}, {record['machine']['cpu']}, "
        f"{record['machine']['cores']} cores, load {record['machine']['load_average_1m']:.1f}; each model in a "
        f"process of its own, median of {args.rounds} rounds, torch and ONNX Runtime timed in alternating blocks, "
        f"batch 1 before batch 256 and before the parity pass. Floor: {FLOOR:g}x at batch 1."),
        "",
        ("| model | batch-1 torch ms | batch-1 ORT ms | batch-1 speed-up | batch-1 after the parity pass "
        "| batch-256 torch ms | batch-256 ORT ms | batch-256 speed-up | parity max abs diff | ONNX nodes |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, r in results.items():
        b1, b256, late = r["batch1"], r["batch256"], r["batch1_after_parity_pass"]
        lines.append(f"| {name} | {b1['torch_ms']:.3f} | {b1['onnxruntime_ms']:.3f} | {b1['speedup']:.2f}x | "
                     f"{late['torch_ms']:.3f} vs {late['onnxruntime_ms']:.3f} ms, {late['speedup']:.2f}x | "
                     f"{b256['torch_ms']:.2f} | {b256['onnxruntime_ms']:.2f} | {b256['speedup']:.2f}x | "
                     f"{r['parity_max_abs_diff']:.1e} | {r['onnx_nodes']} |")
    write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
