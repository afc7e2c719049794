"""The `torchcycle` command line. Heavy libraries (torch, mlflow, pandas…) are imported inside the
commands that need them so that `torchcycle --help` starts fast."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    help="torchcycle: versioned data to an explained, exported, registered PyTorch model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = typer.Option(Path("params.yaml"), "--params", "-p", help="params file (run from the project root)")


def _run(fn: Callable[[], Any]) -> Any:
    """Run a command; user-facing errors print as a message and exit code 2, without a traceback."""
    from torchcycle.errors import TorchcycleError
    from torchcycle.tracking.mlflow_run import disable_telemetry

    disable_telemetry()
    try:
        return fn()
    except TorchcycleError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None


def _stage(module: str, task: str, params_file: Path, **kwargs: Any) -> Any:
    import importlib

    from torchcycle.config import load_params

    def go() -> Any:
        params = load_params(params_file)
        params.task(task)
        stage = importlib.import_module(f"torchcycle.stages.{module}")
        return stage.run(params, task, params_file.resolve().parent, **kwargs)

    return _run(go)


HEADLINE_METRICS = ("accuracy", "roc_auc", "f1_macro", "log_loss", "rmse", "mae", "r2", "interval_coverage")


@app.command()
def ingest(task: str, params: Path = ParamsOption) -> None:
    """Read and validate the task's source; write data/raw/<task>/ and the validation report."""
    report = _stage("ingest", task, params)
    summary = report.get("summary", {})
    typer.echo(f"ingest@{task}: validation {report['status']}; rows/images: "
               f"{summary.get('rows', summary.get('images'))}")


@app.command()
def preprocess(task: str, params: Path = ParamsOption) -> None:
    """Split, fit preprocessing on the training split, write data/processed/<task>/."""
    counts = _stage("preprocess", task, params)
    typer.echo(f"preprocess@{task}: " + ", ".join(f"{k} {v['rows']}" for k, v in counts.items()))


@app.command()
def train(task: str, params: Path = ParamsOption,
          progress: bool = typer.Option(True, help="show a progress bar"),
          overfit_batches: int = typer.Option(
              0, help="sanity mode: fit this many fixed batches, report whether the loss reaches ~0, write nothing"
          )) -> None:
    """Train the task's model and track it in MLflow; write models/<task>/.

    Resumes from a checkpoint of the same params and data; under torchrun it trains with DDP."""
    out = _stage("train", task, params, progress=progress and sys.stderr.isatty(), overfit_batches=overfit_batches)
    if out.get("overfit"):
        verdict = "reached ~zero loss" if out["reached_zero"] else "did NOT reach ~zero loss: look for a bug"
        typer.echo(f"train@{task} overfit check on {out['batches']} batch(es): loss {out['first_loss']:.4f} -> "
                   f"{out['final_loss']:.4f} in {out['epochs']} epochs; {verdict}")
        raise typer.Exit(code=0 if out["reached_zero"] else 1)
    if out["run_id"] is not None:  # rank 0 (or a single process) reports
        kept = out["kept_epoch"]
        which = f"best epoch {kept}" if kept == out["best_epoch"] else f"kept the last epoch's weights ({kept})"
        typer.echo(f"train@{task}: {which}, MLflow run {out['run_id']}")


@app.command()
def tune(task: str, params: Path = ParamsOption,
         trials: int = typer.Option(None, help="number of trials; default: the task's tune.trials"),
         output: Path = typer.Option(None, help="where to write the best params (default reports/<task>/tune/)")) -> None:
    """Optuna search over the task's `tune.space` (params only, in memory); trials are MLflow child runs."""
    from torchcycle.config import load_params
    from torchcycle.tuning import search

    def go() -> dict:
        p = load_params(params)
        return search.run(p, task, params.resolve().parent, trials=trials, output=output)

    out = _run(go)
    typer.echo(f"tune@{task}: best {out['metric']} {out['best_value']:.5f} after {out['trials']} trials "
               f"(MLflow parent run {out['parent_run_id']}); best params written to {out['output']}")
    for key, value in out["best_params"].items():
        typer.echo(f"  {key}: {value}")


@app.command()
def evaluate(task: str, params: Path = ParamsOption) -> None:
    """Score the model on the test split; write reports/<task>/metrics.json, plots and figures."""
    m = _stage("evaluate", task, params)
    shown = [f"{k} {m[k]:.4f}" for k in HEADLINE_METRICS if isinstance(m.get(k), (int, float))]
    typer.echo(f"evaluate@{task}: " + "  ".join(shown))


@app.command()
def slices(task: str, params: Path = ParamsOption) -> None:
    """Per-slice metrics and group-fairness measures on the test split; write reports/<task>/slices.json."""
    r = _stage("slices", task, params)
    worst = r.get("largest_gap")
    gap = (f"; largest gap: {worst['column']}={worst['level']} {worst['metric']} {worst['gap']:+.4f}"
           if worst else "")
    typer.echo(f"slices@{task}: {r['slices']} slices over {', '.join(r['columns']) or 'no columns'}{gap}")


@app.command()
def explain(task: str, params: Path = ParamsOption) -> None:
    """SHAP (tabular), Grad-CAM (image) or integrated gradients (text) on the test split; write
    reports/<task>/explain/."""
    s = _stage("explain", task, params)
    if "additivity_error" in s:
        extra = f"additivity error {s['additivity_error']:.1e}"
    elif "mean_abs_convergence_delta" in s:
        extra = f"convergence delta {s['mean_abs_convergence_delta']:.1e}"
    else:
        extra = f"layer {s.get('layer', '')}"
    inputs = s.get("rows", s.get("images", s.get("texts_explained")))
    typer.echo(f"explain@{task}: {s['method']} on {inputs} test inputs in "
               f"{s['seconds']:.2f} s; {extra}")


@app.command()
def export(task: str, params: Path = ParamsOption) -> None:
    """ONNX export with a parity check on the test split and a runtime benchmark; write exports/<task>/."""
    r = _stage("export", task, params)
    b1 = r["benchmark"]["batch1"]
    typer.echo(f"export@{task}: parity max |Δ| {r['parity']['max_abs_diff']:.1e}; batch-1 latency torch "
               f"{b1['torch_ms']:.3f} ms vs onnxruntime {b1['onnxruntime_ms']:.3f} ms ({b1['speedup']:.1f}x)")


@app.command()
def register(task: str, params: Path = ParamsOption) -> None:
    """Register the exported model in the MLflow registry; move `champion` only on a clear improvement."""
    r = _stage("register", task, params)
    d = r["decision"]
    typer.echo(f"register@{task}: {r['registered_model']} version {r['version']} (challenger); "
               f"{'promoted to champion' if d['promoted'] else 'champion stays version ' + str(r['aliases']['champion'])}"
               f" — {d['reason']}")


@app.command()
def predict(
    task: str = typer.Option(..., "--task", "-t", help="task whose registered model to use"),
    input: Path = typer.Option(..., "--input", "-i", help="records (.csv/.parquet/.json) or an image file/folder"),
    output: Path | None = typer.Option(None, "--output", "-o", help="write predictions as CSV instead of printing"),
    alias: str = typer.Option("champion", help="registry alias to load"),
    params: Path = ParamsOption,
) -> None:
    """Predict with the registry's champion of torchcycle-<task>: a class with its probabilities, or a
    number with its prediction interval, per input."""
    from torchcycle.config import load_params

    def go() -> tuple[Any, dict]:
        from torchcycle.serving import load_registered
        from torchcycle.tracking.mlflow_run import configure

        configure(load_params(params), params.resolve().parent)
        predictor, info = load_registered(task, alias)
        return predictor.predict_path(input), info

    table, info = _run(go)
    if output is None:
        typer.echo(table.to_csv(index=False, float_format="%.6f"), nl=False)
    else:
        from torchcycle.atomic import atomic_path

        with atomic_path(output) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6f")
        typer.echo(f"{len(table)} prediction(s) written to {output}")
    typer.secho(f"model: {info['name']} version {info['version']} (@{info['alias']})", err=True)


@app.command("simulate-arrival")
def simulate_arrival(
    task: str,
    slices: int = typer.Option(4, help="the held-back data is released in this many batches ('months')"),
    params: Path = ParamsOption,
) -> None:
    """Drop the next batch of held-back real data into data/incoming/<task>/ for the retraining flow."""
    from torchcycle.config import load_params
    from torchcycle.data.batches import release_next
    from torchcycle.errors import TorchcycleError

    def go() -> tuple[int, list[Path]]:
        from torchcycle.kinds import kind_of

        cfg = load_params(params).task(task)
        try:
            return release_next(params.resolve().parent, task, slices, kind_of(cfg))
        except FileNotFoundError as exc:
            raise TorchcycleError(str(exc)) from None

    number, files = _run(go)
    if not number:
        typer.echo(f"all {slices} held-back batches of '{task}' have been released already")
        return
    typer.echo(f"released batch {number}/{slices} of '{task}': {len(files)} file(s) in data/incoming/{task}/")


@app.command()
def metrics(params: Path = ParamsOption) -> None:
    """Headline test metrics of every task (the full set: `dvc metrics show`)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from torchcycle.config import load_params
    from torchcycle.paths import TaskPaths

    p = _run(lambda: load_params(params))
    keys = ["accuracy", "f1_macro", "roc_auc", "log_loss", "rmse", "mae", "r2", "interval_coverage"]
    table = Table("task", *keys, title="test split")
    for name in p.tasks:
        file = TaskPaths(name, params.resolve().parent).metrics
        if not file.exists():
            table.add_row(name, *["not run"] + [""] * (len(keys) - 1))
            continue
        m = json.loads(file.read_text())
        table.add_row(name, *(f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "-" for k in keys))
    Console().print(table)


@app.command("check-params")
def check_params(params: Path = ParamsOption) -> None:
    """Validate params.yaml and list the tasks it defines."""
    from torchcycle.config import load_params

    p = _run(lambda: load_params(params))
    for name in p.tasks:
        cfg = p.task(name)
        typer.echo(f"{name}: {cfg.kind}, model {cfg.model.name}, {cfg.train.epochs} epochs")
    typer.echo(f"{params}: OK")


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
