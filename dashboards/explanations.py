"""Explanations of single predictions for the dashboard: a thin adapter over `torchcycle.explain`.

SHAP and Grad-CAM need gradients, so they run on the torch weights of the served version, with that
version's own preprocessing state (read from its ONNX model), never a re-implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from dashboards import data


@dataclass
class LocalShap:
    values: np.ndarray  # (F,) per original column
    expected: float
    output: float
    columns: list[str]
    output_name: str


def columns(state: dict) -> list[str]:
    return [c["name"] for c in state["numeric"]] + [c["name"] for c in state["categorical"]]


@st.cache_resource(show_spinner="Preparing the SHAP background…", max_entries=8)
def _background(task: str, key: str, state_json: str) -> tuple:
    """Training rows the explanation compares against, prepared with the served version's state."""
    import json

    import torch

    from torchcycle.data.preprocess import transform_tabular

    p = data.params()
    train, _ = data._raw_split(str(data.root()), task, "train", data._stamp(data.paths(task).split("train")))
    rng = np.random.default_rng(p.seed)
    idx = np.sort(rng.choice(len(train), min(p.explain.background_rows, len(train)), replace=False))
    x_num, x_cat = transform_tabular(train.iloc[idx], json.loads(state_json))
    return torch.from_numpy(x_num), torch.from_numpy(x_cat)


def local_shap(model: data.Served, frame: pd.DataFrame) -> LocalShap:
    """SHAP values of the first row of `frame` (raw values) for the served model: log-odds of the positive
    class for binary tasks, else the logit of the predicted class."""
    import json

    import torch

    from torchcycle.data.preprocess import transform_tabular
    from torchcycle.explain.tabular import explain_tabular

    torch_model, _config = data.torch_model(model)
    state = model.predictor.state
    classes = model.predictor.classes
    background = _background(model.task, f"{model.version}:{model.run_id}", json.dumps(state, sort_keys=True))
    x_num, x_cat = transform_tabular(frame.iloc[:1], state)
    result = explain_tabular(torch_model, background, (torch.from_numpy(x_num), torch.from_numpy(x_cat)),
                             columns(state), len(classes), data.params().explain.shap_method)
    k = 0 if result.values.shape[2] == 1 else int(result.output[0].argmax())
    name = f"log-odds of '{classes[-1]}'" if len(classes) == 2 else f"logit of '{classes[k]}'"
    return LocalShap(result.values[0, :, k], float(result.expected[k]), float(result.output[0, k]),
                     result.columns, name)


def grad_cam(model: data.Served, pixels: np.ndarray, target: list[int]) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] of `target` classes for uint8 (N, C, H, W) images."""
    import torch

    from torchcycle.data.preprocess import transform_images
    from torchcycle.explain.gradcam import grad_cam as cam

    torch_model, _ = data.torch_model(model)
    ex = data.params().explain
    x = torch.from_numpy(transform_images(pixels, model.predictor.state))
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
