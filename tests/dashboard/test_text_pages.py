"""The dashboard for a text task (reviews) through streamlit's AppTest: a typed text and a CSV upload get
the CLI's predictions, the typed text its highlighted tokens, a file without the text column a message;
Explain shows the top tokens and highlighted test texts, Data the lengths, labels and example texts.
The views also run on their own (no trained project) on a data report and explain examples."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"
TASK = "reviews"
TEXT = "The film is funny, warm and beautifully acted, but the story is a bore."


def open_page(page: str, title: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    at.session_state["task"] = TASK
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == title
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def bodies(at: AppTest) -> str:
    return "\n".join(h.value for h in at.html)


def charts(at: AppTest) -> str:
    """The Vega-Lite specs of the page's altair charts (their titles and axes; the data travels apart)."""
    return "\n".join(c.proto.spec for c in at.get("vega_lite_chart"))


def cli_predict(project, file: Path) -> pd.DataFrame:
    out = project.run("torchcycle", "predict", "--task", TASK, "--input", str(file))
    return pd.read_csv(io.StringIO(out.stdout))


def shown_tokens(text: str, state: dict) -> list[str]:
    """The words of `text` as the highlight writes them: the served tokenizer's pieces, read as words."""
    from torchcycle.kinds.text import tokenizer as T
    from torchcycle.kinds.text.attributions import SPECIAL_TOKENS, readable

    ids, mask, _ = T.encode([text], state["tokenizer"], state["max_length"])
    tokens = T.tokens_of(ids[0, : int(mask[0].sum())], state["tokenizer"])
    return [readable(t) for t in tokens if t not in SPECIAL_TOKENS]


def report(project, name: str) -> dict:
    return json.loads((project.root / name).read_text())


# --------------------------------------------------------------------------- a trained project
@pytest.mark.slow
def test_typed_text_gets_the_cli_prediction_and_its_highlighted_tokens(trained, at_root,
                                                                      tmp_path: Path) -> None:
    at_root(trained.root)
    from dashboards import data

    at = open_page("predict", "Predict")
    assert at.text_area(key="predict_text").value, "starts from a test text"
    at.text_area(key="predict_text").set_value(TEXT).run()
    assert not at.exception and not at.error, texts(at.error)
    file = tmp_path / "one.csv"
    pd.DataFrame({"text": [TEXT]}).to_csv(file, index=False)
    cli = cli_predict(trained, file)
    assert f"Prediction: **{cli.loc[0, 'predicted']}**" in texts(at.success)
    shown = at.dataframe[0].value.set_index("outcome")["probability"]
    for name, p in shown.items():
        assert cli.loc[0, f"proba_{name}"] == pytest.approx(p, abs=2e-6)

    highlight = bodies(at)
    assert 'class="tok"' in highlight, "the typed text's tokens, highlighted"
    words = shown_tokens(TEXT, data.served(TASK).predictor.state)
    assert words and all(f">{html.escape(w)}</span>" in highlight for w in words), (words, highlight)
    assert f"the log-odds of '{cli.loc[0, 'predicted']}'" in texts(at.caption)

    at.text_area(key="predict_text").set_value("<b>bold</b> & <script>alert(1)</script> the film").run()
    assert not at.exception and not at.error
    assert "<script>" not in bodies(at) and "<b>bold" not in bodies(at), "the typed text is escaped"


@pytest.mark.slow
def test_predict_attributes_a_test_text_as_the_explain_stage_did(trained, at_root) -> None:
    """One explanation, wherever it is read: the served version's torch weights, tokenizer and readout
    give the typed text the token scores the explain stage wrote for the same test text."""
    import re

    from torchcycle.kinds.text.attributions import HIDDEN_IN_TEXT

    at_root(trained.root)
    examples = report(trained, f"reports/{TASK}/explain/examples.json")
    at = open_page("predict", "Predict")
    for example in examples[:2]:
        at.text_area(key="predict_text").set_value(example["text"]).run()
        assert not at.exception and not at.error, texts(at.error)
        assert f"Prediction: **{example['predicted']}**" in texts(at.success)
        shown = [float(v) for v in re.findall(r'title="[^"]*: ([+-][0-9.]+)"', bodies(at))]
        written = [s for t, s in zip(example["tokens"], example["scores"]) if t not in HIDDEN_IN_TEXT]
        np.testing.assert_allclose(shown, written, atol=2e-4)  # the page shows four decimals


@pytest.mark.slow
def test_csv_upload_gives_the_cli_predictions_and_a_missing_column_a_message(trained, at_root,
                                                                             tmp_path: Path) -> None:
    at_root(trained.root)
    from dashboards import data

    records, y = data.raw_test(TASK)  # the test split's texts, as the source has them
    schema = json.loads(data.paths(TASK).schema.read_text())["target"]
    raw = records.head(6).assign(category=np.asarray(schema["classes"])[y[:6]])
    file = tmp_path / "rows.csv"
    raw.to_csv(file, index=False)  # with the target column, which the model does not read
    at = open_page("predict", "Predict")

    def upload(name: str, blob: bytes) -> AppTest:
        at.file_uploader(key="predict_csv").set_value((name, blob, "text/csv"))
        return at.run()

    upload("rows.csv", file.read_bytes())
    assert not at.exception and not at.error, texts(at.error)
    assert "6 row(s) predicted" in texts(at.success)
    assert at.get("download_button"), "the result can be downloaded"
    result = at.dataframe[-1].value
    assert result["text"].tolist() == raw["text"].tolist()
    cli = cli_predict(trained, file)
    assert result["predicted"].tolist() == cli["predicted"].tolist()
    probabilities = [c for c in cli.columns if c.startswith("proba_")]
    assert probabilities and list(result.columns[-len(probabilities):]) == probabilities
    np.testing.assert_allclose(result[probabilities].to_numpy(), cli[probabilities].to_numpy(), atol=2e-6)

    upload("reviews.csv", raw.rename(columns={"text": "review"}).to_csv(index=False).encode())
    assert not at.exception
    assert "reviews.csv" in texts(at.error) and "column 'text'" in texts(at.error), texts(at.error)
    upload("blank.csv", pd.DataFrame({"text": ["fine", None]}).to_csv(index=False).encode())
    assert "row 1" in texts(at.error) and not at.exception
    upload("empty.csv", b"")
    assert "empty" in texts(at.error)

    at.text_area(key="predict_text").set_value(TEXT).run()  # the page keeps working
    assert not at.exception and "Prediction:" in texts(at.success)
    upload("rows.csv", file.read_bytes())
    assert not at.error and "6 row(s) predicted" in texts(at.success)


@pytest.mark.slow
def test_explain_page_shows_top_tokens_and_highlighted_texts(trained, at_root) -> None:
    at_root(trained.root)
    folder = trained.root / "reports" / TASK / "explain"
    top = pd.read_csv(folder / "top_tokens.csv")
    examples = report(trained, f"reports/{TASK}/explain/examples.json")
    at = open_page("explain", "Explain")
    assert not at.error, texts(at.error)
    assert "make run" not in texts(at.info)
    table = next(df.value for df in at.dataframe
                 if {"group", "token", "mean_attribution"} <= set(df.value.columns))
    assert table["token"].tolist() == top["token"].tolist()
    spec = charts(at)
    for group in top["group"].astype(str).unique()[:3]:
        assert f'"title": "{group}"' in spec, group
    highlight = bodies(at)
    assert highlight.count('class="explained-text"') == min(len(examples), 40)
    first = examples[0]
    title = f"test text #{first['test_index']}: true {first['true']}, predicted {first['predicted']}"
    assert title in highlight
    cases = {e["case"] for e in examples}
    assert set(at.radio(key="text_examples").options) == {"all", *cases}
    at.radio(key="text_examples").set_value("correct").run()
    assert not at.exception
    right = [e for e in examples if e["case"] == "correct"]
    assert bodies(at).count('class="explained-text"') == min(len(right), 40)
    assert all(str(e["true"]) == str(e["predicted"]) for e in right)
    summary = report(trained, f"reports/{TASK}/explain/summary.json")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["texts explained"] == f"{summary['texts_explained']:,}" and "ig steps" in metrics
    assert metrics["misclassified examples"] == str(summary["misclassified_examples"])
    assert summary["explained_output"] in texts(at.caption)


@pytest.mark.slow
def test_data_and_model_pages_show_lengths_labels_and_texts(trained, at_root) -> None:
    at_root(trained.root)
    data_report = report(trained, f"data/raw/{TASK}/data_report.json")
    at = open_page("dataset", "Data")
    assert not at.error, texts(at.error)
    metrics = {m.label: m.value for m in at.metric}
    for split, s in data_report["splits"].items():
        assert metrics[f"{split} rows"] == f"{s['rows']:,}"
    lengths = next(df.value for df in at.dataframe if "median" in df.value.columns)
    median = data_report["splits"]["train"]["lengths"]["median_words"]
    assert lengths.loc["train", "median"] == pytest.approx(median)
    spec = charts(at)
    assert "Text length (train)" in spec and "Target 'category' (train)" in spec
    examples = bodies(at)
    for label, shown in data_report["examples"].items():
        assert f"<b>{html.escape(label)}</b>" in examples
        assert all(html.escape(t) in examples for t in shown)

    model = open_page("model", "Model")
    assert not model.error, texts(model.error)
    worst = next(df.value for df in model.dataframe if "text" in df.value.columns)
    assert list(worst.columns[:4]) == ["test row", "text", "actual", "predicted"]
    from dashboards import data

    records, _ = data.raw_test(TASK)
    assert worst["text"].tolist() == records["text"].iloc[worst["test row"]].tolist()


# --------------------------------------------------------------------------- the views on their own
REPORT = {
    "kind": "text", "text_column": "text", "target": "category", "target_type": "classification",
    "source": "builtin:reviews", "batches": [],
    "splits": {split: {"rows": rows, "lengths": {"min_words": 1, "median_words": 20.0, "p90_words": 31.0,
                                                 "p99_words": 40.0, "max_words": 52, "mean_words": 20.4},
                       "length_histogram": {"edges": [0, 10, 20, 30, 53], "counts": [5, 40, 30, rows - 75]},
                       "class_counts": {"fresh": rows // 2, "rotten": rows - rows // 2}}
               for split, rows in (("train", 320), ("test", 80))},
    "examples": {"fresh": ["A <warm> & witty film."], "rotten": ["Dull, dull, dull."]},
}
EXAMPLES = [
    {"test_index": 3, "case": "misclassified", "text": "dull <b>",
     "tokens": ["[CLS]", "dull", "<b>", "[SEP]"], "scores": [0, 0.7, -0.1, 0], "true": "fresh",
     "predicted": "rotten", "probability": 0.64},
    {"test_index": 12, "case": "correct", "text": "a warm film",
     "tokens": ["[CLS]", "a", "warm", "film", "[SEP]"], "scores": [0, 0.1, 0.9, 0.2, 0], "true": "fresh",
     "predicted": "fresh", "probability": 0.91},
]


def _data_summary(report: dict) -> None:
    from types import SimpleNamespace

    from dashboards import targets, ui

    from torchcycle.kinds.text import dashboard as view

    splits = {"train": {"rows": 288, "truncated": 7, "median_tokens": 31.0},
              "test": {"rows": 80, "truncated": 2, "median_tokens": 30.0}}
    page = SimpleNamespace(ui=ui, target=targets.view("classification"),
                           paths=SimpleNamespace(splits="splits.json"),
                           data=SimpleNamespace(read=lambda path: splits))
    view.data_summary(page, report)


def test_the_data_summary_reads_a_text_data_report() -> None:
    at = AppTest.from_function(_data_summary, args=(REPORT,), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert {m.label: m.value for m in at.metric} == {"train rows": "320", "test rows": "80"}
    lengths = at.dataframe[0].value
    assert list(lengths.index) == ["train", "test"] and lengths.loc["test", "p90"] == 31.0
    tokens = at.dataframe[1].value.set_index("split")
    assert tokens.loc["train", "rows"] == 288 and tokens.loc["test", "truncated texts"] == 2
    spec = charts(at)
    assert "Text length (train)" in spec and "Target 'category' (train)" in spec
    at.radio(key="data_split").set_value("test").run()
    assert "Text length (test)" in charts(at)
    shown = bodies(at)
    assert "A &lt;warm&gt; &amp; witty film." in shown and "<warm>" not in shown, "example texts are escaped"


def _highlights(examples: list[dict]) -> None:
    from torchcycle.kinds.text import dashboard as view

    view.highlights(examples)


def test_highlighted_examples_filter_and_escape() -> None:
    at = AppTest.from_function(_highlights, args=(EXAMPLES,), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = bodies(at)
    assert shown.count('class="explained-text"') == 2
    assert "test text #3: true fresh, predicted rotten (64%)" in shown
    assert "&lt;b&gt;" in shown and "[CLS]" not in shown
    at.radio(key="text_examples").set_value("misclassified").run()
    assert bodies(at).count('class="explained-text"') == 1 and ">dull</span>" in bodies(at)
    at.selectbox(key="text_predicted").set_value("fresh").run()
    assert "No such examples" in texts(at.info)


def _typed_text(corpus: list[str]) -> None:
    """Predict's text box on a small untrained bag model and a tokenizer fitted on `corpus`, behind a
    stand-in for the served predictor (what matters here is the page, not ONNX)."""
    from types import SimpleNamespace

    import torch
    from dashboards import targets, ui

    from torchcycle.kinds.text import TEXT
    from torchcycle.kinds.text import dashboard as view
    from torchcycle.kinds.text import tokenizer as T
    from torchcycle.models.factory import build_model
    from torchcycle.targets.classification import CLASSIFICATION

    tokenizer = T.train_tokenizer(corpus, "wordpiece", 200, 1, True)
    state = {"kind": "text", "text_column": "text", "max_length": 16, "tokenizer_kind": "wordpiece",
             "tokenizer": tokenizer, "vocab_size": T.vocab_size(tokenizer), "pad_id": T.pad_id(tokenizer)}
    target_state = {"type": "classification", "name": "category", "classes": ["rotten", "fresh"],
                    "positive_class": "fresh"}
    explain = SimpleNamespace(ig_steps=8)
    torch.manual_seed(0)
    model = build_model({"name": "bag", "kwargs": {"vocab_size": state["vocab_size"], "n_outputs": 2,
                                                   "pad_id": state["pad_id"]}}).eval()

    def outputs(raw):  # type: ignore[no-untyped-def]  # AppTest runs this source without the module's imports
        with torch.no_grad():
            return torch.softmax(model(*(torch.from_numpy(a) for a in TEXT.prepare(raw, state))), 1).numpy()

    predictor = SimpleNamespace(state=state, target_state=target_state, target=CLASSIFICATION,
                                outputs=outputs)
    served = SimpleNamespace(predictor=predictor, label="a test model", version=None, run_id=None,
                             task="texts")
    from dashboards.context import Page

    page = Page(task="texts", model=served, target=targets.view("classification"), ui=ui,
                data=SimpleNamespace(raw_test=lambda task: None, torch_model=lambda m: (model, {}),
                                     params=lambda: SimpleNamespace(explain=explain)))
    view.one_text(page)


CORPUS = ["a warm and funny film", "a dull and tedious bore", "the acting is warm", "the story is dull",
          "funny, moving and sharp", "tedious, long and flat", "<b>bold</b> & <i>bright</i>"] * 3


def test_a_typed_text_is_predicted_and_its_tokens_highlighted_and_escaped() -> None:
    at = AppTest.from_function(_typed_text, args=(CORPUS,), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Type a text" in texts(at.info), "an empty box asks for a text"
    at.text_area(key="predict_text").set_value("a <b>warm</b> & funny film").run()
    assert not at.exception and not at.error, texts(at.error)
    assert "Prediction: **" in texts(at.success)
    shown = bodies(at)
    assert ">warm</span>" in shown and ">funny</span>" in shown and "&lt;" in shown
    assert "<b>" not in shown, "the typed text is escaped"
    assert "Integrated gradients (8 steps)" in texts(at.caption) and "log-odds of '" in texts(at.caption)
