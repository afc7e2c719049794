"""Grad-CAM heat maps for the image CNN, with captum's LayerGradCam (no torchvision needed).

Pure functions: a model and normalised images in, maps in [0, 1] at the input resolution out.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def resolve_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """The named layer, or the last Conv2d when no name is given; an unknown name lists the choices."""
    modules = dict(model.named_modules())
    if name is None:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError("the model has no Conv2d layer for Grad-CAM; name one with explain.gradcam_layer")
        name = convs[-1]
    if name not in modules or name == "":
        choices = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Sequential)) and n]
        raise ValueError(f"no layer named '{name}' in the model; Grad-CAM candidates: {choices}")
    return name, modules[name]


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: np.ndarray | list[int],
    layer: str | None = None,
    method: str = "gradcam",
    batch_size: int = 256,
) -> np.ndarray:
    """Class-activation map of class `target[i]` for image `x[i]`: (N, H, W) float32 scaled to [0, 1].

    gradcam: ReLU(sum_c mean(grad_c) * A_c), the classic Grad-CAM; its channel weights are spatial
    averages, so it can light up places the model never reads when the same feature occurs there.
    hirescam: ReLU(sum_c grad_c * A_c) element-wise, which only marks locations the output depends on.
    Maps are upsampled bilinearly to the input size; an all-zero map (no positive evidence) stays zero.
    """
    from captum.attr import LayerAttribution, LayerGradCam, LayerGradientXActivation

    model = model.eval()
    _, module = resolve_layer(model, layer)
    if method not in ("gradcam", "hirescam"):
        raise ValueError(f"unknown CAM method '{method}'; choose gradcam or hirescam")
    cam = LayerGradCam(model, module) if method == "gradcam" else _HiResCam(model, module, LayerGradientXActivation)
    target_t = torch.as_tensor(np.asarray(target), dtype=torch.long)
    maps = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        attr = cam.attribute(xb, target=target_t[start : start + batch_size], relu_attributions=True)
        up = LayerAttribution.interpolate(attr.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
        maps.append(up[:, 0].clamp_min(0).numpy())
    out = np.concatenate(maps).astype(np.float32) if maps else np.zeros((0, *x.shape[-2:]), np.float32)
    peak = out.reshape(len(out), -1).max(axis=1) if len(out) else np.zeros(0)
    scale = np.where(peak > 0, peak, 1.0)[:, None, None]
    return out / scale


class _HiResCam:
    """Element-wise gradient x activation summed over channels, ReLU'd (HiResCAM)."""

    def __init__(self, model: nn.Module, module: nn.Module, cls) -> None:
        self.inner = cls(model, module)

    def attribute(self, x: torch.Tensor, target: torch.Tensor, relu_attributions: bool = True) -> torch.Tensor:
        attr = self.inner.attribute(x, target=target).sum(dim=1, keepdim=True)
        return attr.clamp_min(0) if relu_attributions else attr


def quadrant_mass(maps: np.ndarray) -> np.ndarray:
    """Share of each map's total mass in the (top-left, top-right, bottom-left, bottom-right) quadrants."""
    n, h, w = maps.shape
    hh, hw = h // 2, w // 2
    parts = [maps[:, :hh, :hw], maps[:, :hh, hw:], maps[:, hh:, :hw], maps[:, hh:, hw:]]
    sums = np.stack([p.reshape(n, -1).sum(1) for p in parts], axis=1)
    total = sums.sum(1, keepdims=True)
    return sums / np.where(total > 0, total, 1.0)


def pick_examples(y: np.ndarray, pred: np.ndarray, per_class: int, seed: int = 0) -> list[tuple[int, str]]:
    """Up to `per_class` correct and `per_class` misclassified test images of every true class."""
    rng = np.random.default_rng(seed)
    out: list[tuple[int, str]] = []
    for c in np.unique(y):
        for kind, mask in (("correct", (y == c) & (pred == c)), ("misclassified", (y == c) & (pred != c))):
            idx = np.flatnonzero(mask)
            for i in sorted(rng.choice(idx, min(per_class, len(idx)), replace=False).tolist()):
                out.append((int(i), kind))
    return out


def class_average_maps(maps: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean Grad-CAM map of each true class (n_classes, H, W); a class with no images gets zeros."""
    out = np.zeros((n_classes, *maps.shape[1:]), dtype=np.float32)
    for c in range(n_classes):
        if (y == c).any():
            out[c] = maps[y == c].mean(0)
    return out
