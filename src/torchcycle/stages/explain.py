"""explain@<task>: explanations of the trained model on the test split (SHAP for tables, Grad-CAM for
images: the kind of data decides), written to reports/<task>/explain/ in one atomic swap and logged to
the training run."""

from __future__ import annotations

from pathlib import Path

from torchcycle.artifacts import load_model
from torchcycle.atomic import atomic_dir, write_json
from torchcycle.config import Params
from torchcycle.kinds import kind_of
from torchcycle.paths import TaskPaths
from torchcycle.tracking import mlflow_run


def run(params: Params, task: str, root: Path) -> dict:
    import mlflow

    cfg = params.task(task)
    paths = TaskPaths(task, root)
    model, config = load_model(paths.models)
    summary, write = kind_of(cfg).explain(params, paths, model, config["target"])
    with atomic_dir(paths.explain) as tmp:
        write(tmp)
        write_json(tmp / "summary.json", summary)
    with mlflow_run.reopen_run(params, paths, root):
        mlflow.log_metrics({f"explain_{k}": float(v) for k, v in summary.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        for file in sorted(p for p in paths.explain.rglob("*") if p.is_file()):
            if params.tracking.log_figures or file.suffix != ".png":  # figures only when asked for
                rel = file.parent.relative_to(paths.explain)
                mlflow.log_artifact(str(file), artifact_path=str(Path("explain", rel)))
    return summary
