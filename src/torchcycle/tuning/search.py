"""`torchcycle tune <task>`: an Optuna (TPE) search over the keys declared in the task's `tune.space`.

Trials only change params: each builds the model and trains it in memory on the processed splits that
the pipeline already wrote (no DVC run per trial), and is tracked as an MLflow child run under one
parent run. Trials that fall behind the median of earlier ones at the same epoch are pruned, which is
what makes a search of image models affordable on a laptop. The best params are printed and written as
YAML ready to paste into params.yaml, with a Markdown report of every trial.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from torchcycle.atomic import write_json, write_text
from torchcycle.config import Params
from torchcycle.errors import ConfigError, TrainingError
from torchcycle.paths import TaskPaths
from torchcycle.training.objectives import higher_is_better


class PruningCallback:
    """Reports the trial's best metric so far after every epoch and stops a trial Optuna would prune."""

    def __init__(self, trial: Any, metric: str, maximise: bool) -> None:
        self.trial, self.metric, self.maximise = trial, metric, maximise
        self.best: float | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        import optuna

        value = float(logs[self.metric])
        if self.best is None or (value > self.best if self.maximise else value < self.best):
            self.best = value
        self.trial.report(self.best, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric} {self.best:.5f} after {epoch} epochs is behind the median")


def apply_overrides(task_cfg: Any, overrides: dict[str, Any]) -> Any:
    """A validated copy of the task config with dotted keys (`model.dropout`) set; unknown keys fail."""
    raw = task_cfg.model_dump()
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"tune.space key '{dotted}': '{part}' is not a section")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"tune.space key '{dotted}': unknown key '{leaf}' (known: {sorted(node)})")
        node[leaf] = value
    return type(task_cfg).model_validate(raw)


def suggest(trial: Any, space: dict) -> dict[str, Any]:
    """One point of the search space (categorical choices that are lists are passed as JSON strings,
    because Optuna's choices must be primitives)."""
    out: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.type == "categorical":
            encoded = [json.dumps(c) if isinstance(c, (list, dict)) else c for c in dim.choices]
            value = trial.suggest_categorical(key, encoded)
            out[key] = json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value
        elif dim.type == "int":
            out[key] = trial.suggest_int(key, int(dim.low), int(dim.high), log=dim.log)
        else:
            out[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
    return out


def run(params: Params, task: str, root: Path, trials: int | None = None, output: Path | None = None) -> dict:
    import mlflow
    import optuna

    from torchcycle.artifacts import load_split, read_schema
    from torchcycle.kinds import kind_of
    from torchcycle.models.factory import build_model
    from torchcycle.targets import target_of
    from torchcycle.tracking import mlflow_run
    from torchcycle.training.loop import fit
    from torchcycle.training.reproducibility import configure_threads, seed_everything

    base = params.task(task)
    if base.tune is None or not base.tune.space:
        raise ConfigError(f"task '{task}' has no `tune.space` in params.yaml; declare the keys to search there.")
    tune = base.tune
    n_trials = trials or tune.trials
    paths = TaskPaths(task, root)
    train, val = load_split(paths, "train"), load_split(paths, "val")  # loaded once, reused by every trial
    schema = read_schema(paths)
    target = target_of(schema["target"])
    n_outputs = target.n_outputs(schema["target"])
    direction = "maximize" if higher_is_better(tune.metric) else "minimize"
    threads = configure_threads(base.train.num_threads)

    def objective(trial: Any) -> float:
        values = suggest(trial, tune.space)
        over = dict(values)
        if tune.epochs:
            over["train.epochs"] = tune.epochs
        over["train.checkpoint.enabled"] = False
        cfg = apply_overrides(base, over)
        seed_everything(params.seed)
        model = build_model(kind_of(cfg).model_spec(cfg, schema, train, n_outputs))
        parent_exp = mlflow.active_run().info.experiment_id  # children go to the parent's experiment
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, experiment_id=parent_exp,
                              tags={"task": task, "stage": "tune-trial"}):
            mlflow.log_params({**values, "trial": trial.number})
            start = time.perf_counter()
            pruning = [PruningCallback(trial, tune.metric, direction == "maximize")] if tune.prune_after else []
            try:
                result = fit(model, train, val, cfg.train, objective=target.objective(schema["target"], cfg.train),
                             seed=params.seed, progress=False,
                             callbacks=pruning)
            except TrainingError as exc:  # a diverging point is a bad point, not a failed search
                mlflow.set_tag("failure", str(exc))
                raise optuna.TrialPruned(str(exc)) from None
            except optuna.TrialPruned as exc:  # a finished run tagged `pruned`, not a failure
                mlflow.set_tag("pruned", str(exc))
                mlflow.log_metrics({tune.metric: pruning[0].best, "seconds": time.perf_counter() - start})
                pruned = exc
            else:
                pruned = None
                kept = result.history[result.kept_epoch - 1]  # the epoch whose weights the model ends with
                value = float(kept[tune.metric])
                mlflow.log_metrics({tune.metric: value, "best_epoch": result.best_epoch, "kept_epoch": result.kept_epoch,
                                    "seconds": time.perf_counter() - start,
                                    **{k: float(v) for k, v in kept.items() if k.startswith("val_")}})  # fmt: skip
        if pruned is not None:
            raise pruned
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tags = {"task": task, "stage": "tune", **mlflow_run.git_commit(root)}
    with mlflow_run.start_run(params, task, root, tags) as parent:
        mlflow.log_params({"trials": n_trials, "metric": tune.metric, "direction": direction, "threads": threads,
                           "space": json.dumps({k: v.model_dump(exclude_none=True) for k, v in tune.space.items()})})
        warmup = max(1, (tune.epochs or base.train.epochs) // 3)  # early epochs say little about the end
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=tune.prune_after, n_warmup_steps=warmup)
                  if tune.prune_after else optuna.pruners.NopPruner())  # fmt: skip
        study = optuna.create_study(direction=direction, pruner=pruner,
                                    sampler=optuna.samplers.TPESampler(seed=params.seed))
        study.enqueue_trial({k: _encode(v) for k, v in _current(base, tune.space).items()})  # today's defaults
        with _trial_progress(n_trials, tune.metric) as progress:
            study.optimize(objective, n_trials=n_trials, callbacks=[progress])
        best_params = {k: (json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v)
                       for k, v in study.best_trial.params.items()}
        mlflow.log_metric(f"best_{tune.metric}", study.best_value)
        mlflow.log_params({f"best.{k}": v for k, v in best_params.items()})

    out_dir = Path(output) if output else paths.reports / "tune"
    summary = {
        "task": task, "metric": tune.metric, "direction": direction, "best_value": study.best_value,
        "best_trial": study.best_trial.number, "trials": len(study.trials), "best_params": best_params,
        "baseline_value": study.trials[0].value, "parent_run_id": parent.info.run_id,
        "command": f"torchcycle tune {task} --trials {n_trials}", "seed": params.seed,
        "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
        "all_trials": [_trial_record(t) for t in study.trials],
    }  # fmt: skip
    write_json(out_dir / "best_params.json", summary)
    write_text(out_dir / "best_params.yaml", _as_yaml(task, best_params))
    write_text(out_dir / "report.md", report_markdown(summary))
    return {**summary, "output": str(out_dir / "best_params.yaml")}


def _trial_record(t: Any) -> dict[str, Any]:
    steps = t.intermediate_values
    return {"number": t.number, "value": t.value, "params": t.params, "state": t.state.name,
            "epochs_run": max(steps) if steps else None,
            "value_when_stopped": steps[max(steps)] if steps else None}  # fmt: skip


def report_markdown(summary: dict[str, Any]) -> str:
    """How the search went, in a form that can be committed next to the params it produced."""
    metric = summary["metric"]
    sign = -1.0 if summary["direction"] == "maximize" else 1.0  # best first; trials without a value last
    ranked = sorted(summary["all_trials"], key=lambda t: (t["value"] is None, sign * (t["value"] or 0.0)))
    lines = [
        f"# `{summary['command']}`", "",
        (f"Optuna TPE (sampler seed {summary['seed']}) over `{summary['task']}.tune.space` in params.yaml, median "
        f"pruning; trial 0 is the params.yaml values at the time. Objective: {metric} on the validation split of "
        f"the weights each run ends with (its best epoch, or its last one with `restore_best: false`); a pruned "
        f"trial shows its best value when it was stopped. MLflow parent run `{summary['parent_run_id']}` (trials are its child runs)."), "",
        f"- trials: {summary['trials']} ({summary['pruned']} pruned)",
        f"- trial 0 (starting params): {metric} {_fmt(summary['baseline_value'])}",
        f"- best: trial {summary['best_trial']}, {metric} {_fmt(summary['best_value'])}", "",
        "Best params (`best_params.yaml` next to this file):", "", "```yaml",
        *[f"{k}: {json.dumps(v)}" for k, v in summary["best_params"].items()], "```", "",
        f"| trial | state | {metric} | epochs | params |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for t in ranked:
        value = t["value"] if t["value"] is not None else t["value_when_stopped"]
        lines.append(f"| {t['number']} | {t['state'].lower()} | {_fmt(value)} | {t['epochs_run'] or ''} | "
                     f"{json.dumps(t['params'])} |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.5f}"


class _trial_progress:
    """A rich progress bar over trials with the best value so far (an Optuna study callback)."""

    def __init__(self, n_trials: int, metric: str) -> None:
        self.n_trials, self.metric = n_trials, metric

    def __enter__(self) -> _trial_progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("tune"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.description}"), transient=False)  # fmt: skip
        self.task = self.progress.add_task("", total=self.n_trials)
        self.progress.start()
        return self

    def __call__(self, study: Any, trial: Any) -> None:
        done = [t for t in study.trials if t.value is not None]
        best = f"best {self.metric} {study.best_value:.5f} (trial {study.best_trial.number})" if done else ""
        last = f"trial {trial.number} {trial.state.name.lower()}"
        self.progress.update(self.task, advance=1, description=f"{best}; {last}")

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _current(task_cfg: Any, space: dict) -> dict[str, Any]:
    raw = task_cfg.model_dump()
    out = {}
    for key in space:
        node = raw
        for part in key.split("."):
            node = node[part]
        out[key] = copy.deepcopy(node)
    return out


def _encode(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def _as_yaml(task: str, best: dict[str, Any]) -> str:
    """The best values nested as in params.yaml (`<task>: model: ...`)."""
    import yaml

    nested: dict[str, Any] = {}
    for key, value in best.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return yaml.safe_dump({task: nested}, sort_keys=False)
