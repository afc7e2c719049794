"""The model card of a registered version: plain dicts in (what the stages wrote), Markdown out.

Pure: no file, MLflow or clock access here; `stages/register.py` gathers the context from the project's
files. Every section is always present, and a missing piece reads "not available" (or "not stated" for
what only a person can say, from `params.card`), so an incomplete pipeline still yields a card.
Numbers are formatted by `num` from the source dicts, so they can be checked against the files.

The context keys (all optional):
    task, registered_name, version, run_id, model_uri, card_uri, git (git_commit, git_dirty),
    kind (name of the kind of data), model_config (models/<task>/model_config.json), card (params.card
    entry: intended_use, limits, owners), validation (reports/<task>/validation.json), splits
    (data/processed/<task>/splits.json), data_version (DVC hashes), metrics (metrics.json), slices
    (slices.json), explain (explain/summary.json), export (export.json), decision (Decision.as_dict()).
"""

from __future__ import annotations

import math
from typing import Any

NA = "not available"
NOT_STATED = "not stated"
SECTIONS = (
    "Model",
    "Intended use and limits",
    "Data",
    "Evaluation",
    "Calibration",
    "Slices and fairness",
    "Explanations",
    "Export",
    "Promotion decision",
)
# metrics.json keys that are tables or other sections' material, not headline numbers
_NOT_HEADLINE = {"n_samples", "ece", "brier", "ece_before"}


# --------------------------------------------------------------------------- formatting
def num(x: Any) -> str:
    """4 decimals for ordinary magnitudes, 3 significant digits for tiny or huge ones, ints as ints."""
    if x is None:
        return NA
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return str(x)
    try:
        value = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        return f"{value:.4f}"
    return f"{value:.3g}"


def _d(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _level(level: Any) -> str:
    """A confidence level as a percentage: 0.95 -> 95%."""
    try:
        value = float(level)
    except (TypeError, ValueError):
        return "95%" if level is None else str(level)
    return f"{value * 100:g}%" if value <= 1 else f"{value:g}%"


def _cell(x: Any) -> str:
    text = num(x) if _is_number(x) or x is None else str(x)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def with_ci(name: str, value: Any, ci: dict | None) -> str:
    """`accuracy 0.8712 (95% CI 0.8660–0.8760)`, or the value alone when there is no interval."""
    text = f"{name} {num(value)}"
    ci = _d(ci)
    if ci.get("low") is not None and ci.get("high") is not None:
        samples = f", {ci['samples']} bootstrap samples" if ci.get("samples") else ""
        text += f" ({_level(ci.get('level'))} CI {num(ci['low'])}–{num(ci['high'])}{samples})"
    return text


# --------------------------------------------------------------------------- sections
def _model(c: dict) -> list[str]:
    config, target = _d(c.get("model_config")), _d(_d(c.get("model_config")).get("target"))
    spec = _d(config.get("spec"))
    version = c.get("version")
    lines = [
        f"- Task: {c.get('task') or NA}",
        f"- Registered model: {c.get('registered_name') or NA}, version {version if version is not None else NA}",
        f"- MLflow run: {c.get('run_id') or NA}",
        f"- Kind of data: {c.get('kind') or NA}",
        f"- Target type: {target.get('type') or NA}",
    ]
    if target.get("classes"):
        lines.append(f"- Classes: {', '.join(map(str, target['classes']))}")
    if target.get("positive_class") is not None:
        lines.append(f"- Positive class: {target['positive_class']}")
    if spec:
        flat = {}  # the spec's scalars and those of its nested mappings (e.g. the model's kwargs)
        for k, v in spec.items():
            flat.update(v if isinstance(v, dict) else {k: v})
        params = ", ".join(f"{k}={v}" for k, v in flat.items() if k != "name" and _short(v))
        lines.append(f"- Architecture: {spec.get('name', NA)}" + (f" ({params})" if params else ""))
    else:
        lines.append(f"- Architecture: {NA}")
    if config.get("best_epoch") is not None:
        lines.append(f"- Training: best epoch {config['best_epoch']} by {config.get('monitor', NA)} "
                     f"{num(config.get('best_score'))}; kept epoch {config.get('kept_epoch', NA)}")
    git = _d(c.get("git"))
    if git.get("git_commit"):
        dirty = " (uncommitted changes)" if git.get("git_dirty") == "true" else ""
        lines.append(f"- Code: git commit {git['git_commit']}{dirty}")
    return lines


def _short(v: Any) -> bool:
    """Spec entries worth a line: scalars and short lists (not embedded states or long vocabularies)."""
    if isinstance(v, (str, int, float, bool)):
        return len(str(v)) <= 60
    return isinstance(v, (list, tuple)) and len(v) <= 8 and all(isinstance(x, (str, int, float, bool)) for x in v)


def _intended(c: dict) -> list[str]:
    card = _d(c.get("card"))
    limits = [str(x) for x in card.get("limits") or []]
    owners = [str(x) for x in card.get("owners") or []]
    lines = [f"- Intended use: {card.get('intended_use') or NOT_STATED}", "- Limits:" if limits else
             f"- Limits: {NOT_STATED}"]
    lines += [f"  - {x}" for x in limits]
    lines.append(f"- Owners: {', '.join(owners) if owners else NOT_STATED}")
    return lines


def _data(c: dict) -> list[str]:
    summary = _d(_d(c.get("validation")).get("summary"))
    files, versions, splits = _d(summary.get("files")), _d(c.get("data_version")), _d(c.get("splits"))
    lines = []
    if summary.get("target"):
        lines.append(f"- Target column: {summary['target']}")
    if files:
        lines.append("- Sources: " + "; ".join(f"{k}: {v}" for k, v in files.items()))
    else:
        lines.append(f"- Sources: {NA}")
    if versions:
        lines.append("- DVC versions: " + "; ".join(f"{k.removeprefix('data_version_')} {v}" for k, v in versions.items()))
    else:
        lines.append(f"- DVC versions: {NA}")
    if splits:
        lines.append("- Split sizes (rows): " + ", ".join(f"{k} {_d(v).get('rows', v if _is_number(v) else NA)}"
                                                         for k, v in splits.items()))
    else:
        lines.append(f"- Split sizes: {NA}")
    return lines


def _evaluation(c: dict) -> list[str]:
    metrics = _d(c.get("metrics"))
    cis = _d(metrics.get("confidence_intervals"))
    headline = [k for k, v in metrics.items() if (_is_number(v) or v is None) and k not in _NOT_HEADLINE
                and not k.startswith("interval_")]
    if not headline:
        return [NA]
    lines = []
    if _is_number(metrics.get("n_samples")):
        lines.append(f"Test split, {metrics['n_samples']} rows.")
        lines.append("")
    lines += [f"- {with_ci(k, metrics[k], cis.get(k))}" for k in headline]
    return lines


def _calibration(c: dict) -> list[str]:
    metrics = _d(c.get("metrics"))
    cal, threshold = _d(metrics.get("calibration")), _d(metrics.get("threshold"))
    cis = _d(metrics.get("confidence_intervals"))
    lines = []
    if cal:
        binning = f"{cal.get('ece_bins', NA)} {cal.get('binning') or ''} bins".replace("  ", " ")
        temperature = f" (temperature {num(cal['temperature'])})" if _is_number(cal.get("temperature")) else ""
        lines.append(f"- Method: {cal.get('method') or NA}{temperature}; ECE over {binning}")
        before, after = _d(cal.get("before")), _d(cal.get("after"))
        keys = [k for k in ("ece", "brier", "log_loss") if k in before or k in after]
        keys += [k for k in {**before, **after} if k not in keys]
        if keys:
            lines.append("")
            lines += _table(["measure", "before", "after"], [[k, before.get(k), after.get(k)] for k in keys])
            lines.append("")
    for key in ("ece", "brier"):
        if key in metrics:
            lines.append(f"- Test {with_ci(key.upper() if key == 'ece' else 'Brier score', metrics[key], cis.get(key))}")
    if threshold:
        lines.append(f"- Threshold: {num(threshold.get('value'))} (objective {threshold.get('objective', NA)}); "
                     f"accuracy at it {num(threshold.get('accuracy_at_threshold'))} vs at 0.5 "
                     f"{num(threshold.get('accuracy_at_0.5'))}")
        others = [f"{name} {num(threshold[f'{name}_at_threshold'])} vs {num(threshold.get(f'{name}_at_0.5'))}"
                  for name in ("balanced_accuracy", "f1") if f"{name}_at_threshold" in threshold]
        if others:
            lines.append(f"  - at the threshold vs at 0.5: {', '.join(others)}")
    interval = {k: metrics[k] for k in ("interval_nominal_coverage", "interval_coverage", "interval_mean_width")
                if k in metrics}
    if interval:
        lines.append(f"- Prediction intervals: nominal coverage {num(interval.get('interval_nominal_coverage'))}, "
                     f"test coverage {num(interval.get('interval_coverage'))}, "
                     f"mean width {num(interval.get('interval_mean_width'))}")
    return lines or [NA]


def _slices(c: dict) -> list[str]:
    s = _d(c.get("slices"))
    rows = [r for r in s.get("slices") or [] if isinstance(r, dict)]
    fairness, largest = _d(s.get("fairness")), s.get("largest_gap")
    if not rows and not fairness:
        return [NA]
    lines = []
    if s.get("columns"):
        lines.append(f"Slice columns: {', '.join(map(str, s['columns']))}; levels with fewer than "
                     f"{s.get('min_rows', NA)} test rows are not reported on their own.")
        lines.append("")
    overall = _d(s.get("overall"))
    names = list(overall) or list(dict.fromkeys(k for r in rows for k in _d(r.get("metrics"))))
    if overall:
        lines.append("Overall: " + ", ".join(f"{k} {num(v)}" for k, v in overall.items()))
        lines.append("")
    if rows:
        header = ["column", "level", "rows"] + [x for m in names for x in (m, f"gap {m}")]
        lines += _table(header, [[r.get("column"), r.get("level"), r.get("rows")]
                                 + [x for m in names for x in (_d(r.get("metrics")).get(m), _d(r.get("gap")).get(m))]
                                 for r in rows])
        lines.append("")
    if s.get("skipped"):
        skipped = [f"{x.get('column')}={x.get('level')} ({x.get('rows', NA)} rows)" if isinstance(x, dict) else str(x)
                   for x in s["skipped"]]
        lines.append(f"- Not reported (too few rows): {'; '.join(skipped)}")
    if fairness:
        lines.append("- Fairness differences by column:")
        for column, f in fairness.items():
            f = _d(f)
            lines.append(f"  - {column}: demographic parity difference {num(f.get('demographic_parity_difference'))}, "
                         f"equalized odds difference {num(f.get('equalized_odds_difference'))}")
    else:
        lines.append(f"- Fairness differences: {NA}")
    if isinstance(largest, dict) and largest:
        lines.append(f"- Largest gap: {largest.get('column', NA)}={largest.get('level', NA)}, "
                     f"{largest.get('metric', NA)} gap {num(largest.get('gap'))}")
    else:
        lines.append("- Largest gap: none")
    return lines


def _explanations(c: dict) -> list[str]:
    e = _d(c.get("explain"))
    if not e:
        return [NA]
    scalars = {k: v for k, v in e.items() if k != "top_features" and (_is_number(v) or isinstance(v, str))}
    lines = ["- " + ", ".join(f"{k} {num(v) if _is_number(v) else v}" for k, v in scalars.items())] if scalars else []
    top = [t for t in e.get("top_features") or [] if isinstance(t, dict) and t]
    if top:
        cols = list(dict.fromkeys(k for t in top for k in t))
        lines += [*([""] if lines else []), "Top features:", "", *_table(cols, [[t.get(k) for k in cols] for t in top])]
    return lines or [NA]


def _export(c: dict) -> list[str]:
    x = _d(c.get("export"))
    if not x:
        return [NA]
    lines = []
    for label, key in (("Parity from raw input (records → preprocessing → ONNX Runtime)", "parity_from_raw_input"),
                       ("Parity of the graph (torch vs ONNX Runtime)", "parity")):
        p = _d(x.get(key))
        if p:
            verdict = "passed" if p.get("passed") else "failed"
            detail = ", ".join(f"{k} {num(v)}" for k, v in p.items() if k != "passed")
            lines.append(f"- {label}: {verdict} ({detail})")
        else:
            lines.append(f"- {label}: {NA}")
    b1 = _d(_d(x.get("benchmark")).get("batch1"))
    if b1:
        lines.append(f"- Batch-1 latency: torch {num(b1.get('torch_ms'))} ms, ONNX Runtime "
                     f"{num(b1.get('onnxruntime_ms'))} ms (speedup {num(b1.get('speedup'))}x)")
    else:
        lines.append(f"- Batch-1 latency: {NA}")
    lines.append(f"- ONNX file: {num(x['onnx_bytes'])} bytes" + (f", opset {x['opset']}" if x.get("opset") else "")
                 if x.get("onnx_bytes") is not None else f"- ONNX file: {NA}")
    return lines


def _decision(c: dict) -> list[str]:
    d = _d(c.get("decision"))
    if not d:
        return [NA]
    lines = [
        f"- Rule: {d.get('rule', NA)}",
        f"- Challenger (version {d.get('challenger_version', NA)}): {d.get('metric', NA)} {num(d.get('challenger_score'))}",
    ]
    if d.get("champion_version") is not None:
        source = f" ({d['champion_score_source']})" if d.get("champion_score_source") else ""
        lines.append(f"- Champion (version {d['champion_version']}): {d.get('metric', NA)} "
                     f"{num(d.get('champion_score'))}{source}")
    else:
        lines.append("- Champion: none (first version)")
    gates = [g for g in d.get("gates") or [] if isinstance(g, dict)]
    if gates:
        lines += ["", *_table(["gate", "value", "limit", "verdict", "detail"],
                              [[g.get("name"), g.get("value"), g.get("limit"), g.get("verdict", NA),
                                g.get("detail", "")] for g in gates]), ""]
    else:
        lines.append("- Gates: none configured")
    outcome = d.get("promoted")
    lines.append(f"- Outcome: {NA if outcome is None else ('promoted to champion' if outcome else 'not promoted')}")
    lines.append(f"- Reason: {d.get('reason', NA)}")
    lines += [f"- Warning: {w}" for w in d.get("warnings") or []]
    return lines


_BUILDERS = (_model, _intended, _data, _evaluation, _calibration, _slices, _explanations, _export, _decision)


def build_card(context: dict[str, Any]) -> str:
    """The model card in Markdown: a title, then every section of SECTIONS in order."""
    c = _d(context)
    name, version = c.get("registered_name") or c.get("task") or "model", c.get("version")
    out = [f"# Model card: {name}" + (f" version {version}" if version is not None else ""), ""]
    for title, build in zip(SECTIONS, _BUILDERS, strict=True):
        try:
            body = build(c)
        except Exception as exc:  # malformed input: the card still comes out, saying what went wrong
            body = [f"{NA} ({type(exc).__name__}: {exc})"]
        out += [f"## {title}", "", *body, ""]
    return "\n".join(out).rstrip() + "\n"


def summary(context: dict[str, Any], card_uri: str | None = None) -> str:
    """A few lines for the registry's model-version description."""
    c = _d(context)
    d, metrics = _d(c.get("decision")), _d(c.get("metrics"))
    metric = d.get("metric")
    target_type = _d(_d(c.get("model_config")).get("target")).get("type") or NA
    parts = [f"torchcycle {c.get('task') or 'model'}: {c.get('kind') or NA} data, {target_type} target."]
    if metric:
        parts.append(with_ci(str(metric), d.get("challenger_score", metrics.get(metric)),
                             _d(metrics.get("confidence_intervals")).get(metric)) + " on the test split.")
    if d:
        gates = d.get("gates") or []
        verdicts = ", ".join(f"{g.get('name')} {g.get('verdict')}" for g in gates if isinstance(g, dict))
        parts.append(("Promoted to champion" if d.get("promoted") else "Not promoted") + f": {d.get('reason', NA)}."
                     + (f" Gates: {verdicts}." if verdicts else ""))
    if card_uri:
        parts.append(f"Model card: {card_uri}")
    return "\n".join(parts)
