"""Drift statistics with known answers, and the drop zone → quarantine / accepted-batch life cycle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from torchcycle.config import parse_params
from torchcycle.data import batches as B
from torchcycle.kinds import kind_of
from torchcycle.monitoring import drift as D
from torchcycle.retraining import should_retrain


def _reference(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.normal(40, 10, n),
        "hours": rng.normal(40, 5, n),
        "plan": rng.choice(["basic", "plus", "pro"], n, p=[0.5, 0.3, 0.2]),
        "y": rng.choice(["no", "yes"], n),
    })  # fmt: skip


def test_psi_is_zero_for_identical_and_grows_with_shift() -> None:
    p = np.array([0.2, 0.3, 0.5])
    assert D.psi(p, p) == pytest.approx(0.0, abs=1e-12)
    assert D.psi(p, [0.3, 0.3, 0.4]) < D.psi(p, [0.6, 0.3, 0.1])


def test_same_distribution_does_not_drift_but_a_shifted_column_does() -> None:
    ref = _reference()
    same = _reference(500, seed=1)
    report = D.tabular_drift(ref, same, ["age", "hours"], ["plan"])
    assert report["drifted_columns"] == []
    shifted = same.copy()
    shifted["age"] += 15
    shifted["plan"] = "pro"
    report = D.tabular_drift(ref, shifted, ["age", "hours"], ["plan"])
    assert set(report["drifted_columns"]) == {"age", "plan"}
    assert report["drift_share"] == pytest.approx(2 / 3)
    assert report["columns"]["age"]["batch_mean"] > report["columns"]["age"]["reference_mean"] + 10


def test_brighter_images_drift_on_pixel_statistics() -> None:
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 100, (200, 1, 8, 8)).astype(np.uint8)
    bright = rng.integers(120, 255, (50, 1, 8, 8)).astype(np.uint8)
    labels = ["a", "b"] * 100
    report = D.image_drift(ref, bright, labels, ["a", "b"] * 25)
    assert "mean_intensity" in report["drifted_columns"]
    assert "label" not in report["drifted_columns"]
    fig = D.drift_figure(report)
    assert "drifted" in fig.axes[0].get_title()


def _params(**retrain) -> object:
    return parse_params({
        "tasks": ["t"], "retrain": retrain,
        "t": {"kind": "tabular", "source": {"path": "x.csv", "target": "y"}, "split": {}, "preprocess": {},
              "model": {}, "train": {}},
    })  # fmt: skip


def _trained_on(root: Path, task: str, reference: pd.DataFrame) -> None:
    """What ingest@<task> leaves behind that batch validation compares with: the training rows and the
    data report (the target type the task was trained with)."""
    raw = root / "data" / "raw" / task
    raw.mkdir(parents=True, exist_ok=True)
    reference.to_parquet(raw / "train.parquet", index=False)
    (raw / "data_report.json").write_text(json.dumps({"target_type": "classification", "batches": []}))


def _validate(root: Path, params, task: str) -> tuple:
    """The one waiting arrival, validated by the task's kind as the retraining flow does."""
    cfg = params.task(task)
    (arrival,) = B.find_arrivals(root, task, cfg)
    return arrival, *kind_of(cfg).new_batches().validate(arrival, cfg, root)


def test_retrain_decision_follows_the_thresholds() -> None:
    params = _params(min_new_samples=100, drift_share=0.5)
    assert should_retrain(params, 0, None) == (False, "no new data")
    go, reason = should_retrain(params, 10, {"drift_share": 0.1, "drifted_columns": []})
    assert not go and "waiting for more" in reason
    assert should_retrain(params, 100, {"drift_share": 0.0, "drifted_columns": []})[0]
    go, reason = should_retrain(params, 10, {"drift_share": 0.5, "drifted_columns": ["a"]})
    assert go and "drift" in reason


def test_drop_zone_ignores_hidden_partial_files(tmp_path: Path) -> None:
    params = _params()
    zone = B.incoming_dir(tmp_path, "t")
    zone.mkdir(parents=True)
    (zone / ".upload.csv.partial").write_text("a,b\n")
    (zone / "march.csv").write_text("a,b\n1,2\n")
    arrivals = B.find_arrivals(tmp_path, "t", params.task("t"))
    assert [a.paths[0].name for a in arrivals] == ["march.csv"]


def test_bad_batch_goes_to_quarantine_with_its_report(tmp_path: Path) -> None:
    params = _params()
    ref = _reference(50)
    zone = B.incoming_dir(tmp_path, "t")
    zone.mkdir(parents=True)
    ref.drop(columns=["hours"]).to_csv(zone / "bad.csv", index=False)
    _trained_on(tmp_path, "t", ref)
    arrival, report, batch = _validate(tmp_path, params, "t")
    assert batch is None and "missing column(s) ['hours']" in report.errors[0]
    where = B.quarantine(tmp_path, arrival, report)
    assert not (zone / "bad.csv").exists() and (where / "bad.csv").exists()
    assert json.loads((where / "report.json").read_text())["status"] == "failed"


def test_non_numeric_value_in_a_batch_is_rejected(tmp_path: Path) -> None:
    params = _params()
    ref = _reference(50)
    zone = B.incoming_dir(tmp_path, "t")
    zone.mkdir(parents=True)
    bad = ref.copy().astype({"age": object})
    bad.loc[3, "age"] = "forty"
    bad.to_csv(zone / "typo.csv", index=False)
    _trained_on(tmp_path, "t", ref)
    _, report, batch = _validate(tmp_path, params, "t")
    assert batch is None and any("'forty'" in e and "line 5" in e for e in report.errors)


def test_good_batch_is_stored_and_pending_until_ingested(tmp_path: Path) -> None:
    params = _params()
    ref = _reference(50)
    zone = B.incoming_dir(tmp_path, "t")
    zone.mkdir(parents=True)
    _reference(20, seed=3).to_csv(zone / "april.csv", index=False)
    _trained_on(tmp_path, "t", ref)
    arrival, report, batch = _validate(tmp_path, params, "t")
    assert not report.errors and len(batch) == 20
    batches = kind_of(params.task("t")).new_batches()
    stored = batches.accept(tmp_path, arrival, batch)
    assert stored.exists() and not (zone / "april.csv").exists()
    assert batches.count(stored) == 20
    assert [p.name for p in B.pending_batches(tmp_path, "t")] == [stored.name]
    raw = tmp_path / "data" / "raw" / "t"
    (raw / "data_report.json").write_text(json.dumps({"batches": [B.batch_id(stored)]}))
    assert B.pending_batches(tmp_path, "t") == []


def test_image_batch_with_an_unknown_class_is_rejected(tmp_path: Path) -> None:
    params = parse_params({
        "tasks": ["img"],
        "img": {"kind": "image", "source": {"path": "imgs"}, "split": {}, "preprocess": {}, "model": {}, "train": {}},
    })  # fmt: skip
    zone = B.incoming_dir(tmp_path, "img")
    (zone / "cat").mkdir(parents=True)
    Image.new("L", (8, 8), 128).save(zone / "cat" / "a.png")
    processed = tmp_path / "data" / "processed" / "img"  # preprocess@img records the task's classes
    processed.mkdir(parents=True)
    (processed / "schema.json").write_text(json.dumps({"kind": "image", "target": {"classes": ["0", "1"]}}))
    _, report, records = _validate(tmp_path, params, "img")
    assert not records and "not classes of this task" in report.errors[0]


def test_table_batch_with_an_unknown_label_is_rejected(tmp_path: Path) -> None:
    params = _params()
    ref = _reference(50)
    zone = B.incoming_dir(tmp_path, "t")
    zone.mkdir(parents=True)
    new = _reference(20, seed=3)
    new.loc[[4, 5], "y"] = "maybe"
    new.to_csv(zone / "may.csv", index=False)
    _trained_on(tmp_path, "t", ref)
    _, report, batch = _validate(tmp_path, params, "t")
    assert batch is None and "labels ['maybe'] are not classes of this task" in report.errors[0]


def test_table_batch_of_one_known_class_is_accepted(tmp_path: Path) -> None:
    params = _params()
    zone = B.incoming_dir(tmp_path, "t")
    zone.mkdir(parents=True)
    new = _reference(20, seed=3)
    new["y"] = "yes"
    new.to_csv(zone / "june.csv", index=False)
    _trained_on(tmp_path, "t", _reference(50))
    _, report, batch = _validate(tmp_path, params, "t")
    assert not report.errors and len(batch) == 20


def test_table_batch_with_an_unreadable_date_is_rejected(tmp_path: Path) -> None:
    params = _params()
    ref = _reference(60)
    ref["signup"] = pd.date_range("2023-01-01", periods=60).strftime("%Y-%m-%d")
    zone = B.incoming_dir(tmp_path, "t")
    zone.mkdir(parents=True)
    new = ref.head(10).copy()
    new.loc[3, "signup"] = "not a date"
    new.to_csv(zone / "july.csv", index=False)
    _trained_on(tmp_path, "t", ref)
    report_file = tmp_path / "data" / "raw" / "t" / "data_report.json"  # ingest records the date columns
    report_file.write_text(json.dumps({**json.loads(report_file.read_text()), "dates": ["signup"]}))
    _, report, batch = _validate(tmp_path, params, "t")
    assert batch is None and any("'not a date' is not a date" in e for e in report.errors)


# --------------------------------------------------------------------------- image batches: errors by check name
def _image_params() -> object:
    return parse_params({
        "tasks": ["img"],
        "img": {"kind": "image", "source": {"path": "imgs"}, "split": {}, "preprocess": {}, "model": {}, "train": {}},
    })  # fmt: skip


def _image_task(root: Path, classes: tuple[str, ...] = ("0", "1")) -> None:
    processed = root / "data" / "processed" / "img"  # preprocess@img records the task's classes
    processed.mkdir(parents=True)
    (processed / "schema.json").write_text(json.dumps({"kind": "image", "target": {"classes": list(classes)}}))


def test_image_batch_errors_are_chosen_by_check_name_not_message_text(tmp_path: Path) -> None:
    """A batch of one class is fine (the dataset-wide checks 'classes' and 'class_folders' do not apply);
    a corrupt image and a stray file are not. The project folder's name holds the words the old filter
    matched ('decoded'), which must not turn the one-class notice into a rejection."""
    root = tmp_path / "images-decoded-here"
    params = _image_params()
    _image_task(root)
    zone = B.incoming_dir(root, "img")
    (zone / "1").mkdir(parents=True)
    for i in range(3):
        Image.new("L", (8, 8), 40 * i).save(zone / "1" / f"ok{i}.png")
    _, report, records = _validate(root, params, "img")
    assert len(records) == 3 and report.errors == []
    ignored = [c for c in report.checks if not c["passed"]]
    assert {c["check"] for c in ignored if "ignored" in c} == {"classes"}
    assert all("ignored" in c for c in ignored if c["check"] in ("classes", "class_folders"))

    (zone / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (zone / "1" / "notes.txt").write_text("hello")
    (zone / "0").mkdir()  # an empty class folder: 'class_folders', which a batch need not pass
    _, report, records = _validate(root, params, "img")
    assert len(records) == 3
    failed = {c["check"]: c for c in report.checks if not c["passed"] and c["detail"] in report.errors}
    assert sorted(failed) == ["image_files", "images_decode"]
    assert len(report.errors) == 2  # exactly those two: no summary line, no dataset-wide check
    assert "broken.png" in failed["images_decode"]["detail"] and "notes.txt" in failed["image_files"]["detail"]
    # every error a batch can produce is a failed check with a name
    for error in report.errors:
        assert any(c["check"] and not c["passed"] and c["detail"] == error for c in report.checks)


def test_image_batch_filter_keeps_every_error_but_the_dataset_wide_ones() -> None:
    from torchcycle.data.validate import Report
    from torchcycle.kinds.image.batches import DATASET_CHECKS, batch_errors

    report = Report(kind="image")
    report.fail("images_decode", "a.png: cannot be decoded")
    report.fail("classes", "found 1 class folder(s); a classifier needs at least two")
    report.fail("class_folders", "x: class folder(s) ['2'] hold no valid image; decoded nothing")
    report.fail("layout", "classes in the wrong place")  # a message naming a dataset-wide check's topic
    report.check("images_decode", False, "1 images decode")  # a summary check: no error of its own
    report.errors.append("an error recorded without a check")
    assert batch_errors(report) == ["a.png: cannot be decoded", "classes in the wrong place",
                                    "an error recorded without a check"]
    assert {"classes", "class_folders"} == DATASET_CHECKS


def test_image_ingest_keeps_each_batch_report_and_rejects_a_broken_batch(tmp_path: Path) -> None:
    from torchcycle.errors import DataValidationError
    from torchcycle.kinds.image.ingest import ingest
    from torchcycle.paths import TaskPaths

    params = _image_params()
    cfg = params.task("img")
    for label in ("0", "1"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), 20 * i + 100 * int(label)).save(tmp_path / "imgs" / label / f"{i}.png")
    batch = B.batches_dir(tmp_path, "img") / "batch-20250101T000000-000001"
    (batch / "1").mkdir(parents=True)
    for i in range(2):
        Image.new("L", (8, 8), 200).save(batch / "1" / f"new{i}.png")
    paths = TaskPaths("img", tmp_path)
    ingest(cfg, paths, tmp_path, seed=0)
    data_report = json.loads((paths.raw / "data_report.json").read_text())
    assert data_report["batches"] == [batch.name]
    kept = data_report["batch_reports"][batch.name]
    assert kept["status"] == "passed" and kept["summary"]["images"] == 2
    assert kept["summary"]["root"] == f"data/batches/img/{batch.name}"
    assert {c["check"] for c in kept["checks"] if "ignored" in c} == {"classes"}
    assert str(tmp_path) not in json.dumps(kept)  # the data report reads the same on every machine
    assert data_report["images"] == 14

    (batch / "1" / "new0.png").write_bytes(b"truncated")
    with pytest.raises(DataValidationError, match=f"(?s)accepted batch data/batches/img/{batch.name}.*new0.png"):
        ingest(cfg, paths, tmp_path, seed=0)
    assert json.loads((paths.raw / "data_report.json").read_text()) == data_report  # the last good data stays


def test_a_stored_batch_without_its_dvc_file_is_unversioned(tmp_path: Path) -> None:
    folder = B.batches_dir(tmp_path, "t")
    folder.mkdir(parents=True)
    for name in ("batch-1-a.parquet", "batch-2-b.parquet"):
        (folder / name).write_bytes(b"x")
    (folder / "batch-1-a.parquet.dvc").write_text("outs: []\n")
    (folder / ".gitignore").write_text("/batch-1-a.parquet\n")
    assert [p.name for p in B.unversioned_batches(tmp_path, "t")] == ["batch-2-b.parquet"]


# --------------------------------------------------------------------------- one DVC command at a time
def test_dvc_lock_serialises_threads_and_processes_and_is_reentrant(tmp_path: Path) -> None:
    import itertools
    import subprocess
    import sys
    import threading
    import time

    from torchcycle.retraining import DVC_LOCK_FILE, dvc_lock

    spans: list[tuple[float, float]] = []

    def hold() -> None:
        with dvc_lock(tmp_path), dvc_lock(tmp_path):  # reentrant within a thread
            start = time.monotonic()
            time.sleep(0.15)
            spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    spans.sort()
    assert len(spans) == 3 and all(a[1] <= b[0] for a, b in itertools.pairwise(spans))

    lock_file = tmp_path / ".dvc" / "tmp" / DVC_LOCK_FILE
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    sys.exit(3)")
    with dvc_lock(tmp_path):
        assert subprocess.run([sys.executable, "-c", probe, str(lock_file)]).returncode == 3  # another process waits
    assert subprocess.run([sys.executable, "-c", probe, str(lock_file)]).returncode == 0
