"""train@<task>: build the model from params, train it, track it in MLflow, and write models/<task>/
(state_dict, model config, MLflow run id) and the learning curve, atomically."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from torchcycle.atomic import atomic_dir, read_json, write_json
from torchcycle.config import Params
from torchcycle.models.factory import build_model, model_spec
from torchcycle.paths import TaskPaths
from torchcycle.stages.common import load_split
from torchcycle.tracking import mlflow_run
from torchcycle.training.loop import fit
from torchcycle.training.reproducibility import configure_threads, seed_everything


class MlflowEpochLogger:
    def __init__(self, mlflow) -> None:
        self.mlflow = mlflow

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.mlflow.log_metrics({k: v for k, v in logs.items() if k != "epoch" and v == v}, step=epoch)


def run(params: Params, task: str, root: Path, progress: bool = True) -> dict:
    import mlflow

    cfg = params.task(task)
    paths = TaskPaths(task, root)
    seed_everything(params.seed)
    threads = configure_threads(cfg.train.num_threads)
    train, val = load_split(paths, "train"), load_split(paths, "val")
    schema = read_json(paths.schema)
    spec = model_spec(cfg, schema, train.inputs)
    model = build_model(spec)
    n_classes = len(schema["classes"])

    tags = {"task": task, "stage": "train", **mlflow_run.git_commit(root), **mlflow_run.data_version(task, root)}
    with mlflow_run.start_run(params, task, root, tags) as run:
        mlflow.log_params(_flat(cfg.model_dump(), prefix=""))
        mlflow.log_params({"seed": params.seed, "threads": threads, "train_rows": len(train), "val_rows": len(val),
                           "n_parameters": sum(p.numel() for p in model.parameters())})
        result = fit(model, train, val, cfg.train, n_classes=n_classes, seed=params.seed,
                     callbacks=[MlflowEpochLogger(mlflow)], progress=progress)
        for note in result.notes:
            print(note)
        mlflow.log_metrics({"best_epoch": result.best_epoch, f"best_{result.monitor}": result.best_score})
        history = pd.DataFrame(result.history)
        with atomic_dir(paths.models) as tmp:
            torch.save(model.state_dict(), tmp / "model.pt")
            write_json(tmp / "model_config.json", {
                "task": task, "spec": spec, "classes": schema["classes"], "best_epoch": result.best_epoch,
                "monitor": result.monitor, "best_score": result.best_score, "stopped_early": result.stopped_early,
            })  # fmt: skip
            mlflow_run.save_run_info(paths, run, directory=tmp)
        with atomic_dir(paths.training) as tmp:
            history.to_csv(tmp / "learning_curve.csv", index=False)
        mlflow.log_artifact(str(paths.training / "learning_curve.csv"), artifact_path="training")
    return {"run_id": run.info.run_id, "best_epoch": result.best_epoch, "best_score": result.best_score}


def _flat(d: dict, prefix: str) -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out
