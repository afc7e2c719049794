"""Grad-CAM explanations of an image model on the test split: class-average maps and overlays of
correct and misclassified images."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchcycle.artifacts import load_split
from torchcycle.atomic import read_json
from torchcycle.data.splits import sample


def explain(params: Any, paths: Any, model: torch.nn.Module, target_state: dict[str, Any]) -> tuple[dict, Any]:
    from torchcycle.explain import plots as XP
    from torchcycle.kinds.image.gradcam import class_average_maps, grad_cam, pick_examples, resolve_layer

    ex = params.explain
    classes = target_state["classes"]
    state = read_json(paths.preprocessor)
    test = load_split(paths, "test")
    idx = sample(len(test), ex.max_rows, params.seed + 1)
    x, y = test.inputs[0][idx], test.y.numpy()[idx]
    layer, _ = resolve_layer(model, ex.gradcam_layer)
    start = time.perf_counter()
    with torch.inference_mode():
        proba = torch.softmax(model(x), dim=1).numpy()
    pred = proba.argmax(1)
    maps = grad_cam(model, x, pred, layer, ex.cam_method)
    seconds = time.perf_counter() - start
    average = class_average_maps(maps, y, len(classes))
    chosen = pick_examples(y, pred, ex.examples_per_class, params.seed)
    mean = np.asarray(state["mean"], np.float32)[:, None, None]
    std = np.asarray(state["std"], np.float32)[:, None, None]
    pixels = np.clip(x.numpy() * std + mean, 0, 1)  # back to [0, 1] for display

    figures = {"class_average.png": XP.class_maps(average, classes)}
    for kind in ("correct", "misclassified"):
        picked = [i for i, k in chosen if k == kind]
        if picked:
            titles = [f"#{idx[i]} true {classes[y[i]]} → {classes[pred[i]]} ({proba[i, pred[i]]:.0%})"
                      for i in picked]
            figures[f"overlays_{kind}.png"] = XP.cam_overlays(pixels[picked], maps[picked], titles)
    ex_idx = np.asarray([i for i, _ in chosen], dtype=np.int64)
    summary = {
        "kind": "image", "method": ex.cam_method, "layer": layer, "images": len(idx),
        "examples": len(ex_idx), "seconds": round(seconds, 3),
        "misclassified_examples": int(sum(1 for _, k in chosen if k == "misclassified")),
    }  # fmt: skip

    def write(tmp: Path) -> None:
        np.savez_compressed(
            tmp / "gradcam.npz", test_index=idx[ex_idx] if len(ex_idx) else ex_idx,
            maps=maps[ex_idx], actual=y[ex_idx], predicted=pred[ex_idx], class_average=average,
            classes=np.asarray(classes, dtype=str), layer=np.asarray(layer),
        )  # fmt: skip
        XP.save_figures(tmp, figures)

    return summary, write
