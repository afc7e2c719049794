"""What a page hands the parts of the dashboard that differ by the kind of data.

Those parts live next to the kind, in `torchcycle.kinds.<kind>.dashboard`, and are found by module
lookup (`kind_view`), so no page branches on the kind. Each such module provides:

- `predict(page)`: the Predict page's input (a form, an upload), the prediction and its explanation;
- `explain(page, summary)`: the Explain page (summary: the explain stage's summary.json, or None);
- `data_summary(page, report)`: the Data page's summary of the raw data (report: data_report.json);
- `examples(page, table)`: the Model page's worst test examples (table: one row per example, indexed by
  test row, with `actual`, `predicted` and the target type's own columns).

They get a `Page` rather than importing this package, so the library does not depend on the app:
`page.data` and `page.ui` are the dashboard's cached store access and house-style charts, `page.target`
the view of the task's target type (dashboards.targets: how a prediction or a distribution is shown).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from dashboards import data, targets, ui
from torchcycle.paths import TaskPaths


@dataclass
class Page:
    task: str
    model: data.Served | None  # the model predictions and explanations come from, if any
    target: Any  # the target type's view (dashboards.targets)
    data: ModuleType = data
    ui: ModuleType = ui

    @property
    def paths(self) -> TaskPaths:
        return data.paths(self.task)

    @property
    def target_state(self) -> dict:
        """The served model's fitted target (classes, or the target's name, scale and interval)."""
        return self.model.predictor.target_state

    def predict_one(self, frame: Any) -> Any:
        """The served model's outputs for one raw record, announced and timed the way every Predict page
        opens; None when the record is bad (its message is shown instead)."""
        import time

        import streamlit as st

        from torchcycle.errors import PredictionInputError

        start = time.perf_counter()
        try:
            outputs = self.model.predictor.outputs(frame)[0]
        except PredictionInputError as exc:
            st.error(str(exc))
            return None
        st.success(f"Prediction: {self.target.sentence(outputs, self.target_state)}")
        st.caption(f"ONNX Runtime: {(time.perf_counter() - start) * 1e3:.1f} ms")
        return outputs


def page(task: str, model: data.Served | None = None, target_type: str | None = None) -> Page:
    """A page's context: the served model's target type, else `target_type`, else the task's."""
    name = model.predictor.target_state["type"] if model else target_type or data.target_type(task)
    return Page(task, model, targets.view(name) if name else None)


def kind_view(task: str) -> ModuleType:
    """The dashboard module of the task's kind of data: `<the kind's package>.dashboard`."""
    return importlib.import_module(f"{type(data.kind(task)).__module__}.dashboard")
