"""Where each stage reads and writes, per task; one place so stages, flows and the dashboard agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TaskPaths:
    task: str
    root: Path = Path(".")

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw" / self.task

    @property
    def processed(self) -> Path:
        return self.root / "data" / "processed" / self.task

    @property
    def incoming(self) -> Path:
        """The drop zone of new data (files or <class>/<image> folders) the retraining flow checks."""
        return self.root / "data" / "incoming" / self.task

    @property
    def batches(self) -> Path:
        """Accepted batches, each versioned with DVC, appended by ingest."""
        return self.root / "data" / "batches" / self.task

    @property
    def quarantine(self) -> Path:
        """Rejected batches, each with the report saying what was wrong."""
        return self.root / "data" / "quarantine" / self.task

    @property
    def models(self) -> Path:
        return self.root / "models" / self.task

    @property
    def reports(self) -> Path:
        return self.root / "reports" / self.task

    # files inside those directories ------------------------------------------------------------
    @property
    def validation_report(self) -> Path:
        return self.reports / "validation.json"

    @property
    def validation_failed(self) -> Path:
        """Written instead of the validation report when validation fails (the last good data stays)."""
        return self.reports / "validation-failed.json"

    @property
    def data_report(self) -> Path:
        """The ingest stage's profile of the raw data (rows, target distribution, columns)."""
        return self.raw / "data_report.json"

    @property
    def splits(self) -> Path:
        return self.processed / "splits.json"

    @property
    def learning_curve(self) -> Path:
        return self.training / "learning_curve.csv"

    @property
    def drift(self) -> Path:
        """The latest drift report of new batches (JSON + PNG), written by the retraining flow."""
        return self.reports / "drift"

    @property
    def metrics(self) -> Path:
        return self.reports / "metrics.json"

    @property
    def evaluation(self) -> Path:
        """Plot data (CSV) of the evaluate stage, declared as DVC plots."""
        return self.reports / "evaluation"

    @property
    def figures(self) -> Path:
        """PNG figures of the evaluate stage, also logged to the MLflow run."""
        return self.reports / "figures"

    @property
    def predictions(self) -> Path:
        """Test-split predictions with probabilities, for galleries of misclassified examples."""
        return self.reports / "predictions.csv"

    @property
    def slices(self) -> Path:
        """Figures and the per-slice table of the slices stage."""
        return self.reports / "slices"

    @property
    def slices_report(self) -> Path:
        """Per-slice metrics and group-fairness measures on the test split (DVC metrics)."""
        return self.reports / "slices.json"

    @property
    def training(self) -> Path:
        """Learning curves written by the train stage."""
        return self.reports / "training"

    @property
    def weights(self) -> Path:
        return self.models / "model.pt"

    @property
    def model_config(self) -> Path:
        return self.models / "model_config.json"

    @property
    def run_info(self) -> Path:
        """The MLflow run that train opened; later stages reopen it by this id."""
        return self.models / "mlflow_run.json"

    @property
    def preprocessor(self) -> Path:
        return self.processed / "preprocessor.json"

    @property
    def schema(self) -> Path:
        return self.processed / "schema.json"

    @property
    def explain(self) -> Path:
        """SHAP or Grad-CAM outputs of the explain stage (tables, arrays, figures)."""
        return self.reports / "explain"

    @property
    def exported(self) -> Path:
        """The export stage's ONNX model (preprocessing state inside its metadata)."""
        return self.root / "exports" / self.task

    @property
    def onnx_model(self) -> Path:
        return self.exported / "model.onnx"

    @property
    def export_report(self) -> Path:
        """Parity and runtime benchmark of the ONNX model."""
        return self.reports / "export.json"

    @property
    def registry_report(self) -> Path:
        """The register stage's decision: version, both scores, rule, outcome."""
        return self.reports / "registry.json"

    def split(self, name: str) -> Path:
        return self.processed / f"{name}.npz"
