"""ONNX export with a dynamic batch axis, parity against eager torch, and a runtime benchmark.

The exported graph is the model followed by its target type's head (softmax probabilities, or a number
in target units with its prediction interval), so every consumer of the file gets the same numbers as
the evaluate stage without re-implementing anything. The preprocessing state travels
inside the file as metadata (`torchcycle.preprocessor`), so a registered model is self-contained.

Pure functions: models and arrays in, bytes and dicts out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

METADATA_PREPROCESSOR = "torchcycle.preprocessor"
METADATA_CLASSES = "torchcycle.classes"
METADATA_INPUT = "torchcycle.input"


METADATA_TARGET = "torchcycle.target"


def export_onnx(
    graph: nn.Module,
    example: tuple[torch.Tensor, ...],
    names: list[str],
    output: str,
    metadata: dict[str, str] | None = None,
    opset: int | None = None,
    axes: dict[str, dict[int, str]] | None = None,
) -> bytes:
    """Serialized ONNX model (weights inside) of `graph` (the model and its target head, with the kind's
    named inputs `names`) with a dynamic batch axis, plus the kind's other dynamic `axes` (input name ->
    axis -> dimension name, e.g. a text's sequence length)."""
    import onnx

    graph = graph.eval()
    dims: dict[str, Any] = {"batch": torch.export.Dim("batch")}
    for per_input in (axes or {}).values():
        for dim_name in per_input.values():
            dims.setdefault(dim_name, torch.export.Dim(dim_name))
    shapes = {n: {0: dims["batch"], **{a: dims[d] for a, d in (axes or {}).get(n, {}).items()}} for n in names}
    # the exporter specialises a batch of one to a constant: trace with at least two rows
    example = tuple(t[:2] if len(t) >= 2 else torch.cat([t, t]) for t in example)
    kwargs: dict[str, Any] = {"opset_version": opset} if opset else {}
    program = torch.onnx.export(
        graph, example, input_names=names, output_names=[output],
        dynamic_shapes=shapes, external_data=False, dynamo=True, verbose=False,
        **kwargs,
    )  # fmt: skip
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def ort_session(model: bytes | str, threads: int = 1) -> Any:
    """An onnxruntime CPU session. One intra-op thread leaves the other cores to concurrent requests
    (a second, spinning thread shaves a few µs off a single small request); raise it for large batches."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def read_metadata(session: Any) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def run_session(session: Any, inputs: tuple[np.ndarray, ...], batch_size: int = 4096) -> np.ndarray:
    names, output = [i.name for i in session.get_inputs()], [session.get_outputs()[0].name]
    n = len(inputs[0])
    parts = [session.run(output, {k: v[s : s + batch_size] for k, v in zip(names, inputs)})[0]
             for s in range(0, n, batch_size)]  # fmt: skip
    return np.concatenate(parts) if parts else np.zeros((0, session.get_outputs()[0].shape[1]), np.float32)


def torch_outputs(graph: nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int = 4096) -> np.ndarray:
    """What the exported graph computes, in eager torch (the parity reference)."""
    graph = graph.eval()
    with torch.inference_mode():
        parts = [graph(*(t[s : s + batch_size] for t in inputs)).numpy()
                 for s in range(0, len(inputs[0]), batch_size)]  # fmt: skip
    return np.concatenate(parts)


def _time_side_by_side(
    fns: dict[str, Callable[[], Any]], min_repeats: int, min_seconds: float, blocks: int = 10
) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternating blocks after a warm-up, so
    that a change of machine load touches every contender alike instead of whichever ran last."""
    for fn in fns.values():
        for _ in range(5):
            fn()
    per_block = max(min_repeats // blocks, 1)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    start, done = time.perf_counter(), 0
    while done < blocks or time.perf_counter() - start < min_seconds:
        for name, fn in fns.items():
            for _ in range(per_block):
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
        done += 1
    return {name: float(np.median(values)) for name, values in samples.items()}


def benchmark(
    graph: nn.Module,
    session: Any,
    inputs: tuple[torch.Tensor, ...],
    repeats: int = 200,
    min_seconds: float = 0.5,
    threads: int | None = None,
    rounds: int = 1,
    batches: tuple[int, ...] = (1, 256),
) -> dict[str, Any]:
    """Batch-1 latency and batch-256 throughput of eager torch (inference mode) and onnxruntime.

    `threads` gives torch the same intra-op thread count as the onnxruntime session, so the comparison
    is runtime against runtime rather than one core against several. Every batch-1 round runs before
    any batch-256 one, and callers time before their parity pass: after a session or eager torch has
    run a larger batch, both are about a tenth slower at batch 1 for the rest of the process
    (benchmarks/results/export.md), and the batch-1 figure is meant for a process serving single rows.
    Each batch size reports the median of its rounds (listed under `rounds` when there are several)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        out: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
        for batch in batches:
            runs = [_time_batch(graph, session, inputs, batch, repeats if batch == 1 else max(repeats // 10, 10),
                                min_seconds) for _ in range(rounds)]  # fmt: skip
            out[f"batch{batch}"] = {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
            if rounds > 1:
                out[f"batch{batch}"]["rounds"] = runs
        return out
    finally:
        torch.set_num_threads(previous)


def _time_batch(graph: nn.Module, session: Any, inputs: tuple[torch.Tensor, ...], batch: int, repeats: int,
                min_seconds: float) -> dict[str, float]:
    names = [i.name for i in session.get_inputs()]
    output = [session.get_outputs()[0].name]  # naming the output saves a lookup per call
    wrapped = graph.eval()
    rows = tuple(t[:batch] for t in inputs)
    if len(rows[0]) < batch:  # repeat rows to fill a batch
        reps = -(-batch // len(rows[0]))
        rows = tuple(t.repeat(reps, *([1] * (t.ndim - 1)))[:batch] for t in rows)
    feeds = {k: v.numpy() for k, v in zip(names, rows)}

    def eager() -> None:
        with torch.inference_mode():
            wrapped(*rows)

    times = _time_side_by_side({"torch": eager, "ort": lambda: session.run(output, feeds)}, repeats, min_seconds)
    t_torch, t_ort = times["torch"], times["ort"]
    return {
        "torch_ms": t_torch * 1e3,
        "onnxruntime_ms": t_ort * 1e3,
        "torch_rows_per_s": batch / t_torch,
        "onnxruntime_rows_per_s": batch / t_ort,
        "speedup": t_torch / t_ort,
    }


def metadata_for(state: dict[str, Any], target: dict[str, Any], input_description: dict[str, Any]) -> dict[str, str]:
    """What a consumer needs besides the graph: the preprocessing state, the fitted target (class names,
    or the scale and interval of a number) and the expected input in words."""
    meta = {METADATA_PREPROCESSOR: json.dumps(state), METADATA_TARGET: json.dumps(target),
            METADATA_INPUT: json.dumps(input_description)}
    if "classes" in target:
        meta[METADATA_CLASSES] = json.dumps(target["classes"])
    return meta
