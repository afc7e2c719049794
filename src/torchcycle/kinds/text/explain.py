"""Token attributions of a text model on the test split: integrated gradients (captum) of the explained
output on the token embeddings, for up to `explain.max_rows` texts. Written: attributions.html (example
texts with highlighted tokens, half correct and half the most confident mistakes, and the tokens that push
each class most), top_tokens.csv/.png and examples.json (what the dashboard draws).

The explained output comes from the target type, as for tables: the log-odds of the predicted class for a
binary task (so a token's sign reads the same whichever class won), the predicted class's logit for more
classes, the prediction in target units for regression."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from torchcycle.artifacts import load_split
from torchcycle.atomic import read_json, write_json
from torchcycle.data.splits import sample
from torchcycle.targets import target_of

SEQUENCES_PER_PASS = 64  # texts × interpolation steps per forward pass, what bounds memory: 64 was as fast as
# 256 for the bag model on 2 CPU cores (benchmarks/results/text_explain.md) and keeps a transformer small
PROGRESS_FROM = 64  # texts; fewer finish before a bar is worth drawing
TOP_K, MIN_COUNT = 15, 3
RAISES, LOWERS = "raises the prediction", "lowers the prediction"


class _Explained(nn.Module):
    """The model followed by the target's readout (log-odds, logits or target units): the quantity whose
    attributions a person reads, still with the model's embedding for captum to hook."""

    def __init__(self, model: nn.Module, readout: nn.Module) -> None:
        super().__init__()
        self.model, self.readout = model, readout

    def token_embedding(self) -> nn.Embedding:
        return self.model.token_embedding()  # type: ignore[operator]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.readout(self.model(input_ids, attention_mask))


def explain(params: Any, paths: Any, model: nn.Module, target_state: dict[str, Any]) -> tuple[dict, Any]:
    from torchcycle.kinds.text import TEXT
    from torchcycle.kinds.text import tokenizer as T
    from torchcycle.kinds.text.attributions import HIDDEN_IN_TEXT, token_attributions

    ex = params.explain
    target = target_of(target_state)
    classification = "classes" in target_state
    state = read_json(paths.preprocessor)
    test = load_split(paths, "test")
    raw, y_all = TEXT.raw_inputs(paths, "test")
    texts = raw.iloc[:, 0].astype(str).tolist()
    idx = sample(len(test), ex.max_rows, params.seed + 1)
    ids, mask = test.inputs[0][idx], test.inputs[1][idx]
    width = max(1, int(mask.sum(1).max())) if len(idx) else 1
    ids, mask = ids[:, :width].long(), mask[:, :width].long()  # as wide as the longest chosen text
    device = next(model.parameters()).device
    model.eval()

    start = time.perf_counter()
    with torch.inference_mode():
        raw_out = torch.cat([model(ids[i:i + 256].to(device), mask[i:i + 256].to(device)).cpu()
                             for i in range(0, len(idx), 256)]) if len(idx) else torch.zeros(0, 1)
        outputs = target.head(target_state)(raw_out).numpy()
    shown = target.predictions(outputs, target_state)
    actual = target.decode(y_all[idx], target_state)
    readout, output_name = target.readout(target_state)
    if classification:
        classes = [str(c) for c in target_state["classes"]]
        pred = np.asarray([classes.index(str(p)) for p in shown["predicted"]], dtype=np.int64)
        probability = outputs[np.arange(len(idx)), pred] if len(idx) else np.zeros(0)
        binary = len(classes) == 2
        explained = torch.as_tensor(pred) if not binary else None
        # a binary readout is the positive class's log-odds: flip it for texts predicted negative
        sign = np.where(pred == 1, 1.0, -1.0) if binary else np.ones(len(idx))
        output_name = "log-odds of the predicted class" if binary else output_name
    else:
        explained, sign = None, np.ones(len(idx))
    tok = T.load_tokenizer(state["tokenizer"], state["max_length"])
    keep = [i for i in (tok.token_to_id(t) for t in HIDDEN_IN_TEXT) if i is not None and i != state["pad_id"]]
    wrapped = _Explained(model, readout.to(device))
    with _progress(len(idx)) as advance:
        scores, deltas = token_attributions(
            wrapped, ids.to(device), mask.to(device), None if explained is None else explained.to(device),
            steps=ex.ig_steps, pad_id=state["pad_id"], batch_size=SEQUENCES_PER_PASS, keep_ids=keep,
            progress=advance,
        )  # fmt: skip
    change = np.abs(scores.sum(1) - deltas)  # |output(text) − output(baseline)|, the scale of the deltas
    scores = scores * sign[:, None]
    seconds = time.perf_counter() - start

    lengths = mask.sum(1).numpy()
    tokens = [T.tokens_of(ids[i, : lengths[i]].numpy(), state["tokenizer"]) for i in range(len(idx))]
    values = [scores[i, : lengths[i]] for i in range(len(idx))]
    if classification:
        groups = [classes[p] for p in pred]
        table = _order(_top(tokens, values, groups), classes)
        picked = _pick_classification(pred, y_all[idx], probability, ex.text_examples, params.seed)
    else:
        table = _regression_top(tokens, values)
        predicted = shown["predicted"].to_numpy(np.float64)
        picked = _pick_regression(np.abs(predicted - np.asarray(actual, np.float64)), ex.text_examples)
    examples = [{
        "test_index": int(idx[i]), "case": case, "text": texts[int(idx[i])], "tokens": tokens[i],
        "scores": [round(float(s), 6) for s in values[i]], "true": _plain(actual[i]),
        "predicted": _plain(shown["predicted"].iloc[i]),
        "probability": float(probability[i]) if classification else None,
    } for i, case in picked]  # fmt: skip
    summary = {
        "kind": "text", "method": "integrated_gradients", "explained_output": output_name,
        "texts_explained": len(idx), "ig_steps": ex.ig_steps,
        "mean_abs_convergence_delta": float(np.abs(deltas).mean()) if len(deltas) else 0.0,
        "mean_abs_output_change": float(change.mean()) if len(change) else 0.0,
        "seconds": round(seconds, 3), "examples": len(examples),
        "misclassified_examples": sum(1 for e in examples if e["case"] == "misclassified"),
    }  # fmt: skip
    figure = _top_tokens_figure(table, output_name)
    page = _page(paths.task, examples, table, summary, classification)

    def write(tmp: Path) -> None:
        from torchcycle.explain.plots import save_figures

        (tmp / "attributions.html").write_text(page, encoding="utf-8")
        table.to_csv(tmp / "top_tokens.csv", index=False)
        write_json(tmp / "examples.json", examples)
        save_figures(tmp, {"top_tokens.png": figure})

    return summary, write


# --------------------------------------------------------------------------- choosing and ranking
def _top(tokens: list[list[str]], values: list[np.ndarray], groups: list[str]) -> pd.DataFrame:
    from torchcycle.kinds.text.attributions import top_tokens

    return top_tokens(tokens, values, groups, k=TOP_K, min_count=MIN_COUNT)


def _order(table: pd.DataFrame, groups: list[str]) -> pd.DataFrame:
    """Classes in the target's order, whichever was predicted first."""
    rank = {g: i for i, g in enumerate(groups)}
    return table.sort_values("group", key=lambda s: s.map(rank), kind="stable").reset_index(drop=True)


def _regression_top(tokens: list[list[str]], values: list[np.ndarray]) -> pd.DataFrame:
    """Tokens that raise the prediction most on average, and those that lower it most (by the sign of
    their mean attribution)."""
    up = _top(tokens, values, [RAISES] * len(tokens))
    down = _top(tokens, [-v for v in values], [LOWERS] * len(tokens))
    down["mean_attribution"] = -down["mean_attribution"]
    return pd.concat([up[up["mean_attribution"] > 0], down[down["mean_attribution"] < 0]], ignore_index=True)


def _pick_classification(pred: np.ndarray, y: np.ndarray, probability: np.ndarray, n: int,
                         seed: int) -> list[tuple[int, str]]:
    """Half misclassified (the most confident mistakes first: what a person most needs to see), half
    correct (a seeded sample, so typical rather than only the easiest); a short half is filled from the
    other."""
    wrong = np.flatnonzero(pred != np.asarray(y))
    wrong = wrong[np.argsort(-probability[wrong], kind="stable")]
    right = np.random.default_rng(seed).permutation(np.flatnonzero(pred == np.asarray(y)))
    n_wrong = min(len(wrong), max(n - n // 2, n - len(right)))
    n_right = min(len(right), n - n_wrong)
    return ([(int(i), "misclassified") for i in wrong[:n_wrong]]
            + [(int(i), "correct") for i in right[:n_right]])  # fmt: skip


def _pick_regression(error: np.ndarray, n: int) -> list[tuple[int, str]]:
    """The largest errors (what went wrong) and the smallest (what the model gets right), no text twice."""
    order = np.argsort(error, kind="stable")
    worst = order[::-1][: n - n // 2]
    taken = set(worst.tolist())
    best = [i for i in order if i not in taken][: n - len(worst)]
    return [(int(i), "largest error") for i in worst] + [(int(i), "smallest error") for i in best]


def _plain(value: Any) -> Any:
    """A JSON value a person reads: a class name as text, a number as a float."""
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return str(value)


class _progress:
    """A rich progress bar over the texts being attributed, when there are enough to wait for."""

    def __init__(self, total: int) -> None:
        self.total, self._bar = total, None

    def __enter__(self) -> Any:
        if self.total < PROGRESS_FROM:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("[bold]integrated gradients"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), transient=True)
        self._bar.__enter__()
        task = self._bar.add_task("explain", total=self.total)
        return lambda k: self._bar.update(task, advance=k)  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


# --------------------------------------------------------------------------- figure and page
def _top_tokens_figure(table: pd.DataFrame, output_name: str) -> Any:
    """One horizontal bar chart per class (or direction): its top tokens, strongest on top."""
    from matplotlib.figure import Figure

    from torchcycle.evaluation.plots import PALETTE, style

    groups = list(dict.fromkeys(table["group"])) or ["(no token seen often enough)"]
    rows = max([int((table["group"] == g).sum()) for g in groups] + [1])
    with style():
        fig = Figure(figsize=(4.2 * len(groups) + 0.8, 0.32 * rows + 1.8), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(groups), squeeze=False)[0])
        for k, (ax, group) in enumerate(zip(axes, groups)):
            part = table[table["group"] == group].iloc[::-1]
            colours = [PALETTE[2] if v >= 0 else PALETTE[3] for v in part["mean_attribution"]]
            ax.barh(part["token"].astype(str), part["mean_attribution"], color=colours)
            ax.axvline(0, color="#888888", linewidth=1)
            ax.set_title(group)
            ax.set_xlabel(f"mean attribution ({output_name})" if k == 0 else "mean attribution")
            ax.grid(axis="y", visible=False)
        fig.suptitle("Top tokens (integrated gradients, mean over test texts)")
    return fig


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; } .meta { color: #555; }
.explained-text { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 0.9em; margin: 0.8em 0; }
.explained-text .title { font-size: 0.9em; color: #444; font-weight: 600; }
.explained-text p { line-height: 1.9; margin: 0.4em 0 0; } .tok { border-radius: 3px; padding: 1px 0; }
.legend span { padding: 2px 6px; border-radius: 3px; margin-right: 0.5em; }
.tables { display: flex; flex-wrap: wrap; gap: 2em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { padding: 2px 8px; text-align: left; }
th { border-bottom: 1px solid #999; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def _page(task: str, examples: list[dict], table: pd.DataFrame, summary: dict, classification: bool) -> str:
    """The whole report as one file with no outside resources (it opens from an MLflow artifact too)."""
    from torchcycle.kinds.text.attributions import highlight_html

    e = html.escape
    up, down = ("pushes towards the predicted class", "pushes away from it") if classification else (RAISES, LOWERS)
    over = "predicted as each class" if classification else "explained"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(task)}: token attributions</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(task)}: which tokens drive the predictions</h1>",
        (f'<p class="meta">Integrated gradients ({summary["ig_steps"]} steps) of the '
         f'{e(summary["explained_output"])} on the token embeddings, {summary["texts_explained"]} test texts, '
         f'mean |convergence delta| {summary["mean_abs_convergence_delta"]:.3g}.</p>'),
        (f'<p class="legend"><span style="background: rgba(0, 158, 115, 0.7)">{up}</span>'
         f'<span style="background: rgba(213, 94, 0, 0.7)">{down}</span> '
         "Shading: the token's share of the text's strongest attribution; hover for the score.</p>"),
    ]  # fmt: skip
    for case in dict.fromkeys(x["case"] for x in examples):
        parts.append(f"<h2>{e(case.capitalize())}</h2>")
        for x in (x for x in examples if x["case"] == case):
            title = f"test text #{x['test_index']}: true {_show(x['true'])}, predicted {_show(x['predicted'])}"
            if x["probability"] is not None:
                title += f" ({x['probability']:.0%})"
            parts.append(highlight_html(x["tokens"], np.asarray(x["scores"]), title=title))
    parts.append("<h2>Top tokens</h2><p class=\"meta\">Mean attribution of each token over the test texts "
                 f"{over} (at least {MIN_COUNT} occurrences).</p><div class=\"tables\">")
    for group in dict.fromkeys(table["group"]):
        part = table[table["group"] == group]
        rows = "".join(f"<tr><td>{e(str(r.token))}</td><td class=\"num\">{r.mean_attribution:+.4f}</td>"
                       f"<td class=\"num\">{r.count}</td></tr>" for r in part.itertuples())
        parts.append(f"<div><h3>{e(str(group))}</h3><table><tr><th>token</th><th>mean attribution</th>"
                     f"<th>count</th></tr>{rows}</table></div>")
    parts.append("</div></body></html>")
    return "\n".join(parts) + "\n"


def _show(value: Any) -> str:
    return f"{value:,.4g}" if isinstance(value, float) else str(value)
