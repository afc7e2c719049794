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

from tests.unit.test_export_serving import image, raw_frame, tabular  # noqa: F401  (fixtures)
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
