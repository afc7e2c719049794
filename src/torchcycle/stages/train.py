"""train@<task>: build the model from params, train it, track it in MLflow, and write models/<task>/
(state_dict, model config, MLflow run id) and the learning curve, atomically.

Training resumes from `<train.checkpoint.dir>/<task>/` when a checkpoint for the same params and data
exists. Under torchrun the same command trains with DistributedDataParallel; only rank 0 talks to
MLflow and writes files. A diverged run raises before anything is written and its MLflow run ends FAILED.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from torchcycle.artifacts import load_split, read_schema
from torchcycle.atomic import atomic_dir, write_json
from torchcycle.config import Params
from torchcycle.errors import TrainingError
from torchcycle.kinds import kind_of
from torchcycle.models.factory import build_model
from torchcycle.paths import TaskPaths
from torchcycle.targets import target_of
from torchcycle.tracking import mlflow_run
from torchcycle.training import distributed
from torchcycle.training.checkpoint import Checkpointer, params_key
from torchcycle.training.loop import fit, predict_outputs
from torchcycle.training.reproducibility import configure_threads, seed_everything

OVERFIT_LOSS = 0.05  # "about zero" for the overfit-a-few-batches sanity mode
OVERFIT_MIN_EPOCHS = 200


class MlflowEpochLogger:
    def __init__(self, mlflow) -> None:
        self.mlflow = mlflow

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.mlflow.log_metrics({k: v for k, v in logs.items() if k != "epoch" and v == v}, step=epoch)


def checkpointer_for(params: Params, task: str, root: Path) -> Checkpointer | None:
    cfg = params.task(task)
    ck = cfg.train.checkpoint
    if not ck.enabled:
        return None
    paths = TaskPaths(task, root)
    key = params_key(params.seed, cfg.model.model_dump(), cfg.train.model_dump(),
                     [paths.split("train"), paths.split("val"), paths.schema])
    return Checkpointer(root / ck.dir / task, key, ck.every_steps)


def run(params: Params, task: str, root: Path, progress: bool = True, overfit_batches: int | None = None) -> dict:
    cfg = params.task(task)
    if overfit_batches:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"overfit_batches": overfit_batches})})
    if cfg.train.overfit_batches:
        return overfit_check(params, cfg, task, root, progress)
    ctx = distributed.init_from_env(cfg.train.distributed, cfg.train.device)
    try:
        return _train(params, cfg, task, root, progress, ctx)
    finally:
        distributed.shutdown(ctx)


def _train(params: Params, cfg, task: str, root: Path, progress: bool, ctx: distributed.DistContext) -> dict:
    paths = TaskPaths(task, root)
    seed_everything(params.seed)
    threads = configure_threads(cfg.train.num_threads)
    train, val = load_split(paths, "train"), load_split(paths, "val")
    schema = read_schema(paths)
    target = target_of(schema["target"])
    spec = kind_of(cfg).model_spec(cfg, schema, train, target.n_outputs(schema["target"]))
    model = build_model(spec)
    objective = target.objective(schema["target"], cfg.train)
    checkpointer = checkpointer_for(params, task, root)

    def go(callbacks: list) -> object:
        return fit(model, train, val, cfg.train, objective=objective, seed=params.seed, callbacks=callbacks,
                   progress=progress, checkpointer=checkpointer, dist=ctx)

    if not ctx.is_main:  # other ranks train and leave tracking and outputs to rank 0
        result = go([])
        return {"run_id": None, "best_epoch": result.best_epoch, "best_score": result.best_score}

    import mlflow

    tags = {"task": task, "stage": "train", **mlflow_run.git_commit(root), **mlflow_run.data_version(task, root)}
    interrupted = checkpointer.saved_run_id() if checkpointer is not None else None
    with mlflow_run.start_run(params, task, root, tags) as run:
        if checkpointer is not None:
            checkpointer.run_id = run.info.run_id
        if interrupted:
            mlflow_run.close_interrupted(interrupted, successor=run.info.run_id)
            mlflow.set_tag("resumed_from_run", interrupted)
        mlflow.log_params(_flat(cfg.model_dump(exclude={"tune"}), prefix=""))
        mlflow.log_params({"seed": params.seed, "threads": threads, "train_rows": len(train), "val_rows": len(val),
                           "n_parameters": sum(p.numel() for p in model.parameters()),
                           "n_trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                           "world_size": ctx.world})
        try:
            result = go([MlflowEpochLogger(mlflow)])
        except TrainingError as exc:
            mlflow.set_tag("failure", str(exc))
            raise
        if result.resumed_from:
            mlflow.set_tag("resumed_from", f"epoch {result.resumed_from['epoch']} step {result.resumed_from['step']}")
            print(f"resumed from checkpoint at epoch {result.resumed_from['epoch']}, "
                  f"step {result.resumed_from['step']}")
        for note in result.notes:
            print(note)
        mlflow.log_metrics({"best_epoch": result.best_epoch, f"best_{result.monitor}": result.best_score,
                            "kept_epoch": result.kept_epoch})
        history = pd.DataFrame(result.history)
        model.to("cpu")
        spec = inference_spec(model, spec)
        # what is fitted on the validation split once the weights are final (a probability calibration and
        # decision threshold, or prediction intervals)
        target_state = target.calibrate(schema["target"], predict_outputs(model, val), val.y.numpy(), cfg.train)
        mlflow.log_params({f"target.{k}": v for k, v in target_state.items() if isinstance(v, (int, float, str))})
        with atomic_dir(paths.models) as tmp:
            torch.save(model.state_dict(), tmp / "model.pt")
            write_json(tmp / "model_config.json", {
                "task": task, "spec": spec, "target": target_state, "classes": target_state.get("classes"),
                "best_epoch": result.best_epoch,
                "kept_epoch": result.kept_epoch, "monitor": result.monitor, "best_score": result.best_score,
                "stopped_early": result.stopped_early,
            })  # fmt: skip
            mlflow_run.save_run_info(paths, run, directory=tmp)
        with atomic_dir(paths.training) as tmp:
            history.to_csv(tmp / "learning_curve.csv", index=False)
        mlflow.log_artifact(str(paths.learning_curve), artifact_path="training")
    if checkpointer is not None:
        checkpointer.clear()  # the model is written; a rerun with the same params starts afresh
    return {"run_id": run.info.run_id, "best_epoch": result.best_epoch, "best_score": result.best_score,
            "kept_epoch": result.kept_epoch, "resumed_from": result.resumed_from}  # fmt: skip


def overfit_check(params: Params, cfg, task: str, root: Path, progress: bool) -> dict:
    """Sanity mode: train on a few fixed batches (no shuffling, augmentation or early stopping) and
    report whether the loss reaches about zero. A model or pipeline that cannot memorise a batch has
    a bug. Writes nothing and tracks nothing."""
    paths = TaskPaths(task, root)
    seed_everything(params.seed)
    configure_threads(cfg.train.num_threads)
    train = load_split(paths, "train")
    schema = read_schema(paths)
    target = target_of(schema["target"])
    model = build_model(kind_of(cfg).model_spec(cfg, schema, train, target.n_outputs(schema["target"])))
    # an "epoch" here is one pass over the few batches, so give it enough passes to memorise them
    tcfg = cfg.train.model_copy(update={"label_smoothing": 0.0, "epochs": max(cfg.train.epochs, OVERFIT_MIN_EPOCHS)})
    result = fit(model, train, train.take(cfg.train.overfit_batches * cfg.train.batch_size), tcfg,
                 objective=target.objective(schema["target"], tcfg), seed=params.seed, progress=progress)
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    reached = last < OVERFIT_LOSS
    return {"overfit": True, "batches": cfg.train.overfit_batches, "first_loss": first, "final_loss": last,
            "reached_zero": reached, "epochs": len(result.history)}  # fmt: skip


def inference_spec(model: torch.nn.Module, spec: dict) -> dict:
    """The spec of the model as it is saved: a model trained with adapters (LoRA) merges them into its
    weights first, so what is stored, exported and served is one plain network."""
    merge = getattr(model, "merge_adapters", None)
    if merge is None:
        return spec
    return {**spec, "kwargs": {**spec["kwargs"], **merge()}}


def _flat(d: dict, prefix: str) -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out
