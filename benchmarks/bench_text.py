"""Text models on the built-in `reviews` against scikit-learn's TF-IDF baseline, side by side in one run
on the same test split (the pipeline's own: 20 % held out, stratified, seed 42 — the rows of an 80/20
`train_test_split(stratify=y, random_state=42)`).

    .venv/bin/python benchmarks/bench_text.py                 # default model, gru, transformer, baselines
    .venv/bin/python benchmarks/bench_text.py --pretrained    # + MiniLM frozen / LoRA / full (about 30 min)

Every torchcycle model is trained by the real stage commands (`torchcycle ingest, preprocess, train,
evaluate, export <task>`) in a scratch project with its own MLflow store; the train time is the wall time of
the `torchcycle train` process (start-up and tracking included), with the load average around it. The
baselines are fitted on all 80 % (train + validation rows), the usual reference setting; the torchcycle
models train on 72 % (the validation split picks the epoch and fits the calibration).
Floors (issue: text): the default model beats the TF-IDF baseline's accuracy and ROC AUC with its train
stage at most 90 s; LoRA at least 0.82 accuracy; ONNX batch-1 at least 3x faster than eager torch.
Results: benchmarks/results/text.json and text.md (text_pretrained.* with --pretrained).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

TASK = "reviews"
TRAIN_SECONDS_FLOOR = 90.0
LORA_FLOOR = 0.82
ONNX_FLOOR = 3.0
PRETRAINED = {"tokenizer": "pretrained", "encoder": "minilm", "max_length": 64}
VARIANTS: dict[str, dict[str, Any]] = {
    "default (bag + naive-Bayes prior)": {},
    "gru (bidirectional, max-pooled)": {"model": {"name": "gru", "embedding_dim": 128, "hidden": 128},
                                        "train": {"epochs": 4, "lr": 0.003, "batch_size": 64}},
    "transformer (2 layers, learned positions)": {"model": {"name": "transformer"},
                                                 "train": {"epochs": 4, "lr": 0.001, "batch_size": 64}},
}
PRETRAINED_VARIANTS: dict[str, dict[str, Any]] = {
    "MiniLM frozen (head only)": {"preprocess": PRETRAINED, "model": {"name": "pretrained", "finetune": "frozen"},
                                  "train": {"epochs": 3, "lr": 0.003, "batch_size": 64}},
    "MiniLM LoRA (r 8, q/k/v/dense)": {"preprocess": PRETRAINED, "model": {"name": "pretrained", "finetune": "lora"},
                                       "train": {"epochs": 2, "lr": 0.001, "batch_size": 32}},
    "MiniLM full fine-tuning": {"preprocess": PRETRAINED, "model": {"name": "pretrained", "finetune": "full"},
                                "train": {"epochs": 1, "lr": 0.00005, "batch_size": 32}},
}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return time.perf_counter() - start


def torchcycle_variant(task: str, over: dict, base: dict, scratch: Path, env: dict[str, str]) -> dict[str, Any]:
    params = {k: v for k, v in base.items() if not (isinstance(v, dict) and "kind" in v)}
    params["tasks"] = [task]
    params[task] = merge(base[TASK], {k: v for k, v in over.items() if k != "model"})
    params[task]["model"] = over.get("model", base[TASK]["model"])  # another model: its own keys only
    params["card"] = {}
    params[task].pop("tune", None)
    params["evaluate"] = {**params.get("evaluate", {}), "slice_columns": {}}
    (scratch / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    exe = str(Path(sys.executable).parent / "torchcycle")
    times = {}
    for stage in ("ingest", "preprocess", "train", "evaluate", "export"):
        load = os.getloadavg()[0]
        times[stage] = round(run([exe, stage, task], scratch, env), 1)
        if stage == "train":
            times["train_load_before"] = round(load, 2)
            times["train_load_after"] = round(os.getloadavg()[0], 2)
    metrics = json.loads((scratch / "reports" / task / "metrics.json").read_text())
    export = json.loads((scratch / "reports" / task / "export.json").read_text())
    config = json.loads((scratch / "models" / task / "model_config.json").read_text())
    counts = parameter_counts(scratch, task, params[task])
    return {"seconds": times, "accuracy": metrics["accuracy"], "roc_auc": metrics["roc_auc"],
            "onnx_batch1_speedup": export["benchmark"]["batch1"]["speedup"],
            "onnx_batch1_ms": export["benchmark"]["batch1"]["onnxruntime_ms"],
            "torch_batch1_ms": export["benchmark"]["batch1"]["torch_ms"], "kept_epoch": config["kept_epoch"],
            **counts, "params": over}


def parameter_counts(scratch: Path, task: str, cfg: dict) -> dict[str, int]:
    """Trainable and total parameters of the model as trained (before adapters are merged)."""
    import torch

    from torchcycle.artifacts import load_split, read_schema
    from torchcycle.config import parse_params
    from torchcycle.kinds import kind_of
    from torchcycle.models import text as text_models
    from torchcycle.models.factory import build_model
    from torchcycle.paths import TaskPaths
    from torchcycle.targets import target_of

    params = parse_params({"tasks": [task], task: cfg})
    paths = TaskPaths(task, scratch)
    schema = read_schema(paths)
    spec = kind_of(params.task(task)).model_spec(params.task(task), schema, load_split(paths, "train"),
                                                 target_of(schema["target"]).n_outputs(schema["target"]))
    torch.manual_seed(0)
    counts = text_models.parameter_counts(build_model(spec))
    return {"trainable_parameters": counts["trainable"], "total_parameters": counts["total"]}


def baselines(scratch: Path, task: str, text_column: str) -> dict[str, dict[str, Any]]:
    """TF-IDF (unigrams, sublinear tf) + logistic regression (C=3), on the scratch project's split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    from torchcycle.kinds.text import TEXT
    from torchcycle.paths import TaskPaths

    paths = TaskPaths(task, scratch)
    frames = {s: TEXT.raw_inputs(paths, s) for s in ("train", "val", "test")}
    x = list(frames["train"][0][text_column]) + list(frames["val"][0][text_column])
    y = list(frames["train"][1]) + list(frames["val"][1])
    x_test, y_test = list(frames["test"][0][text_column]), frames["test"][1]
    out = {}
    for name, vectorizer in (("TF-IDF unigrams + logistic regression (C=3)", TfidfVectorizer(sublinear_tf=True)),
                             ("TF-IDF uni+bigrams + logistic regression (C=3)",
                              TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)))):
        start = time.perf_counter()
        model = LogisticRegression(C=3, max_iter=3000).fit(vectorizer.fit_transform(x), y)
        seconds = time.perf_counter() - start
        p = model.predict_proba(vectorizer.transform(x_test))[:, 1]
        out[name] = {"accuracy": float(accuracy_score(y_test, p >= 0.5)), "roc_auc": float(roc_auc_score(y_test, p)),
                     "train_seconds": round(seconds, 2), "rows": len(x), "test_rows": len(x_test)}
    return out


def main() -> None:
    from common import machine_now

    from torchcycle.atomic import write_json, write_text
    from torchcycle.tracking.mlflow_run import TELEMETRY_OFF

    ap = argparse.ArgumentParser()
    ap.add_argument("--pretrained", action="store_true", help="also MiniLM frozen, LoRA and full fine-tuning")
    args = ap.parse_args()
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    variants = {**VARIANTS, **(PRETRAINED_VARIANTS if args.pretrained else {})}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp:
        scratch = Path(tmp)
        env = {**os.environ, **TELEMETRY_OFF, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}"}
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
        for i, (name, over) in enumerate(variants.items()):
            print(f"training {name} …", flush=True)
            results[name] = torchcycle_variant(f"variant{i}", over, base, scratch, env)
            print(f"  {results[name]['accuracy']:.4f} / {results[name]['roc_auc']:.4f}, "
                  f"train {results[name]['seconds']['train']} s", flush=True)
        base_results = baselines(scratch, "variant0", base[TASK]["source"]["text_column"])
    default = results[next(iter(VARIANTS))]
    tfidf = base_results["TF-IDF unigrams + logistic regression (C=3)"]
    floors = {
        "default beats TF-IDF accuracy": default["accuracy"] > tfidf["accuracy"],
        "default beats TF-IDF ROC AUC": default["roc_auc"] > tfidf["roc_auc"],
        f"default train stage <= {TRAIN_SECONDS_FLOOR:g} s": default["seconds"]["train"] <= TRAIN_SECONDS_FLOOR,
        f"default ONNX batch-1 >= {ONNX_FLOOR:g}x eager": default["onnx_batch1_speedup"] >= ONNX_FLOOR,
    }
    lora = next((r for n, r in results.items() if "LoRA" in n), None)
    if lora:
        floors[f"LoRA accuracy >= {LORA_FLOOR}"] = lora["accuracy"] >= LORA_FLOOR
    record = {"benchmark": f"{TASK}: torchcycle text models vs TF-IDF + logistic regression, same test split",
              "torchcycle": results, "baselines": base_results, "floors": floors, "machine": machine_now(),
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": ".venv/bin/python benchmarks/bench_text.py" + (" --pretrained" if args.pretrained else "")}
    out = ROOT / "benchmarks" / "results" / ("text_pretrained.json" if args.pretrained else "text.json")
    write_json(out, record)
    m = record["machine"]
    lines = [f"# {TASK}: text models vs TF-IDF on the same test split", "",
             (f"`{record['command']}` — {record['measured_at']}, {m['cpu']}, {m['cores']} cores, load "
              f"{m['load_average_1m']:.1f} at the end. Test split: {tfidf['test_rows']} snippets (20 % held out, "
              "stratified, seed 42)."), "",
             ("| model | accuracy | ROC AUC | train stage s (load before → after) | kept epoch | trainable / total "
              "parameters | ONNX batch-1 ms (eager) | speed-up |"), "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        s = r["seconds"]
        lines.append(f"| torchcycle {name} | {r['accuracy']:.4f} | {r['roc_auc']:.4f} | {s['train']} "
                     f"({s['train_load_before']} → {s['train_load_after']}) | {r['kept_epoch']} | "
                     f"{r['trainable_parameters']:,} / {r['total_parameters']:,} | {r['onnx_batch1_ms']:.3f} "
                     f"({r['torch_batch1_ms']:.3f}) | {r['onnx_batch1_speedup']:.2f}x |")
    for name, r in base_results.items():
        lines.append(f"| {name}, train + val rows ({r['rows']}) | {r['accuracy']:.4f} | {r['roc_auc']:.4f} | "
                     f"{r['train_seconds']} (fit only) | | | | |")
    lines += ["", "Floors: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in floors.items()) + "."]
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
