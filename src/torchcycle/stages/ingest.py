"""ingest@<task>: read the source named in params, validate it, and write data/raw/<task>/ atomically.

Tabular: train.parquet (+ test.parquet when the source has an official test file) and a data report.
Images: images/<class>/<file> plus manifest.csv. The validation report goes to reports/<task>/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from torchcycle.atomic import atomic_dir, write_json
from torchcycle.config import ImageTask, Params, TabularTask
from torchcycle.data import batches, sources
from torchcycle.data.validate import validate_images, validate_tabular
from torchcycle.errors import DataValidationError
from torchcycle.paths import TaskPaths


def run(params: Params, task: str, root: Path) -> dict:
    cfg = params.task(task)
    paths = TaskPaths(task, root)
    failed = paths.reports / "validation-failed.json"
    try:
        if isinstance(cfg, TabularTask):
            report = _ingest_tabular(cfg, paths, root, params.seed)
        else:
            report = _ingest_images(cfg, paths, root, params.seed)
    except DataValidationError as exc:
        detail = getattr(exc, "report", {"status": "failed", "errors": [str(exc)]})
        write_json(failed, detail)
        raise DataValidationError(
            f"{exc}\nNothing was overwritten: data/raw/{task}/ still holds the last good data. "
            f"Full report: {failed}"
        ) from None
    failed.unlink(missing_ok=True)
    write_json(paths.validation_report, report)
    return report


# --------------------------------------------------------------------------- tabular
def _ingest_tabular(cfg: TabularTask, paths: TaskPaths, root: Path, seed: int) -> dict:
    src = cfg.source
    loaded = sources.load_tabular(src, root)
    frames = {"train": (_display(loaded.files[0], root), loaded.train)}
    if loaded.test is not None:
        frames["test"] = (_display(loaded.files[1], root), loaded.test)
    report, cleaned, roles = validate_tabular(frames, src, cfg.preprocess, has_header=src.builtin is None)
    report.raise_if_failed()
    if src.max_rows:
        cleaned = {k: _sample(df, src.target, src.max_rows, seed) for k, df in cleaned.items()}
        report.summary["sampled_rows"] = {k: len(df) for k, df in cleaned.items()}
    keep = [*roles.features, roles.target]
    holdback = None
    if src.holdback_rows:
        kept, held = _holdback_split(cleaned["train"][src.target].to_numpy(), src.holdback_rows, seed)
        holdback, cleaned["train"] = cleaned["train"].iloc[held], cleaned["train"].iloc[kept]
    stored = batches.stored_batches(root, paths.task)
    if stored:
        cleaned["train"] = pd.concat(
            [cleaned["train"][keep], *(pd.read_parquet(p)[keep] for p in stored)], ignore_index=True
        )
        report.summary["batches"] = [batches.batch_id(p) for p in stored]
    with atomic_dir(paths.raw) as tmp:
        for split, df in cleaned.items():
            df[keep].to_parquet(tmp / f"{split}.parquet", index=False)
        if holdback is not None:
            holdback[keep].to_parquet(tmp / "holdback.parquet", index=False)
        profile = _tabular_profile(cleaned, roles)
        profile["batches"] = [batches.batch_id(p) for p in stored]
        write_json(tmp / "data_report.json", profile)
    return report.to_dict()


def _holdback_split(labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from torchcycle.data.preprocess import stratified_split

    if n >= len(labels) // 2:
        raise DataValidationError(
            f"source.holdback asks for {n} of {len(labels)} training rows/images; keep it under half."
        )
    return stratified_split(labels, test_size=n, seed=seed)


def _display(path: Path, root: Path) -> Path:
    """A path that reads the same on every machine: relative to the project, or to the package."""
    for base, prefix in ((root.resolve(), ""), (sources.builtin_file().parent.parent, "")):
        try:
            return Path(prefix) / path.resolve().relative_to(base)
        except ValueError:
            continue
    return path


def _sample(df: pd.DataFrame, target: str, n: int, seed: int) -> pd.DataFrame:
    if len(df) <= n:
        return df
    from torchcycle.data.preprocess import stratified_split

    _, keep = stratified_split(df[target].to_numpy(), test_size=n / len(df), seed=seed)
    return df.iloc[keep].reset_index(drop=True)


def _counts(values: pd.Series, top: int = 30) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts().head(top).items()}


def _tabular_profile(frames: dict[str, pd.DataFrame], roles) -> dict:
    """Per-file summaries the dashboard shows: rows, class balance, missing values, distributions."""
    out = {}
    for split, df in frames.items():
        out[split] = {
            "rows": len(df),
            "class_counts": _counts(df[roles.target]),
            "missing": df[roles.features].isna().sum().to_dict(),
            "numeric": {c: df[c].describe().round(4).to_dict() for c in roles.numeric},
            "categorical": {c: _counts(df[c].fillna("<missing>")) for c in roles.categorical},
        }
    return {"kind": "tabular", "target": roles.target, "numeric": roles.numeric,
            "categorical": roles.categorical, "splits": out}


# --------------------------------------------------------------------------- images
def _ingest_images(cfg: ImageTask, paths: TaskPaths, root: Path, seed: int) -> dict:
    src = cfg.source
    with atomic_dir(paths.raw) as tmp:
        images = tmp / "images"
        if src.builtin == "mnist":
            origin = images
            _write_mnist(images, src.max_images, seed)
        else:
            origin = root / src.path
        report, records = validate_images(origin, sources.scan_image_folder(origin, src.extensions), src.extensions)
        report.raise_if_failed()
        if src.builtin is None:
            records = _subsample(records, src.max_images, seed)
        if src.holdback_images:
            kept, held = _holdback_split(np.array([r.label for r in records]), src.holdback_images, seed)
            for i in held:
                dest = tmp / "holdback" / records[i].path.relative_to(origin)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(records[i].path, dest)
                if src.builtin:
                    records[i].path.unlink()
            records = [records[i] for i in kept]
        rel_paths = []
        for rec in records:
            rel = Path("images") / rec.path.relative_to(origin)
            if src.builtin is None:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(rec.path, tmp / rel)
            rel_paths.append(str(rel))
        stored = batches.stored_batches(root, paths.task)
        for batch in stored:
            _b_report, b_records = validate_images(batch, sources.scan_image_folder(batch, src.extensions),
                                                  src.extensions)
            for rec in b_records:
                rel = Path("images") / rec.label / f"{batch.name}__{rec.path.name}"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(rec.path, tmp / rel)
                rel_paths.append(str(rel))
                records.append(rec)
        report.summary["batches"] = [batches.batch_id(p) for p in stored]
        pd.DataFrame({
            "path": rel_paths,
            "label": [r.label for r in records],
            "width": [r.width for r in records],
            "height": [r.height for r in records],
            "mode": [r.mode for r in records],
        }).to_csv(tmp / "manifest.csv", index=False)  # fmt: skip
        report.summary["root"] = str(Path("data/raw", paths.task, "images") if src.builtin else _display(origin, root))
        report.summary["source"] = str(_display(sources.builtin_file("mnist5k") if src.builtin else origin, root))
        write_json(tmp / "data_report.json", {"kind": "image", **report.summary, "images": len(records)})
    return report.to_dict()


def _write_mnist(images: Path, max_images: int | None, seed: int) -> None:
    from PIL import Image

    pixels, labels = sources.load_mnist()
    idx = np.arange(len(labels))
    if max_images and max_images < len(labels):
        from torchcycle.data.preprocess import stratified_split

        _, idx = stratified_split(labels, test_size=max_images / len(labels), seed=seed)
    for i in idx:
        folder = images / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i], mode="L").save(folder / f"{i:05d}.png", optimize=False, compress_level=1)


def _subsample(records: list, n: int | None, seed: int) -> list:
    if not n or len(records) <= n:
        return records
    from torchcycle.data.preprocess import stratified_split

    _, keep = stratified_split(np.array([r.label for r in records]), test_size=n / len(records), seed=seed)
    return [records[i] for i in keep]

