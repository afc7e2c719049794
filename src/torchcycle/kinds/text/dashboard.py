"""What the dashboard shows for text: a text box (with its token attributions) and a CSV upload on
Predict, highlighted test texts and the top tokens per class on Explain, text lengths, labels and example
texts on Data, the worst test texts on the Model page.

Only the dashboard imports this module (it renders with Streamlit); it gets what it needs from the page
(`dashboards.context.Page`): the served model, the target type's view, cached store access and charts.
Predictions go through `serving.Predictor` (raw input: a frame with the text column, as the CLI reads it)
and attributions through `torchcycle.kinds.text.attributions`, with the served version's own tokenizer, so
the highlighted tokens are the ones the served model read.
"""

from __future__ import annotations

import html
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from torchcycle.errors import PredictionInputError
from torchcycle.kinds.text import read_records, texts_of
from torchcycle.kinds.text import tokenizer as T

MAX_TEXT_CHARS = 20_000  # one typed text; the model reads its first `max_length` tokens anyway
MAX_CSV_BYTES = 20 * 1024 * 1024
MAX_ROWS = 100_000
IG_STEPS = 32  # integrated-gradient steps when params.yaml names none (`explain.ig_steps`)
MAX_EXAMPLES = 40  # highlighted texts drawn on Explain at once
PLACEHOLDER = "Type or paste a text, e.g. “A sharp, funny and surprisingly moving film.”"
# the highlights' look, shared by every page that draws them (highlight_html writes classes, not styles)
STYLE = """<style>
.explained-text { margin: 0 0 0.9rem 0; line-height: 1.9; }
.explained-text .title { font-size: 0.85rem; color: #555; margin-bottom: 0.1rem; }
.explained-text p { margin: 0; }
.explained-text .tok { padding: 0.1rem 0.15rem; border-radius: 0.2rem; }
</style>"""


# =========================================================================== Predict
def predict(page: Any) -> None:
    one_tab, batch_tab = st.tabs(["One text", "CSV batch"])
    with one_tab:
        one_text(page)
    with batch_tab:
        batch(page)


def one_text(page: Any) -> None:
    """The typed text's prediction (the served ONNX model, as the CLI gives it) and which tokens drove it."""
    predictor = page.model.predictor
    state = predictor.state
    text = st.text_area(f"Text (the model reads its first {state['max_length']} tokens)",
                        value=_first_test_text(page), placeholder=PLACEHOLDER, max_chars=MAX_TEXT_CHARS,
                        height=120, key="predict_text")
    if not text or not text.strip():
        st.info("Type a text to get its prediction.")
        return
    frame = pd.DataFrame({state["text_column"]: [text]})
    outputs = page.predict_one(frame)
    if outputs is None:
        return
    left, right = st.columns([1, 2])
    with left:
        page.target.details(outputs, page.target_state)
    with right:
        explained = attribution(page, text, outputs)
        st.html(STYLE + explained["html"])
        length = explained["length"]
        cut = (f" The text has {length} tokens; only the first {state['max_length']} were read."
               if length > state["max_length"] else "")
        st.caption(f"Integrated gradients ({explained['steps']} steps) on the token embedding of "
                   f"{page.model.label}'s torch weights, for {explained['output']}: green tokens push "
                   "towards it, vermillion ones away (shade: share of the text's largest; hover for the "
                   f"score). Convergence delta {explained['delta']:+.4f}.{cut}")


def _first_test_text(page: Any) -> str:
    """The first test text (as the tabular form starts from the first test row), else empty."""
    raw = page.data.raw_test(page.task)
    if raw is None or raw[0].empty:
        return ""
    value = raw[0].iloc[0, 0]
    return value if isinstance(value, str) else ""


def explained_output(page: Any, outputs: np.ndarray) -> tuple[int | None, float, str]:
    """What the attributions explain, as the explain stage does: (the output index captum attributes,
    None for a single output; the sign that makes green mean "towards the prediction"; its name). The
    target type's readout: the log-odds of the decided class for two classes, the decided class's logit
    for more, the predicted number for regression."""
    predictor = page.model.predictor
    _, name = predictor.target.readout(page.target_state)
    table = predictor.target.predictions(np.asarray(outputs)[None], page.target_state)
    predicted = str(table["predicted"].iloc[0])
    classes = [str(c) for c in page.target_state.get("classes") or []]
    if predicted not in classes:
        return None, 1.0, name
    k = classes.index(predicted)
    if len(classes) == 2:  # one readout, the positive class's log-odds: flipped for the negative class
        return None, 1.0 if k == 1 else -1.0, f"the log-odds of '{predicted}'"
    return k, 1.0, f"the logit of '{predicted}'"


def attribution(page: Any, text: str, outputs: np.ndarray) -> dict:
    """The typed text's highlighted tokens, attributing what the served model decided."""
    k, sign, output = explained_output(page, outputs)
    model = page.model
    found = _attribution(page, f"{model.label}:{model.version}:{model.run_id}", model.task, text, k, sign)
    return {**found, "output": output}


@st.cache_data(show_spinner="Attributing the tokens…", max_entries=64)
def _attribution(_page: Any, model_key: str, task: str, text: str, k: int | None, sign: float) -> dict:
    """Integrated gradients of one text for the served version (`model_key` names it, so a new champion
    gets new attributions): the highlight's HTML, the convergence delta and the text's token count."""
    import torch

    from torchcycle.kinds.text.attributions import highlight_html, token_attributions
    from torchcycle.kinds.text.explain import _Explained

    predictor = _page.model.predictor
    state = predictor.state
    ids, mask, lengths = T.encode([text], state["tokenizer"], state["max_length"])
    torch_model, _ = _page.data.torch_model(_page.model)
    readout, _ = predictor.target.readout(predictor.target_state)
    pad = int(state.get("pad_id", T.pad_id(state["tokenizer"])))
    scores, deltas = token_attributions(_Explained(torch_model, readout), torch.from_numpy(ids),
                                        torch.from_numpy(mask), None if k is None else torch.tensor([k]),
                                        steps=ig_steps(_page), pad_id=pad,
                                        keep_ids=[i for i in special_ids(state["tokenizer"]) if i != pad])
    n = int(mask[0].sum())
    tokens = T.tokens_of(ids[0, :n], state["tokenizer"])
    return {"html": highlight_html(tokens, sign * scores[0, :n]), "delta": float(deltas[0]),
            "length": int(lengths[0]), "steps": ig_steps(_page)}


def ig_steps(page: Any) -> int:
    """The explain stage's interpolation steps, so Predict and Explain attribute alike."""
    return int(getattr(page.data.params().explain, "ig_steps", IG_STEPS))


def special_ids(tokenizer_json: str) -> list[int]:
    """Ids of the structure tokens ([CLS], [SEP], …) the attribution baseline keeps: the baseline is a
    text without words, not no text at all."""
    from torchcycle.kinds.text.attributions import HIDDEN_IN_TEXT

    tok = T.load_tokenizer(tokenizer_json, 10**6)
    return sorted({i for i in (tok.token_to_id(t) for t in HIDDEN_IN_TEXT) if i is not None})


def batch(page: Any) -> None:
    predictor = page.model.predictor
    state = predictor.state
    st.markdown(f"Upload a CSV with a column `{state['text_column']}` (one text per row; other columns are "
                f"ignored), or a .txt file with one text per line (at most {MAX_CSV_BYTES // 2**20} MB).")
    upload = st.file_uploader("CSV or text file", type=["csv", "txt"], key="predict_csv")
    if upload is None:
        return
    try:
        records = read_upload(upload.name, upload.getvalue())
        texts = texts_of(records, state)
        result = predictor.predict(records)
    except PredictionInputError as exc:
        st.error(f"{upload.name}: {exc}")
        return
    out = pd.concat([pd.DataFrame({state["text_column"]: texts}), result], axis=1)
    st.success(f"{len(out)} row(s) predicted by {page.model.label}.")
    st.dataframe(out.head(200), hide_index=True)
    st.download_button("Download predictions (CSV)", out.to_csv(index=False).encode(),
                       file_name=f"{page.task}_predictions.csv", mime="text/csv", key="predict_download")


def read_upload(name: str, blob: bytes) -> pd.DataFrame:
    """The uploaded file as raw records, read by the CLI's own reader so both parse a file the same way."""
    if len(blob) > MAX_CSV_BYTES:
        raise PredictionInputError(f"{len(blob) / 1e6:.1f} MB; the limit is {MAX_CSV_BYTES / 1e6:.0f} MB.")
    if not blob:
        raise PredictionInputError("the file is empty.")
    suffix = ".txt" if name.lower().endswith(".txt") else ".csv"
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / f"upload{suffix}"
        file.write_bytes(blob)
        try:
            frame = read_records(file)
        except PredictionInputError as exc:
            raise PredictionInputError(str(exc).split(": ", 1)[-1]) from None
    if frame.empty:
        raise PredictionInputError("it holds no rows.")
    if len(frame) > MAX_ROWS:
        raise PredictionInputError(f"{len(frame)} rows; the limit is {MAX_ROWS}.")
    return frame


# =========================================================================== Explain
def explain(page: Any, summary: dict | None) -> None:
    """The explain stage's highlighted test texts and the tokens that push each class most."""
    folder = page.paths.explain
    examples, top = page.data.read(folder / "examples.json"), page.data.read(folder / "top_tokens.csv")
    if summary is None or examples is None or top is None:
        page.ui.nothing_yet("Token attributions appear after the explain stage.")
    summary_numbers(summary)
    st.subheader("Tokens that push each prediction most")
    top_tokens(page, top)
    picture = folder / "top_tokens.png"
    if picture.exists():
        with st.expander("As the explain stage drew them", expanded=False):
            st.image(str(picture))
    st.subheader("Highlighted test texts")
    highlights(examples)
    page_file = folder / "attributions.html"
    if page_file.exists():
        st.download_button("Download the highlights (self-contained HTML)", page_file.read_bytes(),
                           file_name=f"{page.task}_attributions.html", mime="text/html",
                           key="explain_download")


def summary_numbers(summary: dict) -> None:
    """summary.json's numbers as metrics, its words as a caption."""
    numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    words = {k: v for k, v in summary.items() if isinstance(v, str) and k != "kind"}
    items = list(numbers.items())
    for row in range(0, len(items), 6):
        for col, (key, value) in zip(st.columns(6), items[row : row + 6]):
            col.metric(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else f"{value:.4g}")
    if words:
        st.caption(" · ".join(f"{k.replace('_', ' ')}: {v}" for k, v in words.items()))


def top_tokens(page: Any, top: pd.DataFrame) -> None:
    """One bar chart per group (the class the texts were predicted as, or the direction a number was
    pushed), and the table."""
    if top.empty:
        st.info("No token was seen often enough in the explained texts to rank.")
        return
    groups = list(dict.fromkeys(top["group"].astype(str)))
    for col, group in zip(st.columns(min(len(groups), 3)), groups[:3]):
        part = top[top["group"].astype(str) == group]
        col.altair_chart(page.ui.bars(part, "mean_attribution", "token", group, "mean attribution"))
    with st.expander(f"Top tokens table ({len(top)} rows)", expanded=len(groups) > 3):
        st.dataframe(top, hide_index=True)


def highlights(examples: list[dict]) -> None:
    """The explained test texts, filtered by why they were chosen (correct or misclassified, the
    largest or smallest errors) and by what they were predicted as."""
    from torchcycle.kinds.text.attributions import highlight_html

    if not examples:
        st.info("The explain stage wrote no example texts.")
        return
    cases = list(dict.fromkeys(str(e.get("case", "")) for e in examples if e.get("case")))
    predicted = sorted({str(e["predicted"]) for e in examples})
    a, b = st.columns(2)
    which = a.radio("Examples", ["all", *cases], horizontal=True, key="text_examples") if cases else "all"
    chosen = "any"
    if len(predicted) <= 20:  # classes, not the numbers of a regression
        chosen = b.selectbox("Predicted as", ["any", *predicted], key="text_predicted")
    picked = [e for e in examples if (chosen == "any" or str(e["predicted"]) == chosen)
              and (which == "all" or str(e.get("case")) == which)]
    if not picked:
        st.info("No such examples among the explained texts.")
        return
    st.caption(f"{len(picked)} of {len(examples)} explained test texts; green tokens push towards the "
               "prediction, vermillion ones away (hover a token for its score).")
    parts = [highlight_html(e["tokens"], np.asarray(e["scores"], dtype=np.float64), _title(e))
             for e in picked[:MAX_EXAMPLES]]
    st.html(STYLE + "".join(parts))


def _title(example: dict) -> str:
    """As the explain stage's page titles a text: "test text #12: true fresh, predicted rotten (64%)"."""
    p = example.get("probability")
    at = f"test text #{example['test_index']}: " if "test_index" in example else ""
    shown = f" ({p:.0%})" if isinstance(p, (int, float)) else ""
    return f"{at}true {_value(example['true'])}, predicted {_value(example['predicted'])}{shown}"


def _value(value: Any) -> str:
    return f"{value:,.4g}" if isinstance(value, float) else str(value)


# =========================================================================== Data
def data_summary(page: Any, report: dict) -> None:
    """Rows per split, text lengths (summary and histogram), the label distribution and example texts."""
    splits = report["splits"]
    for col, (name, s) in zip(st.columns(len(splits)), splits.items()):
        col.metric(f"{name} rows", f"{s['rows']:,}")
    st.caption(f"Text column `{report['text_column']}`, target `{report['target']}`, source "
               f"`{report.get('source', '?')}`")
    left, right = st.columns(2)
    lengths = pd.DataFrame({name: s["lengths"] for name, s in splits.items()}).T
    left.markdown("Text lengths (words)")
    left.dataframe(lengths.rename(columns=lambda c: c.removesuffix("_words")).rename_axis("split"))
    processed = page.data.read(page.paths.splits)
    if processed:  # the model's splits: what the tokenizer made of the texts, and what max_length cut
        right.markdown("Model splits (tokens)")
        table = pd.DataFrame([{"split": k, "rows": v.get("rows"), "median tokens": v.get("median_tokens"),
                               "truncated texts": v.get("truncated")} for k, v in processed.items()])
        right.dataframe(table, hide_index=True)
    split = st.radio("Split", list(splits), horizontal=True, key="data_split")
    s = splits[split]
    left, right = st.columns(2)
    with left:
        h = s["length_histogram"]
        st.altair_chart(page.ui.histogram(h["edges"], h["counts"], f"Text length ({split})", "words"))
    with right:
        page.target.distribution(s, f"Target '{report['target']}' ({split})", report["target"])
    examples = report.get("examples") or {}
    if examples:
        st.markdown("Example texts")
        for label, texts in examples.items():
            items = "".join(f"<li>{html.escape(str(t))}</li>" for t in texts)
            st.html(f'<div class="example-texts"><b>{html.escape(str(label))}</b><ul>{items}</ul></div>')


# =========================================================================== Model
def examples(page: Any, table: pd.DataFrame) -> None:
    """The chosen test examples as their texts, next to the actual and the predicted outcome."""
    raw = page.data.raw_test(page.task)
    rows = pd.DataFrame()
    if raw is not None:
        rows = raw[0].iloc[table.index].reset_index(drop=True).iloc[:, :1].set_axis(["text"], axis=1)
    shown = pd.concat([table.reset_index().iloc[:, :1], rows, table.reset_index().iloc[:, 1:]], axis=1)
    st.dataframe(shown, hide_index=True,
                 column_config={"text": st.column_config.TextColumn("text", width="large")})
