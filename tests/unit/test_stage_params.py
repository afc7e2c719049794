"""dvc.yaml declares what each stage reads, and these tests prove it by running every stage.

Each stage runs in-process, through the CLI's own entry (`torchcycle.cli._stage`), on a tiny project of
three tasks: a table with a class target, a table with a number target and the built-in digits shrunk to
150 images. While a stage runs, three things are recorded:

- **params keys**: every attribute read on the validated params (pydantic models under `config.Strict`)
  is recorded with its dotted params.yaml path (`tab.train.lr`, `explain.max_rows`), through a
  `__getattribute__` hook on `Strict` that exists only during these runs. A read of a whole section
  (`model_dump`, iterating a mapping) records the section.
- **code**: torchcycle's modules are dropped from `sys.modules` before the stage and the ones it imports
  afresh are recorded (a stage is a fresh process under DVC, so this is what `torchcycle <stage>` loads).
- **files**: files the stage opens for reading (Python's `open` audit event, plus `pandas.read_parquet`,
  whose reads happen in Arrow's C++ and raise no event) under the project or the package data.

The tests then fail when dvc.yaml (its `${item.task}` expanded for the task) declares no params key,
parent section, code path or data path covering a read, and when it declares one that no task reads.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from pydantic import BaseModel

from torchcycle.config import Strict, parse_params

REPO = Path(__file__).resolve().parents[2]
STAGES = ["ingest", "preprocess", "train", "evaluate", "slices", "explain", "export", "register"]
TASKS = ["tab", "reg", "img", "txt"]  # a class target, a number target (log transform, PLE), images, text
CSV = "data/external/rows.csv"  # where the project keeps its own files (ingest declares data/external)
TEXTS = "data/external/texts.csv"
# written and read by the stages themselves, outside DVC by design: the MLflow store and training checkpoints
UNTRACKED = ("mlflow.db", "mlartifacts", ".checkpoints")


# --------------------------------------------------------------------------- recording params reads
def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class _Reads:
    """Dotted params paths of the recorded models and the keys read so far."""

    def __init__(self) -> None:
        self.paths: dict[int, str] = {}
        self.keep: list[Any] = []  # registered objects stay alive, so their ids are never reused
        self.keys: set[str] = set()
        self.tasks: list[str] = []

    def register(self, obj: Any, path: str) -> None:
        if isinstance(obj, BaseModel):
            self.paths[id(obj)] = path
            self.keep.append(obj)
            for name in type(obj).model_fields:
                # Params.task_configs is not in params.yaml: each task is a top-level section of its own
                child = "" if (path == "" and name == "task_configs") else _join(path, name)
                self.register(obj.__dict__[name], child)
        elif isinstance(obj, dict):
            for key, value in obj.items():
                self.register(value, _join(path, str(key)))

    def is_model(self, value: Any) -> bool:
        return isinstance(value, BaseModel) and id(value) in self.paths

    def read(self, key: str) -> None:
        # the whole task mapping read at once (iterating task_configs) reads every task
        self.keys.update(self.tasks if key == "" else [key])


_ACTIVE: _Reads | None = None


def _whole_read(name: str) -> Any:
    def method(self: _RecordingDict, *args: Any, **kwargs: Any) -> Any:
        self._all()
        return getattr(dict, name)(self, *args, **kwargs)

    return method


class _RecordingDict(dict):
    """A mapping field as the stage sees it: looking up a key reads `<field>.<key>`; anything that sees
    every key (iteration, len, items, equality) reads the whole field."""

    def __init__(self, data: dict, reads: _Reads, key: str) -> None:
        super().__init__(data)
        self._reads, self._key = reads, key

    def _one(self, k: Any) -> None:
        if not self._reads.is_model(dict.get(self, k)):  # a model records the reads of its own fields
            self._reads.read(_join(self._key, str(k)))

    def _all(self) -> None:
        self._reads.read(self._key)

    def __getitem__(self, k: Any) -> Any:
        self._one(k)
        return dict.__getitem__(self, k)

    def get(self, k: Any, default: Any = None) -> Any:
        self._one(k)
        return dict.get(self, k, default)

    def __contains__(self, k: Any) -> bool:
        self._one(k)
        return dict.__contains__(self, k)

    __iter__ = _whole_read("__iter__")
    __len__ = _whole_read("__len__")
    __eq__ = _whole_read("__eq__")
    keys = _whole_read("keys")
    values = _whole_read("values")
    items = _whole_read("items")
    copy = _whole_read("copy")
    __hash__ = None  # type: ignore[assignment]


def _whole_fields(obj: BaseModel, path: str, reads: _Reads, include: Any, exclude: Any) -> None:
    names = set(type(obj).model_fields)
    if include is not None:
        names &= set(include)
    if exclude is not None:
        names -= {k for k in exclude if not isinstance(exclude, dict) or exclude[k] is True}
    for name in names:
        reads.read("" if (path == "" and name == "task_configs") else _join(path, name))


def _recording_getattribute(self: Any, name: str) -> Any:
    value = object.__getattribute__(self, name)
    reads = _ACTIVE
    if reads is None or name.startswith("__"):
        return value
    path = reads.paths.get(id(self))
    if path is None:
        return value
    if name in type(self).model_fields:
        key = "" if (path == "" and name == "task_configs") else _join(path, name)
        if reads.is_model(value):
            return value  # a section: the reads of its fields are recorded
        if isinstance(value, dict):
            return _RecordingDict(value, reads, key)
        reads.read(key)
        return value
    if name in ("model_dump", "model_dump_json"):
        def dump(*args: Any, **kwargs: Any) -> Any:
            _whole_fields(self, path, reads, kwargs.get("include"), kwargs.get("exclude"))
            return value(*args, **kwargs)

        return dump
    if name == "model_copy":
        def copy(*args: Any, **kwargs: Any) -> Any:
            new = value(*args, **kwargs)
            reads.register(new, path)  # a changed copy is still this section of params.yaml
            return new

        return copy
    return value


# --------------------------------------------------------------------------- recording files and imports
_FILES: set[Path] | None = None
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(event: str, args: tuple) -> None:
    files = _FILES
    if files is None or event != "open":
        return
    path, mode, flags = (*args, None, None, None)[:3]
    if not isinstance(path, (str, os.PathLike)):
        return
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return
    if mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS:
        return
    files.add(Path(os.fsdecode(path)))


_HOOKED = False


def _install_audit_hook() -> None:
    """Once per session: an audit hook cannot be removed (it does nothing outside a recording)."""
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED = True


def _is_torchcycle(name: str) -> bool:
    return name == "torchcycle" or name.startswith("torchcycle.")


@contextlib.contextmanager
def _fresh_torchcycle(imported: set[str]) -> Iterator[None]:
    """torchcycle as a new process sees it: its modules are imported afresh (and recorded in
    `imported` by file), and the test session's own modules are put back afterwards."""
    saved = {k: m for k, m in sys.modules.items() if _is_torchcycle(k)}
    for k in saved:
        del sys.modules[k]
    try:
        yield
    finally:
        fresh = {k: m for k, m in sys.modules.items() if _is_torchcycle(k)}
        imported.update(str(Path(m.__file__).resolve()) for m in fresh.values() if getattr(m, "__file__", None))
        for k in fresh:
            del sys.modules[k]
        sys.modules.update(saved)


@dataclass
class Recorded:
    keys: set[str] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)  # repository-relative files
    files: set[str] = field(default_factory=set)  # project-relative (or repository-relative) files


_TMP = re.compile(r"^\.(.+?)\.(?:tmp|old)-")


def _relative(path: Path, root: Path) -> str | None:
    """The path as dvc.yaml would name it: relative to the project (an atomic write's temporary sibling
    `.name.tmp-…` named as its target), or to the repository for the package's own data files."""
    path = Path(os.path.abspath(path))
    for base in (root, REPO):
        if path.is_relative_to(base):
            parts = [(_TMP.match(p).group(1) if _TMP.match(p) else p) for p in path.relative_to(base).parts]
            if base == REPO and parts[:2] != ["src", "torchcycle"]:
                return None
            if path.suffix in (".py", ".pyc") or "__pycache__" in parts:
                return None  # modules are recorded as imports
            return "/".join(parts)
    return None


def run_stage(stage: str, task: str, params: Any, root: Path, reads: _Reads) -> Recorded:
    """`torchcycle <stage> <task>` in-process: the CLI's `_stage` with `load_params` returning `params`."""
    global _ACTIVE, _FILES
    imported: set[str] = set()
    files: set[Path] = set()
    reads.keys = set()
    real_read_parquet = pd.read_parquet

    def read_parquet(path: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(path, (str, os.PathLike)):
            files.add(Path(os.fsdecode(path)))
        return real_read_parquet(path, *args, **kwargs)

    with _fresh_torchcycle(imported), pytest.MonkeyPatch.context() as mp:
        cli = importlib.import_module("torchcycle.cli")
        config = importlib.import_module("torchcycle.config")
        mp.setattr(config, "load_params", lambda *_a, **_k: params)
        mp.setattr(pd, "read_parquet", read_parquet)
        mp.setattr(Strict, "__getattribute__", _recording_getattribute)
        kwargs = {"progress": False, "overfit_batches": 0} if stage == "train" else {}
        _ACTIVE, _FILES = reads, files
        try:
            cli._stage(stage, task, root / "params.yaml", **kwargs)
        finally:
            _ACTIVE, _FILES = None, None
    modules = {str(Path(f).relative_to(REPO)) for f in imported if Path(f).is_relative_to(REPO)}
    return Recorded(set(reads.keys), modules, {r for f in files if (r := _relative(f, root)) is not None})


# --------------------------------------------------------------------------- a tiny project
def _rows(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], size=n)
    day = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365, n), unit="D")
    return pd.DataFrame({
        "x1": x1.round(4), "x2": x2.round(4), "colour": colour, "day": day.strftime("%Y-%m-%d"),
        "label": np.where(x1 + 0.5 * x2 + (colour == "red") > 0.3, "yes", "no"),
        "price": np.exp(3 + 0.5 * x1 + 0.2 * x2 + rng.normal(0, 0.1, n)).round(2),
    })  # fmt: skip


def _texts(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    good, bad, plain = ["great", "lovely", "fine"], ["awful", "dull", "poor"], ["film", "plot", "actors", "the", "a"]
    label = rng.choice(["yes", "no"], size=n)
    texts = [" ".join([*rng.choice(plain, 4), rng.choice(good if y == "yes" else bad)]) for y in label]
    return pd.DataFrame({"review": texts, "label": label})


def tiny_params() -> dict:
    train = {"epochs": 2, "batch_size": 32, "num_threads": 1, "device": "cpu", "distributed": "off"}
    table = {"split": {}, "preprocess": {}, "train": train}
    return {
        "seed": 7,
        "tasks": TASKS,
        "tracking": {"tracking_uri": None, "experiment_prefix": "t-", "log_figures": True},
        "explain": {"max_rows": 20, "background_rows": 10, "local_examples": 2, "examples_per_class": 1},
        "evaluate": {"bootstrap_samples": 10, "slice_columns": {"tab": ["colour"]}, "min_slice_rows": 5},
        "export": {"benchmark_repeats": 10, "benchmark_seconds": 0.01},
        "registry": {"gates": {"max_ece": 0.99, "max_slice_drop": 1.0, "max_fairness_difference": 1.0}},
        "card": {"tab": {"intended_use": "tests", "limits": ["none"]}},
        # options that import code of their own: layer statistics, image augmentation, a decision threshold
        "tab": {"kind": "tabular", **table, "model": {"hidden_sizes": [16], "batch_norm": False},
                "train": {**train, "inspect": {"every_epochs": 1}, "threshold": {"objective": "f1"}},
                "source": {"path": CSV, "target": "label", "positive_class": "yes", "drop": ["price"]}},
        "reg": {"kind": "tabular", **table,
                "model": {"hidden_sizes": [16], "numeric_embedding": "ple", "numeric_bins": 4},
                "source": {"path": CSV, "target": "price", "target_type": "regression", "target_transform": "log",
                           "drop": ["label"]}},
        "img": {"kind": "image", "source": {"builtin": "mnist", "max_images": 150},
                "split": {"test_size": 0.3, "val_size": 0.15}, "preprocess": {}, "model": {"channels": [4, 8], "hidden": 16},
                "train": {**train, "epochs": 1, "augment": {"enabled": True, "elastic_alpha": 2.0}}},
        "txt": {"kind": "text", **table, "preprocess": {"vocab_size": 120}, "model": {"embedding_dim": 8},
                "source": {"path": TEXTS, "text_column": "review", "target": "label", "positive_class": "yes"}},
    }  # fmt: skip


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Recorded]]:
    """{task: {stage: what it read}}, from one run of the whole pipeline per task."""
    import mlflow

    from torchcycle.tracking.mlflow_run import TELEMETRY_OFF

    _install_audit_hook()
    root = tmp_path_factory.mktemp("stage-params")
    (root / CSV).parent.mkdir(parents=True)
    _rows().to_csv(root / CSV, index=False)
    _texts().to_csv(root / TEXTS, index=False)
    raw = tiny_params()
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = parse_params(raw)
    reads = _Reads()
    reads.register(params, "")
    reads.tasks = list(params.task_configs)
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    out: dict[str, dict[str, Recorded]] = {}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in TELEMETRY_OFF.items():
            mp.setenv(key, value)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_REGISTRY_URI", uri)
        torch.set_num_threads(1)
        try:
            for task in TASKS:
                out[task] = {stage: run_stage(stage, task, params, root, reads) for stage in STAGES}
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            torch.random.set_rng_state(rng)
            mlflow.set_tracking_uri("")
            mlflow.set_registry_uri("")
    return out


# --------------------------------------------------------------------------- what dvc.yaml declares
@dataclass
class Declared:
    params: list[str]
    deps: list[str]
    outs: list[str]


def declared(stage: str, task: str) -> Declared:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]

    def expand(items: list) -> list[str]:
        names = [next(iter(i)) if isinstance(i, dict) else i for i in items or []]
        return [str(n).replace("${item.task}", task) for n in names]

    outs = expand(spec.get("outs")) + expand(spec.get("metrics")) + expand(spec.get("plots"))
    return Declared(expand(spec.get("params")), expand(spec.get("deps")), outs)


def covers(parent: str, child: str, sep: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(sep) + sep)


def _report(problems: list[str], what: str) -> str:
    return f"{what}:\n  " + "\n  ".join(sorted(problems))


# --------------------------------------------------------------------------- the checks
@pytest.mark.parametrize("stage", STAGES)
def test_every_params_key_a_stage_reads_is_declared(recorded, stage) -> None:
    missing = [f"{stage}@{task} reads `{key}`" for task in TASKS for key in recorded[task][stage].keys
               if not any(covers(d, key, ".") for d in declared(stage, task).params)]
    assert not missing, _report(missing, "params read but not declared in dvc.yaml (the key or a parent section)")


@pytest.mark.parametrize("stage", STAGES)
def test_every_declared_params_key_is_read(recorded, stage) -> None:
    """Exact in both directions: a declared key no task reads would rerun the stage for nothing."""
    unused = [d for d in declared(stage, "TASK").params
              if not any(covers(d.replace("TASK", t), k, ".") or covers(k, d.replace("TASK", t), ".")
                         for t in TASKS for k in recorded[t][stage].keys)]
    assert not unused, _report(unused, f"{stage}: declared in dvc.yaml but never read")


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_a_stage_imports_is_a_declared_dep(recorded, stage) -> None:
    missing = sorted({m for task in TASKS for m in recorded[task][stage].modules
                      if not any(covers(d, m, "/") for d in declared(stage, task).deps)})
    assert recorded[TASKS[0]][stage].modules, "no torchcycle module recorded: the recording is broken"
    assert not missing, _report(missing, f"{stage} imports code that is not under any of its dvc.yaml deps")


@pytest.mark.parametrize("stage", STAGES)
def test_every_file_a_stage_reads_is_a_declared_dep_or_its_own_output(recorded, stage) -> None:
    missing = []
    for task in TASKS:
        spec = declared(stage, task)
        for f in recorded[task][stage].files:
            if f.split("/")[0] in UNTRACKED or any(covers(o, f, "/") for o in spec.outs):
                continue
            if not any(covers(d, f, "/") for d in spec.deps):
                missing.append(f"{stage}@{task} reads {f}")
    assert not missing, _report(missing, "files read but not declared as deps in dvc.yaml")


@pytest.mark.parametrize("stage", STAGES)
def test_every_declared_code_dep_is_used(recorded, stage) -> None:
    used = {m for t in TASKS for m in recorded[t][stage].modules | recorded[t][stage].files}
    unused = [d for d in declared(stage, "TASK").deps
              if d.startswith("src/") and not any(covers(d, m, "/") for m in used)]
    assert not unused, _report(unused, f"{stage}: code deps in dvc.yaml that the stage never imports or reads")


def test_every_declared_params_key_exists_for_every_task_of_the_project() -> None:
    """DVC refuses to run a stage whose params key is absent from params.yaml (MissingParamsError), and
    keys with a default may be left out there: so each declared key must be present for every task."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    sections = [k for k, v in raw.items() if isinstance(v, dict) and "kind" in v]
    absent = []
    for stage in STAGES:
        for task in sections:
            for key in declared(stage, task).params:
                node: Any = raw
                for part in key.split("."):
                    node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
                if node is KeyError:
                    absent.append(f"{stage}@{task}: {key}")
    assert not absent, _report(absent, "declared in dvc.yaml but absent from params.yaml")
