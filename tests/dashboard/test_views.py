"""The dashboard's kind and target views on their own (no trained project): the form's inputs by column
type (dates get a date input), what happened to each column, how a prediction reads per target type, and
that no page branches on the kind of data or the target type."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[2]


def _form_with_a_date_column() -> None:
    from types import SimpleNamespace

    import pandas as pd
    import streamlit as st

    from torchcycle.kinds.tabular import dashboard as view
    from torchcycle.kinds.tabular.preprocess import fit_tabular

    train = pd.DataFrame({"size": [50.0, 80.0, 120.0], "sold": ["2020-01-05", "2021-06-30", "2022-03-01"],
                          "city": ["Ghent", "Leuven", "Ghent"]})
    cfg = SimpleNamespace(numeric_missing="median", scaling="standard", categorical_missing="category",
                          min_category_count=1, max_categories=None)
    state = fit_tabular(train, ["size"], ["city"], cfg, ["sold"])
    page = SimpleNamespace(task="houses", model=SimpleNamespace(predictor=SimpleNamespace(state=state)),
                           data=SimpleNamespace(raw_test=lambda task: (train.iloc[[1]], None)))
    record = view.form(page)
    if record is not None:
        st.session_state["record"] = record
        st.session_state["inputs"] = view.transform_tabular(pd.DataFrame([record]), state)[0].tolist()


def test_the_form_has_a_date_input_for_a_date_column() -> None:
    at = AppTest.from_function(_form_with_a_date_column, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [w.key for w in at.number_input] == ["num_size"]
    assert [w.key for w in at.selectbox] == ["cat_city"]
    (date,) = at.date_input
    assert date.key == "date_sold" and date.value.isoformat() == "2021-06-30", "pre-filled from a test row"
    assert "2020-01-05 – 2022-03-01" in date.help, "the training dates"
    date.set_value(date.value.replace(year=2022, month=1, day=1))
    at.button[0].click().run()
    assert at.session_state["record"] == {"size": 80.0, "sold": "2022-01-01", "city": "Leuven"}
    assert len(at.session_state["inputs"][0]) == 6, "one number plus five derived from the date"


def _column_roles() -> None:
    from types import SimpleNamespace

    from torchcycle.kinds.tabular import dashboard as view

    validation = {"summary": {"columns": {
        "price": {"role": "target", "detail": "regression"},
        "carat": {"role": "numeric", "detail": "imputed (median), scaled (standard)"},
        "listing_id": {"role": "dropped", "detail": "ID-like (near-unique integers in sorted order, like a row "
                                                     "number); list it in `source.features` to keep it"},
    }}}
    report = {"numeric": ["carat"], "categorical": [], "dates": [], "dropped": {"listing_id": "ID-like"}}
    page = SimpleNamespace(data=SimpleNamespace(read=lambda path: validation),
                           paths=SimpleNamespace(validation_report="validation.json"))
    view.column_roles(page, report)


def test_the_data_page_says_what_happened_to_each_column() -> None:
    at = AppTest.from_function(_column_roles, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "What happened to each column (3 columns)" in at.expander[0].label
    table = at.dataframe[0].value.set_index("column")
    assert table.loc["listing_id", "role"] == "dropped" and "ID-like" in table.loc["listing_id", "detail"]
    assert table.loc["price", "role"] == "target"


def test_a_prediction_reads_by_target_type() -> None:
    from dashboards import targets

    regression = {"type": "regression", "name": "price", "coverage": 0.9}
    sentence = targets.view("regression").sentence(np.array([3912.4, 3100.2, 4899.7]), regression)
    assert sentence == "price ≈ **3,912** (90% interval 3,100 – 4,900)"
    verdict = targets.view("regression").verdict(5000.0, np.array([3912.4, 3100.2, 4899.7]), regression)
    assert verdict.startswith("Actual price **5,000**") and verdict.endswith("outside the interval.")
    classification = {"type": "classification", "classes": ["<=50K", ">50K"]}
    assert targets.view("classification").sentence(np.array([0.25, 0.75]), classification) == "**>50K** (75.0%)"
    assert "— correct." in targets.view("classification").verdict(">50K", np.array([0.25, 0.75]), classification)
    groups = targets.view("regression").groups(pd.Series(np.arange(1.0, 101.0)))
    assert groups.nunique() == 4, "a number is coloured by its quartiles"


def test_no_page_branches_on_the_kind_or_the_target_type() -> None:
    """What differs by kind lives in torchcycle.kinds.<kind>.dashboard, what differs by target type in
    dashboards/targets.py's lookup table; nothing in the dashboard reads the stages."""
    comparison = re.compile(r"""(==|!=|\bin\b)\s*[\(\[{]?\s*["'](tabular|image|classification|regression)["']""")
    files = [*(REPO / "dashboards").rglob("*.py"), *(REPO / "src" / "torchcycle" / "kinds").glob("*/dashboard.py")]
    for file in files:
        text = file.read_text()
        assert "torchcycle.stages" not in text, file
        assert not comparison.search(text), (file, comparison.search(text))


# --------------------------------------------------------------------------- the stages' reports
SLICES = {
    "columns": ["sex", "race"], "min_rows": 30,
    "overall": {"roc_auc": 0.925, "accuracy": 0.871, "log_loss": 0.279},
    "slices": [
        {"column": "sex", "level": "Female", "rows": 5421, "metrics": {"roc_auc": 0.944, "accuracy": 0.936,
         "log_loss": 0.163}, "gap": {"roc_auc": 0.019, "accuracy": 0.065, "log_loss": -0.116}},
        {"column": "sex", "level": "Male", "rows": 10860, "metrics": {"roc_auc": 0.915, "accuracy": 0.839,
         "log_loss": 0.336}, "gap": {"roc_auc": -0.010, "accuracy": -0.032, "log_loss": 0.057}},
        {"column": "race", "level": "Asian-Pac-Islander", "rows": 480, "metrics": {"roc_auc": 0.902,
         "accuracy": 0.85, "log_loss": None}, "gap": {"roc_auc": -0.023, "accuracy": -0.021, "log_loss": None}},
    ],
    "skipped": [{"column": "race", "level": "Other", "rows": 12}],
    "fairness": {"sex": {"demographic_parity_difference": 0.2098, "equalized_odds_difference": 0.0975,
                         "by_group": {"Female": {"selection_rate": 0.112, "true_positive_rate": 0.695,
                                                 "false_positive_rate": 0.041, "rows": 5421},
                                      "Male": {"selection_rate": 0.322, "true_positive_rate": 0.750,
                                               "false_positive_rate": 0.138, "rows": 10860}}}},
    "largest_gap": {"column": "race", "level": "Asian-Pac-Islander", "metric": "roc_auc", "gap": -0.023},
}  # fmt: skip


def test_confidence_intervals_read_next_to_a_metric() -> None:
    from dashboards import reports

    ci = {"low": 0.86627, "high": 0.8755006, "level": 0.95, "samples": 200}
    assert reports.ci_text(ci) == "95% CI 0.866–0.876"
    assert reports.with_ci("0.871", ci) == "0.871 (95% CI 0.866–0.876)"
    assert reports.with_ci("0.871", None) == "0.871"
    assert reports.ci_text({"low": None, "high": 0.9}) is None
    assert reports.ci_text({"low": 3100.4, "high": 4900.2, "level": 0.9}, lambda v: f"{v:,.0f}") == "90% CI 3,100–4,900"


def test_slice_tables_and_the_largest_gap() -> None:
    from dashboards import reports

    assert reports.slice_metrics(SLICES) == ["roc_auc", "accuracy", "log_loss"]
    assert reports.slice_columns(SLICES) == ["sex", "race"]
    table = reports.slice_rows(SLICES, "sex")
    assert list(table.columns) == ["level", "rows", "roc_auc", "gap roc_auc", "accuracy", "gap accuracy",
                                   "log_loss", "gap log_loss"]
    assert table["level"].tolist() == ["Female", "Male"] and table["rows"].tolist() == [5421, 10860]
    assert table.loc[1, "gap accuracy"] == -0.032
    race = reports.slice_rows(SLICES, "race")
    assert len(race) == 1 and "log_loss" not in race.columns, "undefined on every level of race"
    assert reports.slice_rows(SLICES, "age").empty
    assert reports.skipped_text(SLICES, "race") == "Not reported (fewer than 30 test rows): Other (12 rows)."
    assert reports.skipped_text(SLICES, "sex") is None
    assert reports.largest_gap_text(SLICES) == ("Largest gap: **race = Asian-Pac-Islander**: roc_auc 0.902, "
                                                "0.023 below the overall 0.925.")
    assert reports.largest_gap_text({**SLICES, "largest_gap": None}) is None
    assert [reports.short(v) for v in (0.86564, 0.01183, 2914.26, None)] == ["0.8656", "0.01183", "2,914", "–"]
    assert reports.short(0.016, signed=True) == "+0.016" and reports.short(-1190.9, signed=True) == "-1,191"
    rates = reports.fairness_rows(SLICES, "sex").set_index("level")
    assert rates.loc["Male", "selection_rate"] == 0.322 and rates.loc["Female", "rows"] == 5421
    assert reports.fairness_rows(SLICES, "race").empty


def test_a_gap_is_coloured_by_whether_the_slice_does_worse() -> None:
    from dashboards import reports

    assert reports.WORSE in reports.gap_colour(-0.03, higher_is_better=True)
    assert reports.BETTER in reports.gap_colour(0.03, higher_is_better=True)
    assert reports.WORSE in reports.gap_colour(0.05, higher_is_better=False), "a higher log loss is worse"
    assert reports.gap_colour(None, True) == reports.gap_colour(0.0, True) == ""


def test_a_versions_decision_and_gates_from_its_tags() -> None:
    from dashboards import reports

    tags = {"decision.promoted": "false", "decision.reason": "gate(s) failed: max_ece", "decision.metric": "roc_auc",
            "decision.champion_version": "none", "decision.challenger_score": "0.925000",
            "decision.warnings": "gate a failed | gate b failed",
            "gate.max_ece.value": "0.051234", "gate.max_ece.limit": "0.03", "gate.max_ece.passed": "false",
            "gate.max_ece.verdict": "fail", "gate.max_ece.detail": "ECE 0.051234 > limit 0.03",
            "gate.max_slice_drop.value": "none", "gate.max_slice_drop.limit": "0.05",
            "gate.max_slice_drop.passed": "true", "gate.max_slice_drop.verdict": "skipped",
            "test_split": "abc", "score.roc_auc": "0.925"}  # fmt: skip
    decision = reports.decision_from_tags(tags)
    assert decision["promoted"] is False and decision["reason"] == "gate(s) failed: max_ece"
    assert decision["champion_version"] is None and decision["challenger_score"] == 0.925
    assert decision["warnings"] == ["gate a failed", "gate b failed"]
    gates = reports.gates_frame(decision["gates"]).set_index("gate")
    assert gates.loc["max_ece", "value"] == 0.051234 and gates.loc["max_ece", "limit"] == 0.03
    assert gates.loc["max_ece", "verdict"] == "fail" and gates.loc["max_slice_drop", "verdict"] == "skipped"
    assert pd.isna(gates.loc["max_slice_drop", "value"])
    assert reports.decision_from_tags({"test_split": "abc"}) is None, "registered before decisions were tagged"
    assert reports.decision_text(decision, "3").startswith("**v3** stayed a challenger: gate(s) failed")


def test_calibration_and_threshold_tables() -> None:
    from dashboards import targets

    cal = {"method": "temperature", "temperature": 1.2345, "before": {"ece": 0.0118, "brier": 0.178, "log_loss": 0.280},
           "after": {"ece": 0.0047, "brier": 0.177, "log_loss": 0.279}}
    assert targets.calibration_method(cal) == "temperature scaling (T = 1.234)"
    assert targets.calibration_method({"method": "none"}) == "no calibration"
    table = targets.calibration_table(cal).set_index("measure")
    assert list(table.index) == ["ece", "brier", "log_loss"]
    assert table.loc["ece", "change"] == pytest.approx(0.0047 - 0.0118)
    rule = {"objective": "f1", "value": 0.389, "accuracy_at_threshold": 0.862, "accuracy_at_0.5": 0.871,
            "f1_at_threshold": 0.718, "f1_at_0.5": 0.702, "balanced_accuracy_at_threshold": 0.821,
            "balanced_accuracy_at_0.5": 0.792}
    at = targets.threshold_table(rule).set_index("metric")
    assert list(at.index) == ["accuracy", "f1", "balanced accuracy"]
    assert at.loc["f1", "at the threshold"] == 0.718 and at.loc["f1", "at 0.5"] == 0.702
    reliability = pd.DataFrame({"confidence": [0.5, 0.9], "accuracy_before": [0.52, 0.88],
                                "accuracy_after": [0.51, 0.9], "count_before": [448, 0], "count_after": [492, 10]})
    lines = targets.reliability_frame(reliability)
    assert lines.groupby("series").size().to_dict() == {"after calibration": 2, "before calibration": 1}, \
        "an empty bin is no point"


def _model_sections() -> None:
    import pandas as pd
    from dashboards import reports, targets

    from tests.dashboard.test_views import SLICES

    metrics = {"ece": 0.0047, "ece_before": 0.0118,
               "confidence_intervals": {"ece": {"low": 0.0031, "high": 0.0062, "level": 0.95, "samples": 200}},
               "calibration": {"method": "temperature", "temperature": 1.2, "ece_bins": 15,
                               "binning": "equal-width top-label confidence",
                               "before": {"ece": 0.0118, "brier": 0.178, "log_loss": 0.280},
                               "after": {"ece": 0.0047, "brier": 0.177, "log_loss": 0.279}},
               "threshold": {"objective": "f1", "value": 0.38894, "accuracy_at_threshold": 0.862,
                             "accuracy_at_0.5": 0.871, "f1_at_threshold": 0.718, "f1_at_0.5": 0.702}}
    reliability = pd.DataFrame({"confidence": [0.5, 0.9], "accuracy_before": [0.52, 0.88],
                                "accuracy_after": [0.51, 0.9], "count_before": [448, 20], "count_after": [492, 10]})
    targets.view("classification").calibration(metrics, {"reliability": reliability}, "a test", ">50K")
    reports.slices_section(SLICES, lambda m: m != "log_loss", "a test")
    card = "# Model card: m version 2\n\n## Evaluation\n\n- accuracy 0.8713\n"
    decision = {"promoted": True, "reason": "first version", "gates": [
        {"name": "max_ece", "value": 0.0047, "limit": 0.05, "verdict": "pass", "detail": "ok"}], "warnings": []}
    reports.registration_section({"version": "2", "decision": decision, "card": card}, "v2")
    reports.registration_section({"version": "1", "decision": None, "card": None}, "v1")


def test_the_model_sections_draw_the_reports() -> None:
    at = AppTest.from_function(_model_sections, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    markdown = "\n".join(str(m.value) for m in at.markdown)
    assert "**0.0118 → 0.0047** (95% CI 0.0031–0.0062 after) with temperature scaling (T = 1.200)" in markdown
    assert "Decision threshold **0.389** on P(>50K)" in markdown
    assert "Largest gap: **race = Asian-Pac-Islander**" in "\n".join(str(w.value) for w in at.warning)
    assert at.selectbox(key="slice_column").options == ["sex", "race"]
    assert at.selectbox(key="slice_metric").value == "roc_auc", "the largest gap's metric first"
    shown = {m.label: m.value for m in at.metric}
    assert shown["demographic parity difference"] == "0.210" and shown["equalized odds difference"] == "0.098"
    sexes = [df.value for df in at.dataframe if "level" in df.value.columns and "Female" in set(df.value["level"])]
    assert sexes, "the slices of sex"
    assert "## Evaluation" in markdown and "**v2** was promoted to champion: first version." in markdown
    gates = next(df.value for df in at.dataframe if "gate" in df.value.columns)
    assert gates.loc[0, "verdict"] == "pass"
    assert "v1 has no model card" in "\n".join(str(i.value) for i in at.info)
    at.selectbox(key="slice_column").set_value("race").run()
    assert not at.exception
    assert "Not reported (fewer than 30 test rows): Other (12 rows)." in "\n".join(str(c.value) for c in at.caption)
    assert "demographic parity difference" not in {m.label for m in at.metric}, "no fairness measures for race"
    assert "Undefined on every slice of race, so not shown: log_loss." in "\n".join(str(c.value) for c in at.caption)
    assert at.selectbox(key="slice_metric").options == ["roc_auc", "accuracy"]
