"""Reading raw sources (built-in datasets, CSV/Parquet, image folders) and the validation rules run on them."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from torchcycle.config import TabularPreprocess, TabularSource
from torchcycle.data.sources import builtin_file, read_table
from torchcycle.errors import DataValidationError
from torchcycle.kinds.image.sources import load_mnist, scan_image_folder
from torchcycle.kinds.image.validate import validate_images
from torchcycle.kinds.tabular.sources import ADULT_COLUMNS, load_adult
from torchcycle.kinds.tabular.validate import validate_tabular

NA = ["?", ""]
EXTENSIONS = [".png", ".jpg", ".jpeg"]


# --------------------------------------------------------------------------- helpers
def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def validate_files(files: dict[str, Path], **source_kw):
    """read_table + validate_tabular exactly as the ingest stage chains them."""
    source = TabularSource(path=files["train"].name, na_values=NA, **source_kw)
    frames = {
        split: (f, read_table(f, sep=source.csv_sep, na_values=source.na_values))
        for split, f in files.items()
    }
    return validate_tabular(frames, source, TabularPreprocess())


def validate_frames(frames: dict[str, pd.DataFrame], tmp_path: Path, **source_kw):
    source = TabularSource(path="train.csv", **source_kw)
    named = {split: (tmp_path / f"{split}.csv", df) for split, df in frames.items()}
    return validate_tabular(named, source, TabularPreprocess())


def make_image_folder(root: Path, counts: dict[str, int], size: tuple[int, int] = (4, 5)) -> Path:
    """<root>/<class>/<i>.png with tiny greyscale images."""
    rng = np.random.default_rng(0)
    for label, n in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def check_images(root: Path):
    return validate_images(root, scan_image_folder(root, EXTENSIONS), EXTENSIONS)


def raised_message(report) -> str:
    with pytest.raises(DataValidationError) as info:
        report.raise_if_failed()
    return str(info.value)


# --------------------------------------------------------------------------- built-in datasets
@pytest.fixture(scope="module")
def adult():
    return load_adult()


def _adult_names() -> dict[str, list[str] | None]:
    """The attributes adult.names documents, in file order: their levels, or None for a number."""
    text = builtin_file("adult", "adult.names").read_text()
    attributes = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z-]+): (.+)\.", line.strip())
        if match:
            name, spec = match.groups()
            attributes[name] = None if spec == "continuous" else [v.strip() for v in spec.split(",")]
    return attributes


def _data_lines(name: str) -> list[str]:
    with gzip.open(builtin_file("adult", name), "rt") as f:
        return [line for line in f.read().splitlines() if line.strip() and not line.startswith("|")]


def test_load_adult_has_both_official_files(adult):
    """Every record of both files, in the columns and types adult.names documents."""
    documented = _adult_names()
    assert list(documented) == ADULT_COLUMNS[:-1] and ADULT_COLUMNS[-1] == "income"
    for frame, file in ((adult.train, "adult.data.gz"), (adult.test, "adult.test.gz")):
        lines = _data_lines(file)  # the test file's "|1x3 Cross validator" header is not a record
        assert len(frame) == len(lines)
        assert list(frame.columns) == ADULT_COLUMNS
        for column, levels in documented.items():
            if levels is None:
                assert frame[column].dtype == np.int64, column  # no missing numbers in either file
            else:
                assert not pd.api.types.is_numeric_dtype(frame[column]), column
                assert set(frame[column].dropna()) <= set(levels), column
        # first and last records exactly as written, with "?" as missing and the label's period dropped
        for i in (0, -1):
            fields = [v.strip() for v in lines[i].split(",")]
            fields[-1] = fields[-1].rstrip(".")
            row = frame.iloc[i]
            expected = [None if v == "?" else int(v) if documented.get(c, "") is None else v
                        for c, v in zip(ADULT_COLUMNS, fields)]
            assert [None if pd.isna(v) else v for v in row.tolist()] == expected
    assert (len(adult.train), len(adult.test)) == (32_561, 16_281)  # the counts UCI publishes


def test_load_adult_test_labels_have_no_trailing_period(adult):
    assert set(adult.test["income"]) == {"<=50K", ">50K"}
    assert set(adult.train["income"]) == {"<=50K", ">50K"}


def test_load_adult_reads_question_marks_as_missing(adult):
    assert adult.train["workclass"].isna().any()
    assert not (adult.train["workclass"] == "?").any()
    assert not adult.train["workclass"].dropna().str.startswith(" ").any()  # separator whitespace stripped


def test_load_mnist_is_5000_balanced_digits():
    pixels, labels = load_mnist()

    assert pixels.shape == (5000, 28, 28)
    assert pixels.dtype == np.uint8
    assert labels.shape == (5000,)
    assert np.array_equal(np.bincount(labels), np.full(10, 500))
    assert pixels.max() > 200  # real strokes, not an all-black array


# --------------------------------------------------------------------------- read_table
def test_read_table_csv(tmp_path):
    path = write_csv(tmp_path / "t.csv", "age,city,y\n31, Paris,yes\n?,Rome,no\n")

    df = read_table(path, na_values=NA)

    assert list(df.columns) == ["age", "city", "y"]
    assert df["age"].iloc[0] == 31
    assert pd.isna(df["age"].iloc[1])
    assert df["city"].tolist() == ["Paris", "Rome"]


def test_read_table_parquet(tmp_path):
    original = pd.DataFrame({"age": [31, 42], "city": ["Paris", None], "y": ["yes", "no"]})
    original.to_parquet(tmp_path / "t.parquet", index=False)

    df = read_table(tmp_path / "t.parquet")

    assert df["age"].tolist() == [31, 42]
    assert df["city"].iloc[0] == "Paris"
    assert pd.isna(df["city"].iloc[1])


def test_read_table_malformed_csv_names_file_and_line(tmp_path):
    path = write_csv(tmp_path / "bad.csv", "a,b,y\n1,2,x\n3,4,5,y\n5,6,x\n")

    with pytest.raises(DataValidationError, match="malformed CSV") as info:
        read_table(path)
    assert str(path) in str(info.value)
    assert "line 3" in str(info.value)


def test_read_table_unsupported_extension(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text("[]")

    with pytest.raises(DataValidationError, match=r"unsupported file type '\.json'") as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_read_table_missing_file(tmp_path):
    with pytest.raises(DataValidationError, match="file not found"):
        read_table(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- validate_tabular
GOOD_CSV = "age,hours,city,y\n25,40,a,no\n32,?,b,yes\n47,50,?,no\n51,60,b,yes\n38,45,a,no\n29,35,c,yes\n"


def test_validate_tabular_passes_and_returns_typed_frames(tmp_path):
    train = write_csv(tmp_path / "train.csv", GOOD_CSV)

    report, cleaned, roles = validate_files({"train": train}, target="y")

    assert report.to_dict()["status"] == "passed"
    assert report.errors == []
    assert roles.numeric == ["age", "hours"]
    assert roles.categorical == ["city"]
    df = cleaned["train"]
    assert df["age"].dtype == np.float64
    assert df["hours"].dtype == np.float64
    assert pd.api.types.is_string_dtype(df["city"])
    assert df["hours"].isna().sum() == 1
    assert report.summary["target_type"] == "classification"
    assert sorted(report.summary["target_distribution"]["train"]["class_counts"]) == ["no", "yes"]
    assert report.summary["rows"] == {"train": 6}


def test_missing_target_column_names_it_and_lists_columns(tmp_path):
    train = write_csv(tmp_path / "train.csv", GOOD_CSV)

    report, _, roles = validate_files({"train": train}, target="label")

    assert roles is None
    message = raised_message(report)
    assert "target column 'label' not found" in message
    assert "['age', 'hours', 'city', 'y']" in message
    assert str(train) in message


def test_single_class_target_is_an_error(tmp_path):
    train = write_csv(tmp_path / "train.csv", "x,y\n1,a\n2,a\n3,a\n")

    report, _, _ = validate_files({"train": train}, target="y")

    message = raised_message(report)
    assert "single class ('a')" in message


def test_non_numeric_value_in_numeric_column_names_line_and_column(tmp_path):
    train = write_csv(tmp_path / "train.csv", "age,city,y\n1,a,p\n2,b,n\nabc,b,p\n4,c,n\n5,c,p\n")

    report, _, _ = validate_files({"train": train}, target="y", numeric=["age"])

    message = raised_message(report)
    assert f"{train} line 4, column 'age'" in message
    assert "'abc' is not a number" in message


def test_non_numeric_line_number_counts_rows_dropped_for_missing_target(tmp_path):
    # line 3 has no target and is dropped; 'abc' is still on line 4 of the file
    train = write_csv(tmp_path / "train.csv", "age,city,y\n1,a,p\n2,b,\nabc,b,p\n4,c,n\n5,c,n\n")

    report, _, _ = validate_files({"train": train}, target="y", numeric=["age"])

    assert f"{train} line 4, column 'age'" in raised_message(report)


def test_too_many_missing_values_is_an_error(tmp_path):
    train = write_csv(tmp_path / "train.csv", "x,z,y\n1,1,a\n?,2,b\n?,3,a\n?,4,b\n")

    report, _, _ = validate_files({"train": train}, target="y")

    message = raised_message(report)
    assert "column 'x': 75% of values are missing" in message
    assert "column 'z'" not in message


def test_missing_fraction_limit_is_configurable(tmp_path):
    train = write_csv(tmp_path / "train.csv", "x,z,y\n1,1,a\n?,2,b\n?,3,a\n?,4,b\n")

    report, _, _ = validate_files({"train": train}, target="y", max_missing_fraction=0.8)

    assert report.errors == []


def test_rows_with_missing_target_are_dropped_and_counted(tmp_path):
    train = write_csv(tmp_path / "train.csv", "x,y\n1,a\n2,?\n3,b\n4,a\n5,\n6,b\n")

    report, cleaned, _ = validate_files({"train": train}, target="y")

    assert report.errors == []
    assert cleaned["train"]["x"].tolist() == [1, 3, 4, 6]
    assert report.summary["rows"] == {"train": 4}
    policy = [c for c in report.checks if c["check"] == "target_missing_policy"]
    assert "dropped 2 row(s)" in policy[0]["detail"]


def test_test_labels_unseen_in_train_are_an_error(tmp_path):
    train = write_csv(tmp_path / "train.csv", "x,y\n1,a\n2,b\n3,a\n4,b\n")
    test = write_csv(tmp_path / "test.csv", "x,y\n1,a\n2,c\n3,d\n")

    report, _, _ = validate_files({"train": train, "test": test}, target="y")

    message = raised_message(report)
    assert str(test) in message
    assert "labels ['c', 'd'] never appear in the training file" in message


def test_integer_labels_match_between_train_with_missing_target_and_test(tmp_path):
    train = write_csv(tmp_path / "train.csv", "x,y\n1,0\n2,1\n3,\n4,0\n5,1\n")
    test = write_csv(tmp_path / "test.csv", "x,y\n1,0\n2,1\n")

    report, _, _ = validate_files({"train": train, "test": test}, target="y")

    assert report.errors == []


def test_integer_coded_categorical_is_spelled_the_same_in_train_and_test(tmp_path):
    train = write_csv(tmp_path / "train.csv", "x,zip,y\n1,10,a\n2,20,b\n3,,a\n4,10,b\n")
    test = write_csv(tmp_path / "test.csv", "x,zip,y\n1,10,a\n2,20,b\n")

    report, cleaned, _ = validate_files({"train": train, "test": test}, target="y", categorical=["zip"])

    assert report.errors == []
    assert set(cleaned["test"]["zip"]) <= set(cleaned["train"]["zip"].dropna())


def test_test_file_with_different_columns_is_an_error(tmp_path):
    frames = {
        "train": pd.DataFrame({"x": [1, 2, 3, 4], "y": ["a", "b", "a", "b"]}),
        "test": pd.DataFrame({"x": [1, 2], "w": [0, 0], "y": ["a", "b"]}),
    }

    report, _, _ = validate_frames(frames, tmp_path, target="y")

    assert "columns differ from train.csv" in raised_message(report)


def test_declared_column_that_does_not_exist_is_an_error(tmp_path):
    frames = {"train": pd.DataFrame({"x": [1, 2, 3, 4], "y": ["a", "b", "a", "b"]})}

    report, _, _ = validate_frames(frames, tmp_path, target="y", numeric=["x", "height"])

    message = raised_message(report)
    assert "['height'] named in `source.numeric` are missing" in message


# --------------------------------------------------------------------------- image folders
def test_image_folder_with_two_classes_passes(tmp_path):
    root = make_image_folder(tmp_path / "images", {"cat": 2, "dog": 3})

    items = scan_image_folder(root, EXTENSIONS)
    report, records = validate_images(root, items, EXTENSIONS)

    assert [(p.parent.name, p.name) for p, _ in items] == [
        ("cat", "0.png"), ("cat", "1.png"), ("dog", "0.png"), ("dog", "1.png"), ("dog", "2.png"),
    ]  # fmt: skip
    assert [label for _, label in items] == ["cat", "cat", "dog", "dog", "dog"]
    assert report.errors == []
    report.raise_if_failed()
    assert len(records) == 5
    assert {(r.width, r.height, r.mode) for r in records} == {(5, 4, "L")}
    assert report.summary["class_counts"] == {"cat": 2, "dog": 3}


def test_hidden_files_are_ignored(tmp_path):
    root = make_image_folder(tmp_path / "images", {"cat": 1, "dog": 1})
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "cat" / ".DS_Store").write_bytes(b"\x00\x01")

    report, records = check_images(root)

    assert report.errors == []
    assert len(records) == 2


def test_corrupt_png_is_an_error_naming_it(tmp_path):
    root = make_image_folder(tmp_path / "images", {"cat": 2, "dog": 2})
    corrupt = root / "dog" / "broken.png"
    corrupt.write_bytes(os.urandom(128))

    report, records = check_images(root)

    assert len(records) == 4
    message = raised_message(report)
    assert "1 problem(s)" in message
    assert f"{corrupt}: cannot be decoded as an image" in message


def test_truncated_png_is_an_error_naming_it(tmp_path):
    root = make_image_folder(tmp_path / "images", {"cat": 2, "dog": 2}, size=(64, 64))
    truncated = root / "cat" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:100])

    report, _ = check_images(root)

    assert f"{truncated}: cannot be decoded" in raised_message(report)


def test_non_image_file_in_class_folder_is_an_error_naming_it(tmp_path):
    root = make_image_folder(tmp_path / "images", {"cat": 2, "dog": 2})
    notes = root / "cat" / "notes.txt"
    notes.write_text("collected in 2021")

    report, _ = check_images(root)

    message = raised_message(report)
    assert f"{notes}: not an image file" in message
    assert "'.txt'" in message


def test_empty_class_folder_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "images", {"cat": 2})
    (root / "dog").mkdir()

    report, _ = check_images(root)

    assert "class folder(s) ['dog'] hold no valid image" in raised_message(report)


def test_single_class_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "images", {"cat": 3})

    report, _ = check_images(root)

    assert "found 1 class folder(s) ['cat']; a classifier needs at least two" in raised_message(report)


def test_files_directly_under_root_are_an_error(tmp_path):
    root = make_image_folder(tmp_path / "images", {"cat": 2, "dog": 2})
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(root / "stray.png")

    with pytest.raises(DataValidationError, match="files directly under the image root") as info:
        scan_image_folder(root, EXTENSIONS)
    assert "stray.png" in str(info.value)


def test_missing_image_folder_is_an_error(tmp_path):
    with pytest.raises(DataValidationError, match="image folder not found"):
        scan_image_folder(tmp_path / "nowhere", EXTENSIONS)
