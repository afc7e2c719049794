"""The model card (torchcycle.model_card): every section in order, numbers that read back as the source
files' numbers, and "not available" (never a crash) when a piece is missing or malformed."""

from __future__ import annotations

import re

import pytest

from torchcycle.model_card import NA, NOT_STATED, SECTIONS, build_card, num, summary

NUMBER = r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"

METRICS = {
    "accuracy": 0.871234, "balanced_accuracy": 0.781, "f1_macro": 0.80123, "roc_auc": 0.912345,
    "log_loss": 0.29871, "n_samples": 16281, "ece": 0.021234, "brier": 0.09321, "ece_before": 0.04567,
    "per_class": {"<=50K": {"precision": 0.9}, ">50K": {"precision": 0.7}}, "confusion_matrix": [[1, 2], [3, 4]],
    "calibration": {"method": "temperature", "ece_bins": 15, "binning": "equal-width", "temperature": 1.4321,
                    "before": {"ece": 0.04567, "brier": 0.0988, "log_loss": 0.3123},
                    "after": {"ece": 0.021234, "brier": 0.09321, "log_loss": 0.29871}},
    "threshold": {"objective": "balanced_accuracy", "value": 0.3712, "accuracy_at_threshold": 0.8512,
                  "accuracy_at_0.5": 0.8712, "f1_at_threshold": 0.7012, "f1_at_0.5": 0.6523},
    "confidence_intervals": {
        "accuracy": {"low": 0.866012, "high": 0.876498, "level": 0.95, "samples": 1000},
        "roc_auc": {"low": 0.9071, "high": 0.9175, "level": 0.95, "samples": 1000},
        "ece": {"low": 0.0171, "high": 0.0262, "level": 0.95, "samples": 1000},
    },
}  # fmt: skip
SLICES = {
    "columns": ["sex", "race"], "min_rows": 30,
    "overall": {"accuracy": 0.871234, "roc_auc": 0.912345},
    "slices": [
        {"column": "sex", "level": "Female", "rows": 5421, "metrics": {"accuracy": 0.9234, "roc_auc": 0.9012},
         "gap": {"accuracy": 0.052166, "roc_auc": -0.011145}},
        {"column": "sex", "level": "Male", "rows": 10860, "metrics": {"accuracy": 0.8451, "roc_auc": 0.8976},
         "gap": {"accuracy": -0.026134, "roc_auc": -0.014745}},
        {"column": "race", "level": "Other", "rows": 135, "metrics": {"accuracy": 0.9111, "roc_auc": None},
         "gap": {"accuracy": 0.039866, "roc_auc": None}},
    ],
    "skipped": [{"column": "race", "level": "Amer-Indian-Eskimo", "rows": 12}],
    "fairness": {"sex": {"demographic_parity_difference": 0.1712, "equalized_odds_difference": 0.0923, "by_group": {}},
                 "race": {"demographic_parity_difference": 0.1034, "equalized_odds_difference": 0.2345}},
    "largest_gap": {"column": "sex", "level": "Female", "metric": "accuracy", "gap": 0.052166},
}  # fmt: skip
EXPORT = {
    "onnx_bytes": 123456, "opset": 17,
    "parity": {"rows": 16281, "max_abs_diff": 2.3e-07, "tolerance": 1e-4, "class_mismatches": 0, "passed": True},
    "parity_from_raw_input": {"rows": 16281, "max_abs_diff": 3.1e-07, "tolerance": 1e-4, "class_mismatches": 0,
                              "passed": True},
    "benchmark": {"batch1": {"torch_ms": 0.4123, "onnxruntime_ms": 0.0512, "speedup": 8.0527}},
}  # fmt: skip
EXPLAIN = {"kind": "tabular", "method": "deep", "rows": 500, "top_features": [
    {"feature": "relationship", "mean_abs_shap": 0.61234, "share": 0.2312},
    {"feature": "capital_gain", "mean_abs_shap": 0.40012, "share": 0.1511},
]}  # fmt: skip
DECISION = {
    "metric": "roc_auc", "higher_is_better": True, "margin": 0.001, "challenger_version": "3",
    "challenger_score": 0.912345, "champion_version": "2", "champion_score": 0.9101,
    "champion_score_source": "recorded on the same test split", "promoted": False,
    "reason": "gate(s) failed: max_ece (0.021234 > limit 0.01); the champion stays",
    "rule": "promote if roc_auc (higher is better) improves ... and every gate passes (max_ece 0.01)",
    "gates": [{"name": "max_ece", "value": 0.021234, "limit": 0.01, "passed": False, "skipped": False,
               "verdict": "fail", "detail": "ECE 0.021234 > limit 0.01"},
              {"name": "max_fairness_difference", "value": 0.2345, "limit": 0.3, "passed": True, "skipped": False,
               "verdict": "pass", "detail": "largest: equalized_odds_difference over race"}],
    "warnings": [],
}  # fmt: skip
CONTEXT = {
    "task": "adult", "registered_name": "torchcycle-adult", "version": "3", "run_id": "abc123", "kind": "tabular",
    "git": {"git_commit": "deadbeef", "git_dirty": "false"},
    "model_config": {"spec": {"name": "mlp", "kwargs": {"hidden_sizes": [128, 64], "dropout": 0.1,
                                                         "state": {"a": 3}, "cardinalities": list(range(20))}},
                     "target": {"type": "classification", "classes": ["<=50K", ">50K"], "positive_class": ">50K"},
                     "best_epoch": 7, "monitor": "val_roc_auc", "best_score": 0.9071, "kept_epoch": 7},
    "card": {"intended_use": "Teaching.", "limits": ["1994 data.", "Not for decisions about people."], "owners": []},
    "validation": {"summary": {"files": {"train": "adult.data.gz", "test": "adult.test.gz"}, "target": "income"}},
    "splits": {"train": {"rows": 29305}, "val": {"rows": 3256}, "test": {"rows": 16281}},
    "data_version": {"data_version_raw": "1a2b3c.dir", "data_version_processed": "4d5e6f.dir"},
    "metrics": METRICS, "slices": SLICES, "explain": EXPLAIN, "export": EXPORT, "decision": DECISION,
}  # fmt: skip


def section(card: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", card, re.M | re.S)
    assert match, f"no section {title!r} in:\n{card}"
    return match.group(1)


def table_rows(text: str, first_header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header starts with `first_header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def close(text: str, value: float) -> bool:
    return float(text) == pytest.approx(value, rel=1e-3, abs=5e-5)


@pytest.fixture(scope="module")
def card() -> str:
    return build_card(CONTEXT)


def test_every_section_in_order(card) -> None:
    positions = [card.index(f"\n## {title}\n") for title in SECTIONS]
    assert positions == sorted(positions) and card.startswith("# Model card: torchcycle-adult version 3")
    model = section(card, "Model")
    for text in ("adult", "torchcycle-adult, version 3", "tabular", "classification", "mlp", "hidden_sizes=[128, 64]",
                 "deadbeef", "abc123"):
        assert text in model
    assert "dropout=0.1" in model and "state" not in model and "cardinalities" not in model  # not "key params"
    intended = section(card, "Intended use and limits")
    assert "Teaching." in intended and "  - Not for decisions about people." in intended
    assert f"Owners: {NOT_STATED}" in intended
    data = section(card, "Data")
    assert "adult.test.gz" in data and "raw 1a2b3c.dir" in data and "processed 4d5e6f.dir" in data
    assert "train 29305, val 3256, test 16281" in data


def test_evaluation_numbers_and_intervals_match_metrics(card) -> None:
    text = section(card, "Evaluation")
    found = {m.group(1): m for m in re.finditer(
        rf"^- (\w+) {NUMBER}(?: \((\d+)% CI {NUMBER}–{NUMBER}, (\d+) bootstrap samples\))?$", text, re.M)}
    assert set(found) == {"accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss"}
    for name, m in found.items():
        assert close(m.group(2), METRICS[name])
        ci = METRICS["confidence_intervals"].get(name)
        if ci:
            assert m.group(3) == "95" and close(m.group(4), ci["low"]) and close(m.group(5), ci["high"])
            assert int(m.group(6)) == ci["samples"]
        else:
            assert m.group(3) is None
    assert "accuracy 0.8712 (95% CI 0.8660–0.8765, 1000 bootstrap samples)" in text
    assert "16281 rows" in text


def test_calibration_numbers_match_metrics(card) -> None:
    text = section(card, "Calibration")
    assert "Method: temperature (temperature 1.4321)" in text and "15 equal-width bins" in text
    assert "f1 0.7012 vs 0.6523" in text
    rows = {r[0]: r[1:] for r in table_rows(text, "measure")}
    for key in ("ece", "brier", "log_loss"):
        assert close(rows[key][0], METRICS["calibration"]["before"][key])
        assert close(rows[key][1], METRICS["calibration"]["after"][key])
    ece = re.search(rf"Test ECE {NUMBER} \(95% CI {NUMBER}–{NUMBER}", text)
    assert ece and close(ece.group(1), METRICS["ece"]) and close(ece.group(2), 0.0171)
    assert close(re.search(rf"Brier score {NUMBER}", text).group(1), METRICS["brier"])
    t = re.search(rf"Threshold: {NUMBER} .*accuracy at it {NUMBER} vs at 0.5 {NUMBER}", text)
    assert [float(t.group(i)) for i in (1, 2, 3)] == pytest.approx([0.3712, 0.8512, 0.8712], abs=5e-5)


def test_regression_calibration_is_interval_coverage() -> None:
    metrics = {"rmse": 521.61, "mae": 270.2, "r2": 0.9812, "interval_coverage": 0.9034,
               "interval_mean_width": 1432.5, "interval_nominal_coverage": 0.9}
    card = build_card({"metrics": metrics})
    text = section(card, "Calibration")
    m = re.search(rf"nominal coverage {NUMBER}, test coverage {NUMBER}, mean width {NUMBER}", text)
    assert [float(m.group(i)) for i in (1, 2, 3)] == pytest.approx([0.9, 0.9034, 1432.5])
    evaluation = section(card, "Evaluation")
    assert "- rmse 521.6100" in evaluation and "interval_coverage" not in evaluation


def test_slices_and_fairness_match_slices_json(card) -> None:
    text = section(card, "Slices and fairness")
    rows = table_rows(text, "column")
    assert len(rows) == len(SLICES["slices"])
    for row, s in zip(rows, SLICES["slices"]):
        assert row[:3] == [s["column"], s["level"], str(s["rows"])]
        cells = dict(zip(["accuracy", "gap accuracy", "roc_auc", "gap roc_auc"], row[3:]))
        for metric in ("accuracy", "roc_auc"):
            for cell, value in ((cells[metric], s["metrics"][metric]), (cells[f"gap {metric}"], s["gap"][metric])):
                assert cell == NA if value is None else close(cell, value)
    for column, f in SLICES["fairness"].items():
        m = re.search(rf"{column}: demographic parity difference {NUMBER}, equalized odds difference {NUMBER}", text)
        assert close(m.group(1), f["demographic_parity_difference"]) and close(m.group(2), f["equalized_odds_difference"])
    largest = re.search(rf"Largest gap: sex=Female, accuracy gap {NUMBER}", text)
    assert close(largest.group(1), 0.052166)
    assert "Amer-Indian-Eskimo" in text  # the skipped level is named


def test_explanations_and_export_match(card) -> None:
    text = section(card, "Explanations")
    rows = table_rows(text, "feature")
    assert [r[0] for r in rows] == ["relationship", "capital_gain"]
    assert close(rows[0][1], 0.61234) and close(rows[1][2], 0.1511)
    export = section(card, "Export")
    b1 = EXPORT["benchmark"]["batch1"]
    m = re.search(rf"torch {NUMBER} ms, ONNX Runtime {NUMBER} ms \(speedup {NUMBER}x\)", export)
    assert [float(m.group(i)) for i in (1, 2, 3)] == pytest.approx([b1["torch_ms"], b1["onnxruntime_ms"],
                                                                   b1["speedup"]], abs=5e-5)
    raw = re.search(rf"Parity from raw input.*: passed \(.*max_abs_diff {NUMBER}", export)
    assert float(raw.group(1)) == pytest.approx(3.1e-7, rel=1e-2)
    assert "123456 bytes, opset 17" in export


def test_an_image_summary_is_listed_as_it_comes() -> None:
    summary_json = {"kind": "image", "method": "gradcam", "layer": "features.3", "images": 200, "examples": 6,
                    "misclassified_examples": 2}
    text = section(build_card({"explain": summary_json}), "Explanations")
    assert "method gradcam" in text and "layer features.3" in text and "misclassified_examples 2" in text


def test_promotion_decision_lists_every_gate(card) -> None:
    text = section(card, "Promotion decision")
    gates = {r[0]: r for r in table_rows(text, "gate")}
    assert set(gates) == {"max_ece", "max_fairness_difference"}
    assert close(gates["max_ece"][1], 0.021234) and close(gates["max_ece"][2], 0.01) and gates["max_ece"][3] == "fail"
    assert gates["max_fairness_difference"][3] == "pass"
    assert "Outcome: not promoted" in text and "gate(s) failed: max_ece" in text
    assert re.search(rf"Challenger \(version 3\): roc_auc {NUMBER}", text)
    assert "Champion (version 2): roc_auc 0.9101 (recorded on the same test split)" in text


@pytest.mark.parametrize("context", [
    {},
    {"task": "x"},
    {"metrics": "garbage", "slices": {"slices": None, "fairness": None}, "export": {"benchmark": None},
     "decision": {"gates": None}, "model_config": {"spec": None, "target": None}, "card": None},
    {"metrics": {"accuracy": None}, "slices": {"slices": [{"column": "a"}]}, "explain": {"top_features": [{}]}},
])  # fmt: skip
def test_missing_inputs_say_not_available(context) -> None:
    card = build_card(context)
    for title in SECTIONS:
        body = section(card, title)
        expected = NOT_STATED if title == "Intended use and limits" else NA
        assert expected in body, f"{title}: {body!r}"


def test_summary_and_number_format() -> None:
    text = summary(CONTEXT, "runs:/abc123/model_card/model_card.md")
    assert "roc_auc 0.9123 (95% CI 0.9071–0.9175" in text and "max_ece fail" in text
    assert text.endswith("Model card: runs:/abc123/model_card/model_card.md")
    assert summary({}) and num(None) == NA and num(3) == "3" and num(0.5) == "0.5000" and num(2.3e-7) == "2.3e-07"
