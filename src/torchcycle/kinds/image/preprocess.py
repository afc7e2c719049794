"""Image decoding and normalisation fitted on the training split (per-channel mean/std as JSON)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from torchcycle.errors import ConfigError, PredictionInputError

DEFAULT_MAX_IMAGE_PIXELS = 2**25  # 33.5 MP (8192 × 4096): about 100 MB decoded as RGB


class ImageTooLargeError(PredictionInputError):
    """An image declares more pixels than `max_image_pixels()` (a possible decompression bomb)."""


def max_image_pixels() -> int:
    """The most pixels (width × height) an image to decode may declare: TORCHCYCLE_MAX_IMAGE_PIXELS,
    default 2**25 (33.5 MP). Below PIL's own guard (Image.MAX_IMAGE_PIXELS, 89 MP, only a warning until twice
    that), so a small file declaring huge dimensions (a decompression bomb) is refused before it is decoded."""
    raw = os.environ.get("TORCHCYCLE_MAX_IMAGE_PIXELS", "").strip()
    try:
        value = int(raw) if raw else DEFAULT_MAX_IMAGE_PIXELS
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"TORCHCYCLE_MAX_IMAGE_PIXELS={raw!r}: expected a positive whole number of pixels")
    return value


def load_image(source: str | Path | bytes, size: tuple[int, int], channels: int, name: str | None = None) -> np.ndarray:
    """Decode any PNG/JPEG (grey or colour, any size up to `max_image_pixels()`) to uint8 (C, H, W) at the
    model's size. Anything that cannot be decoded, or declares more pixels than the limit (a possible
    decompression bomb), is a PredictionInputError naming `name` (default: the path, or "uploaded bytes")."""
    from PIL import Image, UnidentifiedImageError

    name = name or ("uploaded bytes" if isinstance(source, bytes) else str(source))
    limit = max_image_pixels()
    try:
        # Image.open reads the header only; PIL raises DecompressionBombError itself past twice its own
        # limit, and warns (DecompressionBombWarning; an error under `-W error`) past it. The explicit check
        # below refuses everything past our lower limit, as an error, without touching the global warning
        # filters (which are not thread-safe, and the scoring server predicts in threads).
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            width, height = im.size
            if width * height > limit:
                raise ImageTooLargeError(
                    f"{name}: {width}×{height} = {width * height:,} pixels is over the limit of {limit:,} (a possible "
                    "decompression bomb: a small file that expands to a huge image). Resize it, or raise "
                    "TORCHCYCLE_MAX_IMAGE_PIXELS."
                )
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            f"{name}: refused as a decompression bomb ({type(exc).__name__}: {exc}). The limit is {limit:,} pixels "
            "(TORCHCYCLE_MAX_IMAGE_PIXELS)."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
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
