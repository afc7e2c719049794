"""What the dashboard shows for tables: a form generated from the preprocessing state (numbers, dates,
categories) and a CSV batch upload on Predict, SHAP on Explain, columns and their distributions on Data,
rows on the Model page.

Only the dashboard imports this module (it renders with Streamlit); it gets what it needs from the page
(`dashboards.context.Page`): the served model, the target type's view, cached store access and charts.
Predictions go through `serving.Predictor` and explanations through `torchcycle.kinds.tabular.shap`, with
the served version's own preprocessing state.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from torchcycle.errors import PredictionInputError
from torchcycle.kinds.tabular.preprocess import column_types, feature_names, input_columns, transform_tabular

MAX_CSV_BYTES = 20 * 1024 * 1024
MAX_ROWS = 100_000


# =========================================================================== Predict
def predict(page: Any) -> None:
    form_tab, batch_tab = st.tabs(["One row", "CSV batch"])
    with form_tab:
        record = form(page)
        if record is not None:
            one_row(page, record)
    with batch_tab:
        batch(page)


def form(page: Any) -> dict | None:
    """One input per raw column (a number, a date or a category), pre-filled with the first test row;
    the record once submitted, else None."""
    state = page.model.predictor.state
    numeric = {c["name"]: c for c in state["numeric"]}
    raw = page.data.raw_test(page.task)
    example = raw[0].iloc[0] if raw is not None else None
    record: dict = {}
    with st.form("predict_form"):
        cols = st.columns(3)
        for n, (name, kind) in enumerate(column_types(state).items()):
            given = example.get(name) if example is not None else None
            given = None if given is None or pd.isna(given) else given
            record[name] = FIELDS[kind](cols[n % 3], name, given, state, numeric)
        submitted = st.form_submit_button("Predict", type="primary")
    return record if submitted else None


def _number(col: Any, name: str, given: Any, state: dict, numeric: dict) -> float:
    spec = numeric[name]
    lo, hi = spec["min"], spec["max"]
    default = given if given is not None else spec["fill"]
    return col.number_input(f"{name} ({lo:g} – {hi:g})", value=float(default), key=f"num_{name}",
                            help=f"training range {lo:g} – {hi:g}")


def _date(col: Any, name: str, given: Any, state: dict, numeric: dict) -> str | None:
    first, last = date_range(name, state)
    parsed = _parse_date(given)
    value = col.date_input(name, value=parsed or last or first, key=f"date_{name}", min_value=dt.date(1900, 1, 1),
                           max_value=dt.date(2200, 12, 31),
                           help=f"training dates {first} – {last}" if first and last else None)
    return value.isoformat() if value else None  # as a CSV or a JSON client writes it


def _category(col: Any, name: str, given: Any, state: dict, numeric: dict) -> str:
    spec = next(c for c in state["categorical"] if c["name"] == name)
    options = list(spec["categories"])
    default = str(given) if given is not None else None
    return col.selectbox(name, options, index=options.index(default) if default in options else 0, key=f"cat_{name}")


FIELDS = {"numeric": _number, "date": _date, "categorical": _category}


def date_range(name: str, state: dict) -> tuple[dt.date | None, dt.date | None]:
    """The first and last training date of a date column (from its reference day and 'days since')."""
    spec = next((d for d in state.get("dates", []) if d["name"] == name), None)
    days = next((c for c in state["numeric"] if c["name"] == f"{name}.days_since_reference"), None)
    if spec is None:
        return None, None
    first = dt.date.fromisoformat(spec["reference"])
    return first, (first + dt.timedelta(days=int(days["max"])) if days else None)


def _parse_date(value: Any) -> dt.date | None:
    from torchcycle.kinds.tabular.columns import parse_dates

    if value is None:
        return None
    parsed = parse_dates(pd.Series([value], dtype=object)).iloc[0]
    return None if pd.isna(parsed) else parsed.date()


def one_row(page: Any, record: dict) -> None:
    state = page.model.predictor.state
    problems = range_problems(record, state)
    if problems:
        st.error("Out of the training range — the model has never seen such values, so no prediction is "
                 "made:\n\n" + "\n".join(f"- {p}" for p in problems))
        return
    for name in (d["name"] for d in state.get("dates", [])):
        first, last = date_range(name, state)
        if record[name] and first and last and not first.isoformat() <= record[name] <= last.isoformat():
            st.warning(f"**{name}** = {record[name]} lies outside the training dates {first} – {last}; the "
                       "prediction extrapolates.")
    frame = pd.DataFrame([record])
    outputs = page.predict_one(frame)
    if outputs is None:
        return
    left, right = st.columns([1, 2])
    with left:
        page.target.details(outputs, page.target_state)
    with right:
        from torchcycle.explain import plots as XP

        shap = local_shap(page, frame)
        page.ui.pyplot(XP.waterfall(shap.values, shap.expected, shap.features.iloc[0], "Why: local SHAP of this row",
                                    output_name=shap.output_name))


def range_problems(record: dict, state: dict) -> list[str]:
    """Form numbers outside the training range, as sentences (dates are checked separately)."""
    out = []
    for spec in state["numeric"]:
        v = record.get(spec["name"])
        if "date" not in spec and v is not None and not (spec["min"] <= v <= spec["max"]):
            out.append(f"**{spec['name']}** = {v:g} is outside the training range {spec['min']:g} – {spec['max']:g}")
    return out


def batch(page: Any) -> None:
    predictor = page.model.predictor
    state = predictor.state
    st.markdown(f"Upload a CSV with the columns {', '.join(f'`{c}`' for c in input_columns(state))}"
                f" (at most {MAX_CSV_BYTES // 2**20} MB).")
    upload = st.file_uploader("CSV file", type=["csv"], key="predict_csv")
    if upload is None:
        return
    try:
        records, notes = read_csv(upload.name, upload.getvalue(), state, predictor.target_state.get("name"))
        result = predictor.predict(records)
    except PredictionInputError as exc:
        st.error(str(exc))
        return
    for note in notes:
        st.info(note)
    out = pd.concat([records.reset_index(drop=True), result], axis=1)
    outside = out_of_range(records, state)
    if not outside.empty:
        flags = np.zeros(len(records), bool)
        for spec in _plain_numbers(state):
            v = pd.to_numeric(records[spec["name"]], errors="coerce").to_numpy()
            flags |= (v < spec["min"]) | (v > spec["max"])
        out["outside_training_range"] = flags
        st.warning(f"{int(flags.sum())} row(s) hold values outside the training range; their predictions are "
                   "extrapolations (flagged in the column `outside_training_range`).")
        st.dataframe(outside, hide_index=True)
    st.success(f"{len(out)} row(s) predicted by {page.model.label}.")
    st.dataframe(out.head(200), hide_index=True)
    st.download_button("Download predictions (CSV)", out.to_csv(index=False).encode(),
                       file_name=f"{page.task}_predictions.csv", mime="text/csv", key="predict_download")


def read_csv(name: str, blob: bytes, state: dict, target: str | None) -> tuple[pd.DataFrame, list[str]]:
    """The uploaded CSV as raw records with exactly the model's columns (a target column is dropped);
    read by the CLI's own reader so both parse a file the same way. Returns (records, notes)."""
    from torchcycle.kinds.tabular import read_records

    _check_size(name, len(blob))
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "upload.csv"
        file.write_bytes(blob)
        try:
            frame = read_records(file)
        except PredictionInputError as exc:
            raise PredictionInputError(f"{name}: {str(exc).split(': ', 1)[-1]}") from None
    if frame.empty:
        raise PredictionInputError(f"{name} holds no rows.")
    if len(frame) > MAX_ROWS:
        raise PredictionInputError(f"{name} has {len(frame)} rows; the limit is {MAX_ROWS}.")
    notes = []
    if target and target in frame.columns:
        frame = frame.drop(columns=[target])
        notes.append(f"the target column '{target}' was ignored")
    needed = input_columns(state)
    missing = [c for c in needed if c not in frame.columns]
    extra = [c for c in frame.columns if c not in needed]
    if missing or extra:
        parts = ([f"missing column(s) {missing}"] if missing else []) + ([f"unexpected column(s) {extra}"] if extra else [])
        raise PredictionInputError(f"{name}: {' and '.join(parts)}. Expected exactly these columns: {needed}.")
    return frame[needed], notes


def _check_size(name: str, size: int) -> None:
    if size > MAX_CSV_BYTES:
        raise PredictionInputError(f"{name} is {size / 1e6:.1f} MB; the limit is {MAX_CSV_BYTES / 1e6:.0f} MB.")
    if size == 0:
        raise PredictionInputError(f"{name} is empty.")


def _plain_numbers(state: dict) -> list[dict]:
    """Numeric columns as sent (not the features derived from a date)."""
    return [c for c in state["numeric"] if "date" not in c]


def out_of_range(frame: pd.DataFrame, state: dict) -> pd.DataFrame:
    """Per numeric column: how many values lie outside the training range (only columns with any)."""
    rows = []
    for spec in _plain_numbers(state):
        values = pd.to_numeric(frame[spec["name"]], errors="coerce")
        outside = (values < spec["min"]) | (values > spec["max"])
        if outside.any():
            rows.append({"column": spec["name"], "values outside": int(outside.sum()),
                         "training min": spec["min"], "training max": spec["max"]})
    return pd.DataFrame(rows)


# =========================================================================== SHAP of one row
@dataclass
class LocalShap:
    values: np.ndarray  # (F,) per model feature
    expected: float
    output: float
    features: pd.DataFrame  # the row's value of each feature (a date's derived numbers), as a person reads it
    output_name: str


@st.cache_resource(show_spinner="Preparing the SHAP background…", max_entries=8)
def _background(_page: Any, task: str, key: str, state_json: str) -> tuple:
    """Training rows the explanation compares against, prepared with the served version's state."""
    import torch

    p = _page.data.params()
    train, _ = _page.data.raw_split(task, "train")
    rng = np.random.default_rng(p.seed)
    idx = np.sort(rng.choice(len(train), min(p.explain.background_rows, len(train)), replace=False))
    return tuple(torch.from_numpy(a) for a in transform_tabular(train.iloc[idx], json.loads(state_json)))


def local_shap(page: Any, frame: pd.DataFrame) -> LocalShap:
    """SHAP values of the first row of `frame` (raw values) for the served model, of what its target type
    reads out: log-odds of the positive class, the predicted class's logit, or the predicted value."""
    import torch

    from torchcycle.kinds.tabular.explain import _feature_values
    from torchcycle.kinds.tabular.shap import explain_tabular

    model = page.model
    torch_model, _config = page.data.torch_model(model)
    state = model.predictor.state
    readout, name = model.predictor.target.readout(model.predictor.target_state)
    background = _background(page, model.task, f"{model.version}:{model.run_id}", json.dumps(state, sort_keys=True))
    row = tuple(torch.from_numpy(a) for a in transform_tabular(frame.iloc[:1], state))
    columns = feature_names(state)
    result = explain_tabular(torch_model, background, row, columns, readout, page.data.params().explain.shap_method)
    k = 0 if result.values.shape[2] == 1 else int(result.output[0].argmax())
    features = _feature_values(frame.iloc[:1].reset_index(drop=True), state, columns)
    return LocalShap(result.values[0, :, k], float(result.expected[k]), float(result.output[0, k]), features, name)


# =========================================================================== Explain
def explain(page: Any, summary: dict | None) -> None:
    """Global SHAP of the explain stage (importance and beeswarm), then any test row for the served model."""
    p = page.paths
    importance = page.data.read(p.explain / "importance.csv")
    values = page.data.read(p.explain / "shap_values.parquet")
    if summary is not None and importance is not None and values is not None:
        st.caption(f"SHAP ({summary['method']}) of {summary['rows']} test rows against {summary['background_rows']} "
                   f"training rows; explained output: {summary['explained_output']}.")
        left, right = st.columns([2, 3])
        top = importance.head(15)
        left.altair_chart(page.ui.bars(top, "mean_abs_shap", "feature", "Global importance", "mean |SHAP value|"))
        right.altair_chart(beeswarm(values, list(top["feature"])))
    else:
        st.info(f"Global SHAP values appear after the explain stage. {page.ui.RUN_HINT}")
    st.subheader("Explain one test row")
    raw, workspace = page.data.raw_test(page.task), page.data.workspace_target(page.task)
    if page.model is None or raw is None or workspace is None:
        page.ui.nothing_yet("No served model to explain yet.")
    records, y = raw
    default = int(summary["local_rows"][0]) if summary and summary.get("local_rows") else 0
    row = int(st.number_input(f"Test row (0 – {len(records) - 1})", 0, len(records) - 1, default, key="explain_row"))
    frame = records.iloc[[row]]
    outputs = page.model.predictor.outputs(frame)[0]
    from torchcycle.targets import target_of

    actual = target_of(workspace).decode(y[row : row + 1], workspace)[0]
    st.markdown(f"{page.target.verdict(actual, outputs, page.target_state)} ({page.model.label})")
    st.image(_waterfall_png(page, page.model.label, page.task, row), width="stretch")
    st.dataframe(frame, hide_index=True)


@st.cache_data(show_spinner="Explaining the row…", max_entries=64)
def _waterfall_png(_page: Any, label: str, task: str, row: int) -> bytes:
    """Local SHAP picture of a test row for the served model (`label` names the version, so a new
    champion gets new pictures)."""
    from torchcycle.explain import plots as XP

    frame = _page.data.raw_test(task)[0].iloc[[row]]
    shap = local_shap(_page, frame)
    return _page.ui.png(XP.waterfall(shap.values, shap.expected, shap.features.iloc[0], f"Test row {row}",
                                     output_name=shap.output_name))


def beeswarm(values: pd.DataFrame, features: list[str]) -> alt.Chart:
    """SHAP value per row and feature; colour is the feature's value rank (cividis: low dark, high light)."""
    from torchcycle.evaluation.plots import MATRIX_CMAP

    rng = np.random.default_rng(0)
    parts = []
    for f in features:
        v = values[f"value.{f}"]
        rank = v.rank(pct=True) if pd.api.types.is_numeric_dtype(v) else \
            v.astype("string").map(v.astype("string").value_counts(normalize=True)).rank(pct=True)
        parts.append(pd.DataFrame({"feature": f, "shap": values[f"shap.{f}"], "value": v.astype(str),
                                   "rank": rank.fillna(0.5), "jitter": rng.uniform(-1, 1, len(v))}))
    long = pd.concat(parts, ignore_index=True)
    chart = alt.Chart(long, title="SHAP values per row").mark_circle(size=14, opacity=0.7).encode(
        x=alt.X("shap:Q", title="SHAP value (right pushes the prediction up)"),
        y=alt.Y("feature:N", sort=features, title=None),
        yOffset=alt.YOffset("jitter:Q", scale=alt.Scale(domain=[-3, 3])),
        color=alt.Color("rank:Q", scale=alt.Scale(scheme=MATRIX_CMAP), title="feature value (rank)"),
        tooltip=["feature", "value", alt.Tooltip("shap:Q", format=".3f")],
    )
    return chart.properties(height=30 * len(features) + 40).configure_axis(labelFontSize=12, titleFontSize=13)


# =========================================================================== Data
def data_summary(page: Any, report: dict) -> None:
    """Rows per split, what happened to each column, the target's distribution, missing values, and each
    feature's distribution split by the target."""
    splits = report["splits"]
    counts = {"numeric columns": report["numeric"], "date columns": report.get("dates", []),
              "categorical columns": report["categorical"], "dropped columns": report.get("dropped", {})}
    cols = st.columns(len(splits) + len(counts))
    for col, (name, s) in zip(cols, splits.items()):
        col.metric(f"{name} rows", f"{s['rows']:,}")
    for col, (label, names) in zip(cols[len(splits):], counts.items()):
        col.metric(label, len(names))
    column_roles(page, report)
    split = st.radio("Split", list(splits), horizontal=True, key="data_split")
    s = splits[split]
    left, right = st.columns(2)
    with left:
        page.target.distribution(s, f"Target '{report['target']}' ({split})", report["target"])
    with right:
        missing = pd.DataFrame({"column": list(s["missing"]), "missing": list(s["missing"].values())})
        missing["share"] = missing["missing"] / max(s["rows"], 1)
        st.altair_chart(page.ui.bars(missing, "share", "column", "Missing values", "share of rows"))
    if s.get("numeric"):
        st.markdown("Numeric columns")
        st.dataframe(pd.DataFrame(s["numeric"]).T, height=260)
    if s.get("dates"):
        st.markdown("Date columns")
        st.dataframe(pd.DataFrame(s["dates"]).T)
    raw = page.data.read(page.paths.raw / f"{split}.parquet")
    features = report["numeric"] + report.get("dates", []) + report["categorical"]
    if raw is not None and features:
        feature = st.selectbox("Feature distribution", features, key="data_feature")
        st.altair_chart(distribution(page, raw, feature, report, split))


def column_roles(page: Any, report: dict) -> None:
    """What ingest decided for each column (the validation report): feature type and preprocessing, the
    target, or dropped with the reason (ID-like columns, …)."""
    validation = page.data.read(page.paths.validation_report) or {}
    decided = validation.get("summary", {}).get("columns")
    if decided is None:  # an older report: the roles alone
        decided = {c: {"role": role, "detail": ""} for role, names in
                   (("numeric", report["numeric"]), ("date", report.get("dates", [])),
                    ("categorical", report["categorical"])) for c in names}
        decided.update({c: {"role": "dropped", "detail": why} for c, why in report.get("dropped", {}).items()})
    table = pd.DataFrame([{"column": c, **d} for c, d in decided.items()])
    with st.expander(f"What happened to each column ({len(table)} columns)", expanded=bool(report.get("dropped"))):
        st.dataframe(table, hide_index=True, width="stretch")


def distribution(page: Any, raw: pd.DataFrame, feature: str, report: dict, split: str) -> alt.Chart:
    """A feature's distribution, coloured by the target (its classes, or quartiles of a number)."""
    from torchcycle.evaluation.plots import PALETTE
    from torchcycle.kinds.tabular.columns import parse_dates

    target = report["target"]
    frame = raw[[feature, target]].dropna(subset=[target])
    frame = frame.sample(min(len(frame), 20000), random_state=0)
    groups = page.target.groups(frame[target])
    order = list(dict.fromkeys(groups.loc[frame[target].sort_values().index]))
    frame = frame.assign(group=groups)
    colour = alt.Color("group:N", sort=order, title=target, scale=alt.Scale(range=list(PALETTE[: len(order)])))
    if feature in report.get("dates", []):
        frame[feature] = parse_dates(frame[feature])
        chart = alt.Chart(frame).mark_bar(opacity=0.75).encode(
            x=alt.X(f"yearmonth({feature}):T", title=feature), y=alt.Y("count():Q", stack=None, title="rows"),
            color=colour)
    elif feature in report["numeric"]:
        chart = alt.Chart(frame).mark_bar(opacity=0.75).encode(
            x=alt.X(f"{feature}:Q", bin=alt.Bin(maxbins=40), title=feature),
            y=alt.Y("count():Q", stack=None, title="rows"), color=colour)
    else:
        chart = alt.Chart(frame.astype({feature: str})).mark_bar().encode(
            y=alt.Y(f"{feature}:N", sort="-x", title=None), x=alt.X("count():Q", title="rows"), color=colour)
    return chart.properties(height=320, title=f"{feature} by {target} ({split})")


# =========================================================================== Model
def examples(page: Any, table: pd.DataFrame) -> None:
    """The chosen test examples as rows: the outcome next to the raw values the model saw."""
    raw, state = page.data.raw_test(page.task), page.data.read(page.paths.preprocessor)
    rows = pd.DataFrame()
    if raw is not None:
        rows = raw[0].iloc[table.index].reset_index(drop=True)
        rows = rows[input_columns(state)] if state else rows
    st.dataframe(pd.concat([table.reset_index(), rows], axis=1), hide_index=True)
