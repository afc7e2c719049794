"""Image decoding and normalisation fitted on the training split (per-channel mean/std as JSON)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from torchcycle.errors import PredictionInputError


def load_image(source: str | Path | bytes, size: tuple[int, int], channels: int) -> np.ndarray:
    """Decode any PNG/JPEG (grey or colour, any size) to uint8 (C, H, W) at the model's size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        name = "uploaded bytes" if isinstance(source, bytes) else str(source)
        raise PredictionInputError(f"{name}: cannot be decoded as an image ({exc}). Use a PNG or JPEG file.") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def fit_image_normalizer(train_uint8: np.ndarray, how: str, size, channels: int) -> dict[str, Any]:
    """Per-channel mean/std of the training images (or plain [0, 1] scaling)."""
    if how == "dataset":
        x = train_uint8.astype(np.float64) / 255.0
        mean = x.mean(axis=(0, 2, 3)).tolist()
        std = [max(s, 1e-6) for s in x.std(axis=(0, 2, 3)).tolist()]
    else:
        mean, std = [0.0] * channels, [1.0] * channels
    return {"kind": "image", "size": list(size), "channels": channels, "mean": mean, "std": std,
            "value_range": [0, 255]}


def transform_images(x_uint8: np.ndarray, state: dict[str, Any]) -> np.ndarray:
    """uint8 (N, C, H, W) -> normalised float32, checking the shape the model expects."""
    c = state["channels"]
    h, w = state["size"]
    if x_uint8.ndim != 4 or x_uint8.shape[1:] != (c, h, w):
        raise PredictionInputError(
            f"images have shape {tuple(x_uint8.shape[1:])}, the model expects (channels, height, width) = "
            f"{(c, h, w)}. Load them with load_image(..., size={tuple(state['size'])}, channels={c})."
        )
    mean = np.asarray(state["mean"], dtype=np.float32)[None, :, None, None]
    std = np.asarray(state["std"], dtype=np.float32)[None, :, None, None]
    return ((x_uint8.astype(np.float32) / 255.0) - mean) / std
