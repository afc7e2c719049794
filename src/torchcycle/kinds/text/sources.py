"""Reading a text source: the built-in reviews shipped in the package or a user's CSV/Parquet file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from torchcycle.data.sources import builtin_file, read_table
from torchcycle.kinds.tabular.sources import TabularFrames


def load_reviews() -> TabularFrames:
    """12,808 Rotten Tomatoes critic snippets labelled fresh/rotten (the file's `plot` rows are film
    summaries, not reviews, and are dropped)."""
    file = builtin_file("reviews", "rotten_tomatoes_corpus_full.csv.bz2")
    df = pd.read_csv(file, usecols=["category", "text", "movie_name"], dtype=str, keep_default_na=False)
    df = df[df["category"] != "plot"].reset_index(drop=True)
    return TabularFrames(train=df, test=None, files=[file])


BUILTIN = {"reviews": load_reviews}


def load_text(source, root: Path) -> TabularFrames:
    """A text task's rows from its `source` params section (text stays text: nothing is parsed as NaN
    but the listed `na_values`)."""
    if source.builtin:
        return BUILTIN[source.builtin]()
    frames = []
    for rel in (source.path, source.test_path):
        if rel is None:
            frames.append(None)
            continue
        frames.append(read_table(root / rel, sep=source.csv_sep, na_values=source.na_values, keep_default_na=False))
    files = [root / source.path] + ([root / source.test_path] if source.test_path else [])
    return TabularFrames(train=frames[0], test=frames[1], files=files)
