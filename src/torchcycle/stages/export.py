"""export@<task>: ONNX model (probabilities out, preprocessing state in its metadata), a parity check on
the whole test split, and a runtime benchmark; fails (keeping the last good export) when parity or the
latency floor is not met."""

from __future__ import annotations

from pathlib import Path

from torchcycle.artifacts import load_model, load_split
from torchcycle.atomic import atomic_dir, read_json, write_json
from torchcycle.config import Params
from torchcycle.errors import TorchcycleError
from torchcycle.export import onnx as X
from torchcycle.kinds import kind_of
from torchcycle.machine import machine
from torchcycle.paths import TaskPaths
from torchcycle.targets import target_of

OUTPUT = "outputs"


def run(params: Params, task: str, root: Path) -> dict:
    import mlflow
    import onnxruntime
    import torch

    from torchcycle.serving import Predictor
    from torchcycle.tracking import mlflow_run

    cfg, ex = params.task(task), params.export
    paths = TaskPaths(task, root)
    model, config = load_model(paths.models)
    state, target_state = read_json(paths.preprocessor), config["target"]
    kind, target = kind_of(cfg), target_of(target_state)
    graph = kind.onnx_module(model, target.head(target_state)).eval()
    names = kind.input_names(state)
    test = load_split(paths, "test")
    blob = X.export_onnx(graph, test.inputs, names, OUTPUT,
                         X.metadata_for(state, target_state, kind.describe_input(state)), ex.opset,
                         kind.dynamic_axes(state))
    session = X.ort_session(blob, ex.ort_threads)
    # timed first: the parity pass's large batches would leave both runtimes slower at batch 1
    bench = X.benchmark(graph, session, test.inputs, repeats=ex.benchmark_repeats, min_seconds=ex.benchmark_seconds,
                        threads=ex.ort_threads)

    reference = X.torch_outputs(graph, test.inputs)
    tensor_parity = target.parity(reference, X.run_session(session, tuple(t.numpy() for t in test.inputs)),
                                  ex.parity_tolerance)
    # the full consumer path: raw records -> the stored preprocessing -> ONNX Runtime
    raw, _ = kind.raw_inputs(paths, "test")
    raw_parity = target.parity(reference, Predictor(blob, ex.ort_threads).outputs(raw), ex.parity_tolerance)
    speedup = bench["batch1"]["speedup"]
    report = {
        "task": task,
        "onnx_bytes": len(blob),
        "opset": _opset(blob),
        "inputs": names,
        "output": {"name": OUTPUT, "columns": target.output_columns(target_state)},
        "parity": tensor_parity,
        "parity_from_raw_input": raw_parity,
        "benchmark": bench,
        "min_speedup": ex.min_speedup,
        "machine": machine(),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "ort_threads": ex.ort_threads},
    }
    problems = []
    for label, p in (("torch vs ONNX Runtime", tensor_parity), ("raw input through ONNX Runtime", raw_parity)):
        if not p["passed"]:
            detail = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in p.items()
                               if k not in ("passed", "rows"))
            problems.append(f"{label}: parity failed ({detail})")
    if ex.min_speedup and speedup < ex.min_speedup:
        problems.append(f"ONNX Runtime batch-1 latency is only {speedup:.2f}x lower than eager torch "
                        f"(floor {ex.min_speedup:g}x)")
    if problems:
        raise TorchcycleError(f"export@{task} failed; the previous export is kept.\n  - " + "\n  - ".join(problems))

    with atomic_dir(paths.exported) as tmp:
        (tmp / "model.onnx").write_bytes(blob)
    write_json(paths.export_report, report)
    with mlflow_run.reopen_run(params, paths, root):
        mlflow.log_metrics({
            "onnx_parity_max_abs_diff": tensor_parity["max_abs_diff"],
            "onnx_raw_parity_max_abs_diff": raw_parity["max_abs_diff"],
            "onnx_batch1_speedup": speedup,
            "onnx_batch1_ms": bench["batch1"]["onnxruntime_ms"],
            "torch_batch1_ms": bench["batch1"]["torch_ms"],
            "onnx_batch256_rows_per_s": bench["batch256"]["onnxruntime_rows_per_s"],
            "torch_batch256_rows_per_s": bench["batch256"]["torch_rows_per_s"],
        })  # fmt: skip
        mlflow.log_artifact(str(paths.export_report), artifact_path="export")
    return report


def _opset(blob: bytes) -> int:
    import onnx

    proto = onnx.load_from_string(blob)
    return int(next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0))
