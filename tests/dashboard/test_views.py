"""The dashboard's kind and target views on their own (no trained project): the form's inputs by column
type (dates get a date input), what happened to each column, how a prediction reads per target type, and
that no page branches on the kind of data or the target type."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
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
