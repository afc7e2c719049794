"""Images (a <root>/<class>/<image> folder or the built-in digits): a CNN, Grad-CAM.

Raw input is a DataFrame with an `image` column holding file paths, file bytes or base64 text (what
`mlflow models serve` receives over HTTP); decoding, resizing and the training split's normalisation
turn it into the model's input `x`. The folder layout makes the target a class.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from torchcycle.atomic import atomic_dir, write_json
from torchcycle.errors import PredictionInputError
from torchcycle.kinds.image.preprocess import fit_image_normalizer, load_image, transform_images
from torchcycle.targets import get_target

IMAGE_COLUMN = "image"
EXTENSIONS = (".png", ".jpg", ".jpeg")
SLICE_COLUMNS = ("class", "brightness")
BRIGHTNESS = ("Q1 (darkest)", "Q2", "Q3", "Q4 (brightest)")


class _Graph(nn.Module):
    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.model(x))


class ImageKind:
    name = "image"

    def ingest(self, cfg: Any, paths: Any, root: Path, seed: int) -> dict[str, Any]:
        from torchcycle.kinds.image.ingest import ingest

        return ingest(cfg, paths, root, seed)

    def preprocess(self, cfg: Any, paths: Any, seed: int) -> dict[str, Any]:
        from torchcycle.data.splits import split_indices

        manifest = pd.read_csv(paths.raw / "manifest.csv", dtype={"label": str})
        size, channels = tuple(cfg.preprocess.size), cfg.preprocess.channels
        pixels = np.stack([load_image(paths.raw / p, size, channels) for p in manifest["path"]])
        target = get_target("classification")
        target_state = target.fit(manifest["label"], None)
        y_all = target.encode(manifest["label"], target_state)
        tr, va, te = split_indices(y_all, target.stratify(y_all), False, cfg.split, seed)
        state = fit_image_normalizer(pixels[tr], cfg.preprocess.normalize, size, channels)
        counts = {}
        with atomic_dir(paths.processed) as tmp:
            for name, idx in (("train", tr), ("val", va), ("test", te)):
                np.savez(tmp / f"{name}.npz", x=transform_images(pixels[idx], state), y=y_all[idx],
                         row=idx.astype(np.int64), path=manifest["path"].to_numpy(dtype=str)[idx])
                counts[name] = {"rows": len(idx), **target.summarise(y_all[idx], target_state)}
            write_json(tmp / "preprocessor.json", state)
            write_json(tmp / "schema.json", {
                "kind": "image", "inputs": ["x"], "target": target_state, "classes": target_state["classes"],
                "size": list(size), "channels": channels, "value_range": [0, 255], "mean": state["mean"],
                "std": state["std"],
            })  # fmt: skip
            write_json(tmp / "splits.json", counts)
        return counts

    def raw_inputs(self, paths: Any, split: str) -> tuple[pd.DataFrame, np.ndarray]:
        with np.load(paths.split(split), allow_pickle=False) as z:
            return pd.DataFrame({IMAGE_COLUMN: [paths.raw / p for p in z["path"]]}), z["y"]

    def model_spec(self, cfg: Any, schema: dict[str, Any], train: Any, n_outputs: int) -> dict[str, Any]:
        m = cfg.model
        return {"name": "cnn", "kwargs": {
            "in_channels": schema["channels"], "image_size": list(schema["size"]), "n_classes": n_outputs,
            "channels": list(m.channels), "kernel_size": m.kernel_size, "hidden": m.hidden, "dropout": m.dropout,
            "batch_norm": m.batch_norm, "activation_name": m.activation, "residual": m.residual,
        }}  # fmt: skip

    def explain(self, params: Any, paths: Any, model: nn.Module, target: dict[str, Any]) -> tuple[dict, Any]:
        from torchcycle.kinds.image.explain import explain

        return explain(params, paths, model, target)

    def input_names(self, state: dict[str, Any]) -> list[str]:
        return ["x"]

    def onnx_module(self, model: nn.Module, head: nn.Module) -> nn.Module:
        return _Graph(model, head)

    def dynamic_axes(self, state: dict[str, Any]) -> dict[str, dict[int, str]]:
        return {}

    def describe_input(self, state: dict[str, Any]) -> dict[str, Any]:
        h, w = state["size"]
        return {"raw": f"column '{IMAGE_COLUMN}': PNG/JPEG file bytes (base64 in JSON) or file paths",
                "layout": "NCHW float32", "channels": state["channels"], "height": h, "width": w,
                "raw_value_range": state.get("value_range", [0, 255]),
                "normalisation": "x = (pixel / 255 - mean) / std, per channel",
                "mean": state["mean"], "std": state["std"]}

    def prepare(self, raw: pd.DataFrame, state: dict[str, Any]) -> tuple[np.ndarray, ...]:
        return (transform_images(decode(raw, state), state),)

    def read_path(self, path: Path) -> pd.DataFrame:
        return pd.DataFrame({IMAGE_COLUMN: image_files(path)})

    def example(self, raw: pd.DataFrame, state: dict[str, Any], rows: int) -> pd.DataFrame:
        return pd.DataFrame({IMAGE_COLUMN: [_bytes(v) for v in raw[IMAGE_COLUMN].head(rows)]})

    def any_typed_columns(self, state: dict[str, Any]) -> set[str]:
        return set()

    def row_labels(self, raw: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"path": [str(v) if isinstance(v, Path) else f"#{i}" for i, v in enumerate(raw[IMAGE_COLUMN])]})

    def slice_frame(self, raw: pd.DataFrame, y: np.ndarray, state: dict[str, Any], target_state: dict[str, Any],
                    columns: list[str] | None) -> pd.DataFrame:
        """`class` (the true class) and `brightness` (the quartile of mean pixel intensity within `raw`)."""
        from torchcycle.errors import ConfigError

        chosen = list(columns) if columns is not None else list(SLICE_COLUMNS)
        unknown = [c for c in chosen if c not in SLICE_COLUMNS]
        if unknown:
            raise ConfigError(f"slice column(s) {unknown} are not known for images; choose from "
                              f"{list(SLICE_COLUMNS)} (`evaluate.slice_columns`)")
        out: dict[str, Any] = {}
        if "class" in chosen:
            out["class"] = [str(v) for v in np.asarray(target_state["classes"], dtype=object)[np.asarray(y, np.int64)]]
        if "brightness" in chosen:
            chunks = (decode(raw.iloc[s : s + 512], state) for s in range(0, len(raw), 512))
            means = np.array([m for c in chunks for m in c.reshape(len(c), -1).mean(1)])
            rank = np.argsort(np.argsort(means, kind="stable"), kind="stable")  # ties split evenly
            out["brightness"] = [BRIGHTNESS[q] for q in rank * len(BRIGHTNESS) // max(len(means), 1)]
        return pd.DataFrame({c: out[c] for c in chosen}, index=range(len(raw)))

    def fingerprint(self, raw: pd.DataFrame) -> bytes:
        import hashlib

        h = hashlib.sha256()
        for value in raw[IMAGE_COLUMN]:
            h.update(_bytes(value))
        return h.digest()

    def new_batches(self) -> Any:
        from torchcycle.kinds.image.batches import ImageBatches

        return ImageBatches()


def _bytes(value: Any) -> bytes:
    return Path(value).read_bytes() if isinstance(value, Path) else bytes(value)


def decode(raw: pd.DataFrame, state: dict[str, Any]) -> np.ndarray:
    """uint8 (N, C, H, W) from the `image` column: file paths, file bytes, or base64 text (HTTP)."""
    if IMAGE_COLUMN not in raw.columns:
        raise PredictionInputError(
            f"image models take a column '{IMAGE_COLUMN}' of PNG/JPEG file bytes (base64-encoded in JSON) or "
            f"file paths; got columns {list(raw.columns)}"
        )
    size, channels = tuple(state["size"]), state["channels"]
    images = []
    for i, value in enumerate(raw[IMAGE_COLUMN]):
        try:
            if isinstance(value, Path):
                source: Any = value
            elif isinstance(value, str):
                source = base64.b64decode(value, validate=True)
            else:
                source = bytes(value)
            images.append(load_image(source, size, channels))
        except (ValueError, TypeError) as err:  # binascii.Error is a ValueError
            raise PredictionInputError(f"column '{IMAGE_COLUMN}', row {i}: not base64-encoded file bytes ({err})") from None
        except PredictionInputError as err:
            raise PredictionInputError(f"column '{IMAGE_COLUMN}', row {i}: {err}") from None
    if not images:
        raise PredictionInputError("no images to predict")
    return np.stack(images)


def image_files(path: str | Path, extensions: tuple[str, ...] = EXTENSIONS) -> list[Path]:
    """One image file, or every image file under a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        if not files:
            raise PredictionInputError(f"{path}: folder holds no image files ({', '.join(extensions)})")
        return files
    raise PredictionInputError(f"{path}: no such file or folder")


IMAGE = ImageKind()
