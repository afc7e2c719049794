"""The registered model's pyfunc face: saved as mlflow.onnx saves it, loaded by mlflow.pyfunc, it takes
raw records (or image file bytes) and answers what the shared Predictor answers."""

from __future__ import annotations

import base64
import io

import numpy as np
import onnx
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from tests.unit.conftest import image, raw_frame, tabular  # noqa: F401  (fixtures)
from torchcycle import served_model
from torchcycle.export.onnx import run_session
from torchcycle.kinds.image.preprocess import transform_images
from torchcycle.serving import Predictor


def save(blob: bytes, example: pd.DataFrame, path) -> None:
    predictor = Predictor(blob)
    predicted = served_model.RawInputModel(predictor).predict(example)
    served_model.save_model(onnx.load_from_string(blob), str(path),
                            signature=served_model.signature(predictor, example, predicted),
                            input_example=example, pip_requirements=["onnxruntime"], save_as_external_data=False)


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_pyfunc_takes_raw_records_and_the_onnx_flavour_stays(tabular, tmp_path) -> None:  # noqa: F811
    import mlflow.onnx
    import mlflow.pyfunc
    from mlflow.models import Model

    _, _, blob = tabular
    save(blob, raw_frame(2), tmp_path / "m")
    assert Model.load(str(tmp_path / "m")).flavors["python_function"]["loader_module"] == "torchcycle.served_model"
    assert len(mlflow.onnx.load_model(str(tmp_path / "m")).graph.node) > 0

    rows = raw_frame(5, seed=3)
    rows["age"] = rows["age"].astype(int)  # integers where the example had floats
    rows.loc[0, "hours"] = None  # a missing number: filled as in training
    expected = Predictor(blob).predict(rows)
    rows["age"] = rows["age"].astype(object)
    rows.loc[1, "age"] = str(rows.loc[1, "age"])  # numeric text
    served = mlflow.pyfunc.load_model(str(tmp_path / "m")).predict(rows)
    assert list(served.columns) == ["predicted", "proba_no", "proba_yes"]
    np.testing.assert_allclose(served[["proba_no", "proba_yes"]], expected[["proba_no", "proba_yes"]], atol=1e-6)
    assert (served["predicted"] == expected["predicted"]).all()

    loaded = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    with pytest.raises(Exception, match="city"):
        loaded.predict(rows.drop(columns=["city"]))
    rows["age"] = rows["age"].astype(object)
    rows.loc[2, "age"] = "old"
    with pytest.raises(MlflowException, match=r"column 'age', row 2: 'old' is not a number"):
        loaded.predict(rows)


def test_image_model_takes_file_bytes_or_base64(image) -> None:  # noqa: F811
    _, _, blob = image
    predictor = Predictor(blob)
    rng = np.random.default_rng(0)
    files = [png(rng.integers(0, 255, (12, 12), dtype=np.uint8)) for _ in range(3)]
    model = served_model.RawInputModel(predictor)
    from_bytes = model.predict(pd.DataFrame({"image": files}))
    from_base64 = model.predict(pd.DataFrame({"image": [base64.b64encode(f).decode() for f in files]}))
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(f)))[None] for f in files])
    expected = run_session(predictor.session, (transform_images(pixels, predictor.state),))
    np.testing.assert_allclose(from_bytes[["proba_0", "proba_1", "proba_2"]], expected, atol=1e-6)
    pd.testing.assert_frame_equal(from_bytes, from_base64)

    with pytest.raises(MlflowException, match=r"column 'image', row 1: not base64"):
        model.predict(pd.DataFrame({"image": [base64.b64encode(files[0]).decode(), "%%%"]}))
    with pytest.raises(MlflowException, match=r"column 'image', row 0: uploaded bytes: cannot be decoded"):
        model.predict(pd.DataFrame({"image": [b"not an image"]}))
    with pytest.raises(MlflowException, match=r"take a column 'image'"):
        model.predict(pd.DataFrame({"x": [1]}))


def declared_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width × height pixels: a decompression bomb's shape."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_requests_over_the_row_or_byte_limit_are_refused_naming_it(tabular, monkeypatch) -> None:  # noqa: F811
    _, _, blob = tabular
    predictor = Predictor(blob)
    monkeypatch.delenv(served_model.MAX_ROWS_ENV, raising=False)
    monkeypatch.delenv(served_model.MAX_BYTES_ENV, raising=False)
    model = served_model.RawInputModel(predictor)
    assert (model.max_rows, model.max_bytes) == (served_model.DEFAULT_MAX_ROWS, served_model.DEFAULT_MAX_BYTES)

    monkeypatch.setenv(served_model.MAX_ROWS_ENV, "5")
    model = served_model.RawInputModel(predictor)
    assert len(model.predict(raw_frame(5))) == 5
    with pytest.raises(MlflowException, match=r"holds 6 records; the limit is 5 per request \(TORCHCYCLE_MAX_ROWS\)") as info:
        model.predict(raw_frame(6))
    assert info.value.get_http_status_code() == 400

    frame = raw_frame(50)
    size = int(frame.memory_usage(index=False, deep=True).sum())
    model = served_model.RawInputModel(predictor, max_rows=1000, max_bytes=size - 1)
    with pytest.raises(MlflowException, match=r"MiB per request \(TORCHCYCLE_MAX_BYTES\)") as info:
        model.predict(frame)
    assert info.value.get_http_status_code() == 400
    assert len(served_model.RawInputModel(predictor, max_rows=1000, max_bytes=size).predict(frame)) == 50

    from torchcycle.errors import ConfigError

    monkeypatch.setenv(served_model.MAX_ROWS_ENV, "-1")
    with pytest.raises(ConfigError, match="TORCHCYCLE_MAX_ROWS='-1'"):
        served_model.RawInputModel(predictor)


def test_the_scoring_server_answers_400_naming_the_problem(tabular, image, tmp_path, monkeypatch) -> None:  # noqa: F811
    """Through MLflow's own scoring app (what `mlflow models serve` runs): a frame over the row limit, bad
    values and a decompression bomb are 400s whose message names the problem; good rows are answered."""
    import json

    import mlflow.pyfunc
    from fastapi.testclient import TestClient
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
    from mlflow.pyfunc import scoring_server

    monkeypatch.setenv(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.name, "false")  # init sets it; put back afterwards
    monkeypatch.setenv(served_model.MAX_ROWS_ENV, "8")
    _, _, blob = tabular
    save(blob, raw_frame(2), tmp_path / "tab")
    app = TestClient(scoring_server.init(mlflow.pyfunc.load_model(str(tmp_path / "tab"))))

    def post(frame_or_body) -> tuple[int, str]:
        body = frame_or_body if isinstance(frame_or_body, str) else \
            json.dumps({"dataframe_records": json.loads(frame_or_body.to_json(orient="records"))})
        answer = app.post("/invocations", content=body, headers={"Content-Type": "application/json"})
        return answer.status_code, answer.text

    status, text = post(raw_frame(8))
    assert status == 200 and len(json.loads(text)["predictions"]) == 8
    status, text = post(raw_frame(9))
    assert status == 400 and "holds 9 records; the limit is 8" in text and "TORCHCYCLE_MAX_ROWS" in text
    bad = raw_frame(3).astype({"age": object})
    bad.loc[1, "age"] = "old"
    status, text = post(bad)
    assert status == 400 and "column 'age', row 1: 'old' is not a number" in text
    status, text = post(raw_frame(3).drop(columns=["city"]))
    assert status == 400 and "city" in text
    status, text = post("")
    assert status == 400 and "JSON" in text

    _, _, image_blob = image
    save(image_blob, pd.DataFrame({"image": [png(np.zeros((12, 12), np.uint8))]}), tmp_path / "img")
    app = TestClient(scoring_server.init(mlflow.pyfunc.load_model(str(tmp_path / "img"))))
    bomb = base64.b64encode(declared_png(100_000, 100_000)).decode()
    status, text = post(json.dumps({"dataframe_records": [{"image": bomb}]}))
    assert status == 400 and "column 'image', row 0" in text and "decompression bomb" in text


def test_the_dashboard_upload_names_a_decompression_bomb() -> None:
    from torchcycle.errors import PredictionInputError
    from torchcycle.kinds.image.dashboard import pixels_of

    state = {"kind": "image", "size": [12, 12], "channels": 1, "mean": [0.3], "std": [0.2], "value_range": [0, 255]}
    with pytest.raises(PredictionInputError, match=r"huge\.png: 6000×6000 = 36,000,000 pixels is over the limit"):
        pixels_of("huge.png", declared_png(6000, 6000), state)
    with pytest.raises(PredictionInputError, match=r"bomb\.png: refused as a decompression bomb"):
        pixels_of("bomb.png", declared_png(100_000, 100_000), state)
    with pytest.raises(PredictionInputError, match=r"notes\.png is not a readable PNG or JPEG image"):
        pixels_of("notes.png", b"these are not pixels", state)
    assert pixels_of("ok.png", png(np.zeros((30, 20), np.uint8)), state).shape == (1, 12, 12)
