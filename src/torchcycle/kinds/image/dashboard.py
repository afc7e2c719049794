"""What the dashboard shows for images: an image upload with its Grad-CAM on Predict, Grad-CAM overlays by
class and by correct/misclassified on Explain, image sizes and test images on Data, pictures on the Model
page.

Only the dashboard imports this module (it renders with Streamlit); it gets what it needs from the page
(`dashboards.context.Page`): the served model, the target type's view, cached store access and charts.
Predictions go through `serving.Predictor` (raw input: an `image` column of file bytes) and Grad-CAM
through `torchcycle.kinds.image.gradcam`, with the served version's own preprocessing state.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from torchcycle.errors import PredictionInputError
from torchcycle.kinds.image import IMAGE_COLUMN
from torchcycle.kinds.image.preprocess import (
    ImageTooLargeError,
    load_image,
    max_image_pixels,
    transform_images,
)

MAX_IMAGE_BYTES = 5 * 1024 * 1024


# =========================================================================== Predict
def predict(page: Any) -> None:
    predictor = page.model.predictor
    state = predictor.state
    h, w = state["size"]
    st.markdown(f"Upload a PNG or JPEG (any size; resized to {h}×{w}, "
                f"{'greyscale' if state['channels'] == 1 else 'RGB'}; at most {MAX_IMAGE_BYTES // 2**20} MB "
                f"and {max_image_pixels() / 1e6:.0f} megapixels).")
    upload = st.file_uploader("Image", type=["png", "jpg", "jpeg"], key="predict_image")
    if upload is None:
        return
    try:
        blob = upload.getvalue()
        pixels = pixels_of(upload.name, blob, state)
    except PredictionInputError as exc:
        st.error(str(exc))
        return
    start = time.perf_counter()
    outputs = predictor.outputs(pd.DataFrame({IMAGE_COLUMN: [blob]}))[0]
    k = int(np.argmax(outputs))  # Grad-CAM of the predicted class
    heat = grad_cam(page, pixels[None], [k])[0]
    ms = (time.perf_counter() - start) * 1e3
    st.success(f"Prediction: {page.target.sentence(outputs, page.target_state)}")
    st.caption(f"ONNX Runtime prediction and Grad-CAM: {ms:.0f} ms")
    a, b, c = st.columns([1, 1, 2])
    a.image(_picture(pixels), caption="as the model sees it", width=180)
    b.image(overlay(pixels, heat), caption=f"Grad-CAM for '{page.target_state['classes'][k]}'", width=180)
    with c:
        page.target.details(outputs, page.target_state)


def pixels_of(name: str, blob: bytes, state: dict) -> np.ndarray:
    """uint8 (C, H, W) at the model's size, decoded by the shared loader (resizes, converts colour; refuses
    images over `max_image_pixels()`)."""
    if len(blob) > MAX_IMAGE_BYTES:
        raise PredictionInputError(f"{name} is {len(blob) / 1e6:.1f} MB; the limit is {MAX_IMAGE_BYTES / 1e6:.0f} MB.")
    if not blob:
        raise PredictionInputError(f"{name} is empty.")
    try:
        return load_image(blob, tuple(state["size"]), state["channels"], name=name)
    except ImageTooLargeError:
        raise  # a decompression bomb: the message names the file, its pixels and the limit
    except PredictionInputError:  # undecodable or truncated
        raise PredictionInputError(f"{name} is not a readable PNG or JPEG image.") from None


def grad_cam(page: Any, pixels: np.ndarray, target: list[int]) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] of `target` classes for uint8 (N, C, H, W) images."""
    import torch

    from torchcycle.kinds.image.gradcam import grad_cam as cam

    torch_model, _ = page.data.torch_model(page.model)
    ex = page.data.params().explain
    x = torch.from_numpy(transform_images(pixels, page.model.predictor.state))
    return cam(torch_model, x, np.asarray(target), ex.gradcam_layer, ex.cam_method)


def overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An RGB uint8 image: the picture in grey/colour with the heat map (cividis) blended on top."""
    from matplotlib import colormaps

    from torchcycle.evaluation.plots import MATRIX_CMAP

    img = pixels.astype(np.float32) / 255.0
    rgb = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img[:3]
    rgb = rgb.transpose(1, 2, 0)
    colour = colormaps[MATRIX_CMAP](np.clip(heat, 0, 1))[..., :3]
    return (np.clip((1 - alpha) * rgb + alpha * colour, 0, 1) * 255).astype(np.uint8)


def _picture(pixels: np.ndarray) -> np.ndarray:
    return pixels.transpose(1, 2, 0) if pixels.shape[0] == 3 else pixels[0]


# =========================================================================== Explain
def explain(page: Any, summary: dict | None) -> None:
    """Average Grad-CAM per class, then overlays of correct or misclassified test images."""
    file = page.paths.explain / "gradcam.npz"
    cams = page.data.read(file)
    if summary is None or cams is None:
        page.ui.nothing_yet("Grad-CAM overlays appear after the explain stage.")
    classes = [str(c) for c in cams["classes"]]
    st.caption(f"{summary['method']} on layer `{summary['layer']}` of {summary['images']} test images; "
               "heat maps (cividis) mark where the evidence for the predicted class lies.")
    stamp = page.data._stamp(file)
    with st.expander("Average Grad-CAM per class", expanded=False):
        st.image(_class_maps_png(page, str(file), stamp))
    a, b = st.columns(2)
    cls = a.selectbox("Actual class", ["any", *classes], key="cam_class")
    which = b.radio("Examples", ["correct", "misclassified"], horizontal=True, key="cam_kind")
    actual, predicted = cams["actual"], cams["predicted"]
    mask = (actual == predicted) if which == "correct" else (actual != predicted)
    if cls != "any":
        mask &= actual == classes.index(cls)
    picked = np.flatnonzero(mask)
    if not len(picked):
        st.info("No such examples among the explained images.")
        return
    overlays = _overlay_images(page, page.task, stamp)
    grid = st.columns(6)
    for n, j in enumerate(picked[:36]):
        i = int(cams["test_index"][j])
        grid[n % 6].image(overlays[j], width=110, caption=f"#{i}: {classes[actual[j]]} → {classes[predicted[j]]}")


@st.cache_data(show_spinner=False, max_entries=8)
def _class_maps_png(_page: Any, path: str, stamp: float) -> bytes:
    from torchcycle.explain import plots as XP

    cams = _page.data.read(Path(path))
    return _page.ui.png(XP.class_maps(cams["class_average"], [str(c) for c in cams["classes"]]))


@st.cache_data(show_spinner="Drawing the overlays…", max_entries=8)
def _overlay_images(_page: Any, task: str, stamp: float) -> list[np.ndarray]:
    """Every explained test image with its Grad-CAM map blended on top, in the order of gradcam.npz."""
    cams, state = _page.data.read(_page.paths.explain / "gradcam.npz"), _page.data.read(_page.paths.preprocessor)
    files = _page.data.raw_test(task)[0][IMAGE_COLUMN]
    return [overlay(load_image(files.iloc[int(i)], tuple(state["size"]), state["channels"]), m)
            for i, m in zip(cams["test_index"], cams["maps"])]


# =========================================================================== Data
def data_summary(page: Any, report: dict) -> None:
    """Image count, sizes and modes, the class balance, and a strip of test images."""
    st.metric("Images", report["images"])
    sizes = report["sizes"]
    st.caption(f"Sizes {sizes['min_width']}–{sizes['max_width']} × {sizes['min_height']}–{sizes['max_height']} px, "
               f"modes {report['modes']}, source `{report.get('source', '?')}`")
    page.target.distribution(report, "Class balance")
    raw = page.data.raw_test(page.task)
    if raw is not None:
        st.markdown("Test images")
        cols = st.columns(10)
        for n, f in enumerate(raw[0][IMAGE_COLUMN].head(20)):
            cols[n % 10].image(str(f), width=56)


# =========================================================================== Model
def examples(page: Any, table: pd.DataFrame) -> None:
    """The chosen test examples as pictures, captioned with the actual and the predicted outcome."""
    raw = page.data.raw_test(page.task)
    if raw is None:
        return
    files = raw[0][IMAGE_COLUMN]
    grid = st.columns(6)
    for n, (i, row) in enumerate(table.iterrows()):
        grid[n % 6].image(str(files.iloc[i]), width=96, caption=f"#{i}: {row['actual']} → {row['predicted']}")
