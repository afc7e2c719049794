"""ONNX export: the file (the model followed by its target head) gives the same probabilities as torch
for any batch size, carries its preprocessing state and fitted target, and the shared Predictor turns raw
records / image files into those probabilities with clear errors for bad input."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.unit.conftest import OUTPUT, classifier_target, export, make_tabular, raw_frame  # noqa: F401
from torchcycle.config import TabularPreprocess
from torchcycle.errors import PredictionInputError
from torchcycle.export import onnx as X
from torchcycle.kinds.image import decode, image_files
from torchcycle.kinds.image.preprocess import transform_images
from torchcycle.kinds.tabular import TABULAR, read_records
from torchcycle.kinds.tabular import preprocess as pp
from torchcycle.models.mlp import TabularMLP
from torchcycle.serving import Predictor
from torchcycle.targets.classification import CLASSIFICATION
from torchcycle.targets.regression import REGRESSION


@pytest.mark.parametrize("batch", [1, 7, 300])
def test_tabular_onnx_matches_torch_for_any_batch_size(tabular, batch) -> None:
    model, state, blob = tabular
    x_num, x_cat = pp.transform_tabular(raw_frame(batch, seed=batch), state)
    session = X.ort_session(blob)
    onnx_p = X.run_session(session, (x_num, x_cat))
    torch_p = X.torch_outputs(model, (torch.from_numpy(x_num), torch.from_numpy(x_cat)))
    report = CLASSIFICATION.parity(torch_p, onnx_p, 1e-5)
    assert report["passed"] and report["rows"] == batch, report
    np.testing.assert_allclose(onnx_p.sum(1), 1.0, atol=1e-5)  # probabilities, softmax included


def test_image_onnx_matches_torch_and_documents_its_input(image) -> None:
    model, _, blob = image
    x = torch.randn(5, 1, 12, 12)
    session = X.ort_session(blob)
    assert CLASSIFICATION.parity(X.torch_outputs(model, (x,)), X.run_session(session, (x.numpy(),)), 1e-5)["passed"]
    meta = X.read_metadata(session)
    described = json.loads(meta[X.METADATA_INPUT])
    assert (described["channels"], described["height"], described["width"]) == (1, 12, 12)
    assert described["mean"] == [0.3] and described["raw_value_range"] == [0, 255]


def test_parity_fails_on_a_different_class_or_a_large_difference() -> None:
    a = np.array([[0.6, 0.4], [0.2, 0.8]])
    assert CLASSIFICATION.parity(a, a + 1e-6, 1e-4)["passed"]
    flipped = CLASSIFICATION.parity(a, np.array([[0.49, 0.51], [0.2, 0.8]]), 1.0)
    assert not flipped["passed"] and flipped["class_mismatches"] == 1
    assert not CLASSIFICATION.parity(a, a + 1e-3, 1e-4)["passed"]


def test_predictor_takes_raw_records_through_the_shared_preprocessing(tabular, tmp_path) -> None:
    model, state, blob = tabular
    frame = raw_frame(9, seed=3)
    predictor = Predictor(blob)
    expected = X.torch_outputs(model, tuple(torch.from_numpy(a) for a in pp.transform_tabular(frame, state)))
    np.testing.assert_allclose(predictor.outputs(frame), expected, atol=1e-5)
    frame.to_csv(tmp_path / "rows.csv", index=False)
    table = predictor.predict_path(tmp_path / "rows.csv")
    assert list(table.columns) == ["predicted", "proba_no", "proba_yes"] and len(table) == 9
    assert set(table["predicted"]) <= {"no", "yes"}


def test_bad_records_name_the_problem(tabular, tmp_path) -> None:
    predictor = Predictor(tabular[2])
    with pytest.raises(PredictionInputError, match=r"missing column\(s\) \['hours'\]"):
        predictor.outputs(raw_frame(3).drop(columns="hours"))
    wrong = raw_frame(3).astype({"age": object})
    wrong.loc[1, "age"] = "old"
    with pytest.raises(PredictionInputError, match="column 'age', row 1: 'old' is not a number"):
        predictor.outputs(wrong)
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(PredictionInputError, match="unsupported file type"):
        read_records(tmp_path / "x.txt")
    with pytest.raises(PredictionInputError, match="no such file"):
        read_records(tmp_path / "absent.csv")
    with pytest.raises(PredictionInputError, match=r"missing column\(s\) \['age', 'hours', 'city', 'plan'\]"):
        predictor.outputs(pd.DataFrame({"image": [b"\x89PNG"]}))  # image input to a table model


def test_predictor_reads_a_model_exported_before_targets_had_a_type(tabular) -> None:
    graph, state, _ = tabular
    frame = raw_frame()
    example = tuple(torch.from_numpy(a) for a in pp.transform_tabular(frame, state))
    meta = X.metadata_for(state, classifier_target(["no", "yes"]), TABULAR.describe_input(state))
    del meta[X.METADATA_TARGET]  # only the class names, as older exports wrote them
    predictor = Predictor(X.export_onnx(graph, example, TABULAR.input_names(state), OUTPUT, meta))
    assert predictor.target is CLASSIFICATION and predictor.target_state["type"] == "classification"
    assert predictor.classes == ["no", "yes"]
    assert list(predictor.predict(raw_frame(3)).columns) == ["predicted", "proba_no", "proba_yes"]


def test_regression_graph_outputs_prediction_and_interval_in_target_units(tmp_path) -> None:
    frame = raw_frame()
    state = pp.fit_tabular(frame, ["age", "hours"], ["city", "plan"], TabularPreprocess())
    target_state = {**REGRESSION.fit(frame["hours"] * 10, SimpleNamespace(target="pay", target_transform="log")),
                    "halfwidth": 0.2}
    torch.manual_seed(0)
    model = TabularMLP(2, pp.cardinalities(state), 1, [8]).eval()
    inputs = tuple(torch.from_numpy(a) for a in pp.transform_tabular(frame, state))
    graph = TABULAR.onnx_module(model, REGRESSION.head(target_state)).eval()
    blob = X.export_onnx(graph, inputs, TABULAR.input_names(state), OUTPUT,
                         X.metadata_for(state, target_state, TABULAR.describe_input(state)))

    predictor = Predictor(blob)
    outputs = predictor.outputs(frame)
    assert predictor.target is REGRESSION and predictor.classes == []
    assert REGRESSION.parity(X.torch_outputs(graph, inputs), outputs, 1e-5)["passed"]
    with torch.inference_mode():
        scaled = model(*inputs)[:, 0].numpy()
    np.testing.assert_allclose(outputs[:, 0], REGRESSION.decode(scaled, target_state), rtol=1e-4)
    np.testing.assert_allclose(outputs[:, 1:], outputs[:, :1] * np.exp([[-0.2, 0.2]]), rtol=1e-4)
    frame.head(4).to_csv(tmp_path / "rows.csv", index=False)
    table = predictor.predict_path(tmp_path / "rows.csv")
    assert list(table.columns) == ["predicted", "lower", "upper"] and len(table) == 4


def test_predictor_reads_image_files_and_folders(image, tmp_path) -> None:
    model, state, blob = image
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 16), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    predictor = Predictor(blob)
    table = predictor.predict_path(tmp_path)
    assert len(table) == 3 and table["path"].str.endswith(".png").all()
    pixels = decode(pd.DataFrame({"image": image_files(tmp_path)}), state)
    expected = X.torch_outputs(model, (torch.from_numpy(transform_images(pixels, state)),))
    np.testing.assert_allclose(table[[f"proba_{c}" for c in "012"]].to_numpy(), expected, atol=1e-5)

    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(PredictionInputError, match=r"broken\.png: cannot be decoded as an image"):
        predictor.predict_path(tmp_path / "broken.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictionInputError, match="no image files"):
        image_files(tmp_path / "empty")


def test_benchmark_reports_both_runtimes(tabular) -> None:
    model, state, blob = tabular
    inputs = tuple(torch.from_numpy(a) for a in pp.transform_tabular(raw_frame(20), state))
    bench = X.benchmark(model, X.ort_session(blob), inputs, repeats=10, min_seconds=0.01)
    for batch in ("batch1", "batch256"):
        assert bench[batch]["torch_ms"] > 0 and bench[batch]["onnxruntime_ms"] > 0
        assert bench[batch]["speedup"] == pytest.approx(bench[batch]["torch_ms"] / bench[batch]["onnxruntime_ms"])
        assert "rounds" not in bench[batch]
    rounds = X.benchmark(model, X.ort_session(blob), inputs, repeats=10, min_seconds=0.01, rounds=3)
    for batch in ("batch1", "batch256"):
        runs = rounds[batch]["rounds"]
        assert len(runs) == 3
        for key in ("torch_ms", "onnxruntime_ms", "speedup"):
            assert rounds[batch][key] == pytest.approx(np.median([r[key] for r in runs]))


def test_exported_tabular_graph_gathers_weight_columns_instead_of_building_one_hot(tabular) -> None:
    import onnx

    ops = {node.op_type for node in onnx.load_from_string(tabular[2]).graph.node}
    assert "Gather" in ops and not ops & {"Equal", "OneHot"}, ops


@pytest.mark.parametrize("kwargs", [
    {"hidden_sizes": [16, 8]},
    {"hidden_sizes": []},
    {"hidden_sizes": [16, 8], "residual": True, "batch_norm": True},
    {"hidden_sizes": [16], "numeric_embedding": "periodic", "numeric_embedding_dim": 4, "periodic_frequencies": 3},
    {"hidden_sizes": [16], "numeric_embedding": "ple", "numeric_embedding_dim": 4,
     "numeric_bin_edges": [[-2.0, 0.0, 2.0], [-1.0, 1.0], [0.0, 0.5, 1.0, 3.0]]},
])  # fmt: skip
def test_gathered_first_layer_is_the_same_function_as_the_dense_one_hot(kwargs) -> None:
    torch.manual_seed(0)
    model = TabularMLP(3, [4, 2, 5], 3, **kwargs).eval()
    x_num, x_cat = torch.randn(9, 3), torch.stack([torch.randint(0, c, (9,)) for c in (4, 2, 5)], dim=1)
    with torch.inference_mode():
        dense = model(x_num, x_cat)
        gathered = model._forward_gathered(x_num, x_cat)
    torch.testing.assert_close(gathered, dense, rtol=1e-5, atol=1e-6)


def test_runtimes_are_timed_in_alternating_blocks() -> None:
    calls: list[str] = []
    times = X._time_side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                 min_repeats=40, min_seconds=0.0, blocks=4)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    timed = calls[10:]  # after 5 warm-up calls each
    switches = sum(x != y for x, y in itertools.pairwise(timed))
    assert timed.count("a") == timed.count("b") == 40 and switches == 7  # a b a b ... in blocks of ten


def declared_png(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares width × height greyscale pixels (one tiny IDAT
    chunk follows): a decompression bomb's shape, without the memory to decode it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("width", "height"), [(6000, 6000), (10_000, 9_500), (100_000, 100_000)])
def test_an_image_declaring_too_many_pixels_is_refused_as_a_decompression_bomb(width, height) -> None:
    """Over our limit only (36 MP), over PIL's warning limit too (95 MP: DecompressionBombWarning) and over
    PIL's error limit (10 GP: DecompressionBombError): each a PredictionInputError naming it, before decoding."""
    import warnings

    from torchcycle.kinds.image.preprocess import ImageTooLargeError, load_image

    blob = declared_png(width, height)
    assert len(blob) < 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageTooLargeError, match=r"uploaded bytes: .*decompression bomb") as info:
            load_image(blob, (12, 12), 1)
    assert isinstance(info.value, PredictionInputError)
    if width * height < 2 * Image.MAX_IMAGE_PIXELS:  # below PIL's own error: our check names the size
        assert f"{width}×{height}" in str(info.value) and "TORCHCYCLE_MAX_IMAGE_PIXELS" in str(info.value)
    with warnings.catch_warnings():  # PIL's warning treated as an error is refused the same way
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageTooLargeError, match="decompression bomb"):
            load_image(blob, (12, 12), 1, name="huge.png")


def test_the_pixel_limit_is_configurable(monkeypatch) -> None:
    from torchcycle.errors import ConfigError
    from torchcycle.kinds.image.preprocess import load_image

    small = declared_png(12, 12)  # declares 144 pixels (its data is too short to decode)
    monkeypatch.setenv("TORCHCYCLE_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(PredictionInputError, match=r"12×12 = 144 pixels is over the limit of 100"):
        load_image(small, (12, 12), 1)
    monkeypatch.setenv("TORCHCYCLE_MAX_IMAGE_PIXELS", "a lot")
    with pytest.raises(ConfigError, match="TORCHCYCLE_MAX_IMAGE_PIXELS='a lot'"):
        load_image(small, (12, 12), 1)
    monkeypatch.delenv("TORCHCYCLE_MAX_IMAGE_PIXELS")
    ok = io_png(np.zeros((20, 30), np.uint8))
    assert load_image(ok, (12, 12), 1).shape == (1, 12, 12)


def io_png(pixels: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_a_decompression_bomb_is_an_input_error_in_decode_files_and_the_cli(image, tmp_path, monkeypatch) -> None:
    """The image kind's decode (HTTP and dashboard), a file for `torchcycle predict`, and the CLI's exit 2."""
    import base64
    from pathlib import Path

    from typer.testing import CliRunner

    from torchcycle import cli, serving
    from torchcycle.tracking import mlflow_run

    _, state, blob = image
    bomb = declared_png(100_000, 100_000)
    good = base64.b64encode(io_png(np.zeros((12, 12), np.uint8))).decode()
    with pytest.raises(PredictionInputError, match=r"column 'image', row 1: uploaded bytes: .*decompression bomb"):
        decode(pd.DataFrame({"image": [good, base64.b64encode(bomb).decode()]}), state)
    (tmp_path / "bomb.png").write_bytes(bomb)
    predictor = Predictor(blob)
    with pytest.raises(PredictionInputError, match=r"bomb\.png: .*decompression bomb"):
        predictor.predict_path(tmp_path / "bomb.png")

    monkeypatch.setattr(serving, "load_registered", lambda task, alias="champion": (predictor, {}))
    monkeypatch.setattr(mlflow_run, "configure", lambda *a, **k: None)
    params = tmp_path / "params.yaml"
    params.write_text((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    result = CliRunner().invoke(cli.app, ["predict", "--task", "mnist", "--input", str(tmp_path / "bomb.png"),
                                          "--params", str(params)])
    assert result.exit_code == 2, result.output
    assert "bomb.png" in result.output and "decompression bomb" in result.output
