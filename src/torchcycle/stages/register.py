"""register@<task>: log the exported ONNX model (mlflow.onnx) and the torch state_dict to the training
run, register a new version of torchcycle-<task>, point `challenger` at it and move `champion` only on a
clear improvement that passes every configured gate (registry.py). The decision and the gates go to
version tags and reports/<task>/registry.json; the model card (model_card.py) to the run's artifact
model_card/model_card.md, the version's description and registry.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from torchcycle import model_card
from torchcycle.artifacts import fingerprint
from torchcycle.atomic import read_json, write_json
from torchcycle.config import Params
from torchcycle.errors import TorchcycleError
from torchcycle.kinds import kind_of
from torchcycle.paths import TaskPaths


def score(predictor: Any, raw: pd.DataFrame, y: np.ndarray, target_state: dict, metric: str) -> float | None:
    """The metric of a Predictor on raw inputs; None when it is undefined (e.g. one class only) or the
    model predicts something else than this split's targets (other classes, another target)."""
    if not predictor.target.same_task(predictor.target_state, target_state):
        return None
    # y is encoded with this workspace's target state; a registered version scores in its own encoding
    own = predictor.target.encode(pd.Series(predictor.target.decode(y, target_state)), predictor.target_state)
    return predictor.score(raw, own, metric)


def score_registered(model_uri: str, raw: pd.DataFrame, y: np.ndarray, target_state: dict, metric: str) -> float | None:
    """Download a registered version (its ONNX file only, nothing unpickled) and score it."""
    import mlflow

    from torchcycle.serving import Predictor

    directory = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    return score(Predictor.from_dir(directory), raw, y, target_state, metric)


def registry_metric(metric: str, target: Any) -> str:
    """The params-named metric, or the target type's default for `auto`; one the target type does not
    report is an error naming the allowed ones."""
    if metric == "auto":
        return target.default_metric
    if metric not in target.metric_names:
        raise TorchcycleError(
            f"registry.metric '{metric}' is not a {target.name} metric. Use one of {list(target.metric_names)} "
            "or `auto`."
        )
    return metric


CARD_ARTIFACT = "model_card/model_card.md"
SLICES_ARTIFACT = "slices/slices.json"


def _maybe_json(path: Path) -> dict:
    """A report another stage wrote, or {} when it is missing or unreadable (the card says so)."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def champion_slices(champion: Any, split_id: str) -> tuple[dict | None, str | None]:
    """The champion's slices report from its run (artifact slices/slices.json), or None and why not."""
    import tempfile

    import mlflow

    if champion is None:
        return None, "no champion to compare with"
    if champion.tags.get("test_split") != split_id:
        return None, f"the champion (version {champion.version}) was evaluated on another test split"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=champion.run_id, artifact_path=SLICES_ARTIFACT,
                                                       dst_path=tmp)
            return read_json(Path(path)), None
        except Exception as exc:  # no such artifact (an older champion), or unreadable
            return None, f"the champion (version {champion.version}) has no slices report ({type(exc).__name__})"


def card_context(paths: TaskPaths, root: Path, params: Params, kind_name: str) -> dict[str, Any]:
    """What the model card says about the files of this workspace (each one optional)."""
    from torchcycle.tracking import mlflow_run

    card = params.card.get(paths.task)
    return {
        "task": paths.task,
        "kind": kind_name,
        "card": card.model_dump() if card is not None else {},
        "model_config": _maybe_json(paths.model_config),
        "validation": _maybe_json(paths.validation_report),
        "splits": _maybe_json(paths.splits),
        "data_version": mlflow_run.data_version(paths.task, root),
        "git": mlflow_run.git_commit(root),
        "metrics": _maybe_json(paths.metrics),
        "slices": _maybe_json(paths.slices_report),
        "explain": _maybe_json(paths.explain / "summary.json"),
        "export": _maybe_json(paths.export_report),
    }


def run(params: Params, task: str, root: Path) -> dict:
    import mlflow
    from mlflow.tracking import MlflowClient

    from torchcycle import registry
    from torchcycle.serving import Predictor, registered_name
    from torchcycle.tracking import mlflow_run

    cfg, rc = params.task(task), params.registry
    paths = TaskPaths(task, root)
    if not paths.onnx_model.exists():
        raise TorchcycleError(f"{paths.onnx_model} not found. Run `dvc repro export@{task}` first.")
    target_state = read_json(paths.model_config)["target"]
    kind = kind_of(cfg)
    inputs, y = kind.raw_inputs(paths, "test")
    split_id = fingerprint(inputs, y, kind)
    predictor = Predictor(paths.onnx_model)
    metric = registry_metric(rc.metric, predictor.target)
    challenger_score = score(predictor, inputs, y, target_state, metric)
    name = registered_name(task)
    higher = predictor.target.higher_is_better(metric)
    context = card_context(paths, root, params, kind.name)

    def gates(champion: Any) -> list[registry.Gate]:
        return registry.compute_gates(rc.gates, metric, higher, context["metrics"], context["slices"],
                                      lambda: champion_slices(champion, split_id))

    with mlflow_run.reopen_run(params, paths, root) as run:
        info = log_models(paths, predictor, inputs)
        client = MlflowClient()
        version, decision = registry.register_and_decide(
            client, name, info.model_uri, run.info.run_id, metric, rc.margin, challenger_score, split_id,
            rescore=lambda uri: score_registered(uri, inputs, y, target_state, metric),
            higher_is_better=higher,
            model_id=getattr(info, "model_id", None),
            tags={"task": task, "git_commit": context["git"]["git_commit"]},
            gates=gates,
        )
        champion = registry.current_alias(client, name, registry.CHAMPION)
        card_uri = f"runs:/{run.info.run_id}/{CARD_ARTIFACT}"
        context.update(registered_name=name, version=str(version.version), run_id=run.info.run_id,
                       decision=decision.as_dict())
        card = model_card.build_card(context)
        mlflow.log_text(card, CARD_ARTIFACT)
        client.update_model_version(name, version.version, description=model_card.summary(context, card_uri))
        report = {
            "registered_model": name,
            "version": str(version.version),
            "run_id": run.info.run_id,
            "model_uri": f"models:/{name}/{version.version}",
            "test_split": split_id,
            "decision": decision.as_dict(),
            "gates": [g.as_dict() for g in decision.gates],
            "aliases": {registry.CHALLENGER: str(version.version),
                        registry.CHAMPION: None if champion is None else str(champion.version)},
            "model_card_uri": card_uri,
            "model_card": card,
        }  # fmt: skip
        write_json(paths.registry_report, report)
        mlflow.log_artifact(str(paths.registry_report), artifact_path="registry")
        mlflow.set_tags({"registry.version": str(version.version), "registry.promoted": str(decision.promoted).lower()})
    return report


def log_models(paths: TaskPaths, predictor: Any, inputs: pd.DataFrame) -> Any:
    """The ONNX model as mlflow.onnx saves it, served on raw records (torchcycle.served_model), with a
    signature and a small input example of raw records, and pinned requirements (no slow inference of
    requirements); plus the torch state_dict as plain artifacts with a tensor signature of its own."""
    import mlflow
    import onnx
    import onnxruntime
    import torch
    from mlflow.models import Model, infer_signature

    from torchcycle import served_model

    raw = raw_example(predictor, inputs)
    served = served_model.RawInputModel(predictor).predict(raw)
    import torchcycle

    # the pyfunc loader is torchcycle's own (served_model), so the served model needs it installed
    versions = {"torchcycle": torchcycle.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "pandas": pd.__version__}
    import PIL

    versions["pillow"] = PIL.__version__  # images decode with it; cheap to pin for tables too
    info = Model.log(
        None,  # artifact_path: deprecated in favour of name
        name="onnx",
        flavor=served_model,
        onnx_model=onnx.load(str(paths.onnx_model)),
        signature=served_model.signature(predictor, raw, served),
        input_example=raw,
        pip_requirements=[f"{k}=={v}" for k, v in versions.items()],
        onnx_execution_providers=["CPUExecutionProvider"],
        save_as_external_data=False,
        extra_files=[str(paths.preprocessor)],
    )  # fmt: skip
    import tempfile

    example = _input_example(paths, predictor)
    signature = infer_signature(example, predictor.session.run(None, example)[0])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "torch_state_dict"
        folder.mkdir()
        for src in (paths.weights, paths.model_config):
            (folder / src.name).write_bytes(src.read_bytes())
        (folder / "signature.json").write_text(json.dumps(signature.to_dict(), indent=2))
        (folder / "input_example.json").write_text(json.dumps({k: v.tolist() for k, v in example.items()}))
        (folder / "requirements.txt").write_text(f"torch=={torch.__version__.split('+')[0]}\nnumpy=={np.__version__}\n")
        (folder / "README.txt").write_text(
            "state_dict of the torchcycle model. Rebuild the architecture from model_config.json with\n"
            "torchcycle.models.factory.build_model(config['spec']) and load the weights with\n"
            "torch.load('model.pt', weights_only=True). Inputs: see signature.json; the inputs are the\n"
            "outputs of the kind's `prepare` (torchcycle.kinds.<kind>) with the preprocessing state of the ONNX\n"
            "model; the model's raw outputs go through the target head (torchcycle.targets.<type>.head).\n"
        )
        mlflow.log_artifacts(str(folder), artifact_path="torch_state_dict")
    return info


def raw_example(predictor: Any, inputs: pd.DataFrame, rows: int = 2) -> pd.DataFrame:
    """A few test rows as a client sends them: the model's columns as in the source file, or image files'
    bytes."""
    return predictor.kind.example(inputs, predictor.state, rows)


def _input_example(paths: TaskPaths, predictor: Any) -> dict[str, np.ndarray]:
    """Two rows of the test split, prepared as the model's inputs."""
    with np.load(paths.split("test"), allow_pickle=False) as z:
        return {name: z[name][:2] for name in predictor.kind.input_names(predictor.state)}
