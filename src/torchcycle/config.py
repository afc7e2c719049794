"""The params.yaml schema, validated on load.

Every knob of the pipeline lives in params.yaml; a typo there must fail loudly with the key and the
allowed values instead of silently training with a default.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from torchcycle.errors import ConfigError

PARAMS_FILE = "params.yaml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# --------------------------------------------------------------------------- sources
class TabularSource(Strict):
    """Where a tabular task's rows come from: a built-in dataset or a CSV/Parquet file."""

    builtin: Literal["adult", "diamonds"] | None = None
    path: str | None = Field(None, description="CSV or Parquet file, relative to the project root")
    test_path: str | None = Field(None, description="optional official test file with the same columns")
    target: str = Field(description="the column to predict")
    target_type: Literal["auto", "classification", "regression"] = Field(
        "auto", description="auto: a numeric target with more than 20 distinct values is regression"
    )
    target_transform: Literal["none", "log"] = Field(
        "none", description="regression: log trains on log(target) (positive, skewed targets such as prices)"
    )
    interval_coverage: float = Field(
        0.9, gt=0, lt=1, description="regression: nominal coverage of the split-conformal prediction intervals"
    )
    positive_class: str | None = Field(None, description="label treated as positive for binary ROC AUC")
    features: list[str] | None = Field(None, description="feature columns; default: every other column")
    categorical: list[str] | None = Field(None, description="default: the non-numeric, non-date columns")
    dates: list[str] | None = Field(None, description="date/datetime columns; default: text columns that parse as dates")
    numeric: list[str] | None = Field(None, description="default: the numeric columns")
    drop: list[str] = Field(default_factory=list, description="columns to ignore")
    na_values: list[str] = Field(default_factory=lambda: ["?", ""])
    csv_sep: str = ","
    max_rows: int | None = Field(None, ge=10, description="keep a stratified sample of at most this many rows per file")
    max_missing_fraction: float = Field(
        0.5, ge=0, le=1, description="a column with more missing values than this fails validation"
    )
    holdback_rows: int = Field(
        0, ge=0, description="training rows kept out of training and released by `torchcycle simulate-arrival`"
    )

    @model_validator(mode="after")
    def _one_source(self) -> TabularSource:
        if (self.builtin is None) == (self.path is None):
            raise ValueError("set exactly one of `builtin` (adult, diamonds) or `path` (a .csv or .parquet file)")
        return self


class ImageSource(Strict):
    """A built-in image dataset or a folder laid out as <root>/<class name>/<image file>."""

    builtin: Literal["mnist"] | None = None
    path: str | None = Field(None, description="image folder <root>/<class>/<image>, relative to the project")
    extensions: list[str] = Field(default_factory=lambda: [".png", ".jpg", ".jpeg"])
    max_images: int | None = Field(None, ge=10, description="keep a stratified sample of at most this many images")
    holdback_images: int = Field(
        0, ge=0, description="images kept out of training and released by `torchcycle simulate-arrival`"
    )

    @model_validator(mode="after")
    def _one_source(self) -> ImageSource:
        if (self.builtin is None) == (self.path is None):
            raise ValueError("set exactly one of `builtin` (mnist) or `path` (an image folder)")
        return self


class TextSource(Strict):
    """A table with a text column and a label: the built-in reviews or a user's CSV/Parquet file."""

    builtin: Literal["reviews"] | None = None
    path: str | None = Field(None, description="CSV or Parquet file, relative to the project root")
    test_path: str | None = Field(None, description="optional official test file with the same columns")
    text_column: str = Field("text", description="the column holding the text")
    target: str = Field(description="the column to predict")
    target_type: Literal["auto", "classification", "regression"] = "auto"
    target_transform: Literal["none", "log"] = "none"
    interval_coverage: float = Field(0.9, gt=0, lt=1)
    positive_class: str | None = Field(None, description="label treated as positive for binary ROC AUC")
    csv_sep: str = ","
    na_values: list[str] = Field(default_factory=lambda: [""])
    max_rows: int | None = Field(None, ge=10, description="keep a stratified sample of at most this many rows")
    max_empty_fraction: float = Field(
        0.01, ge=0, le=1, description="more empty texts than this share fails validation (fewer are dropped)"
    )
    holdback_rows: int = Field(
        0, ge=0, description="training rows kept out of training and released by `torchcycle simulate-arrival`"
    )

    @model_validator(mode="after")
    def _one_source(self) -> TextSource:
        if (self.builtin is None) == (self.path is None):
            raise ValueError("set exactly one of `builtin` (reviews) or `path` (a .csv or .parquet file)")
        return self


# --------------------------------------------------------------------------- data handling
class SplitConfig(Strict):
    test_size: float = Field(0.2, gt=0, lt=1, description="held-out share when the source has no test file")
    val_size: float = Field(0.1, gt=0, lt=1, description="share of the training rows kept for validation")


class TabularPreprocess(Strict):
    numeric_missing: Literal["median", "mean", "zero"] = "median"
    categorical_missing: Literal["category", "most_frequent"] = Field(
        "category", description="category: missing values become their own level"
    )
    scaling: Literal["standard", "quantile", "robust", "minmax", "none"] = Field(
        "standard", description="quantile: map through training quantiles to a normal (heavy-tailed columns)"
    )
    min_category_count: int = Field(1, ge=1, description="rarer levels are treated as unseen")
    max_categories: int | None = Field(
        200, ge=1, description="keep at most this many levels per column (the most frequent); null: all"
    )


class ImagePreprocess(Strict):
    size: tuple[int, int] = (28, 28)
    channels: Literal[1, 3] = 1
    normalize: Literal["dataset", "unit"] = Field(
        "dataset", description="dataset: per-channel mean/std of the training split; unit: [0, 1] only"
    )


class TextPreprocess(Strict):
    """Tokenisation with Hugging Face `tokenizers`: a vocabulary trained on the training split only, or
    the tokenizer of a pretrained encoder (which the `pretrained` model then loads)."""

    tokenizer: Literal["wordpiece", "bpe", "pretrained"] = Field(
        "wordpiece", description="pretrained: the encoder's own tokenizer (required by model `pretrained`)"
    )
    vocab_size: int = Field(20000, ge=100, description="trained tokenizers: the largest vocabulary")
    min_frequency: int = Field(2, ge=1, description="trained tokenizers: rarer pieces are not merged in")
    lowercase: bool = True
    max_length: int = Field(64, ge=4, description="tokens per text (longer texts are truncated, and counted)")
    encoder: str = Field(
        "minilm", description="pretrained: `minilm` (the packaged all-MiniLM-L6-v2), a local folder with "
        "config.json, model.safetensors and tokenizer.json, or a hub id already in the local cache",
    )


# --------------------------------------------------------------------------- models
class MLPConfig(Strict):
    name: Literal["mlp"] = "mlp"
    hidden_sizes: list[int] = Field(default_factory=lambda: [128, 64])
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    dropout: float = Field(0.1, ge=0, lt=1)
    batch_norm: bool = True
    embedding_dim: int = Field(
        0, ge=0, description="0: one-hot categorical columns; >0: a learned embedding of this size"
    )
    numeric_embedding: Literal["none", "ple", "periodic"] = Field(
        "none", description="ple: piecewise-linear encoding on training quantile bins; periodic: sin/cos"
    )
    numeric_embedding_dim: int = Field(16, ge=1)
    numeric_bins: int = Field(32, ge=2, description="quantile bins per numeric column for ple")
    periodic_frequencies: int = Field(16, ge=1)
    periodic_sigma: float = Field(0.1, gt=0)
    residual: bool = Field(False, description="residual blocks (ResNet-style MLP) instead of a plain stack")


class CNNConfig(Strict):
    name: Literal["cnn"] = "cnn"
    channels: list[int] = Field(default_factory=lambda: [32, 64])
    kernel_size: int = 3
    hidden: int = 128
    dropout: float = Field(0.25, ge=0, lt=1)
    batch_norm: bool = True
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    residual: bool = Field(False, description="add a residual block (two convs + skip) after each conv stage")


class RecurrentConfig(Strict):
    """A recurrent encoder over token embeddings (packed sequences: padding is never read)."""

    name: Literal["gru", "lstm"] = "gru"
    embedding_dim: int = Field(128, ge=1)
    hidden: int = Field(128, ge=1)
    layers: int = Field(1, ge=1)
    bidirectional: bool = True
    dropout: float = Field(0.3, ge=0, lt=1)
    pooling: Literal["last", "mean", "max"] = Field("max", description="how the states become one vector")


class TransformerConfig(Strict):
    """`nn.TransformerEncoder` over token embeddings plus positions, pooled or read at a [CLS] token."""

    name: Literal["transformer"] = "transformer"
    d_model: int = Field(128, ge=8)
    heads: int = Field(4, ge=1)
    layers: int = Field(2, ge=1)
    feedforward: int = Field(256, ge=8)
    dropout: float = Field(0.1, ge=0, lt=1)
    positions: Literal["learned", "sinusoidal"] = "learned"
    pooling: Literal["mean", "cls"] = Field("mean", description="cls: a learned [CLS] vector is prepended and read")

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} must be a multiple of heads {self.heads}")
        return self


class BagConfig(Strict):
    """Averaged embeddings of the tokens and (hashed) token bigrams: the fast classical neural baseline."""

    name: Literal["bag"] = "bag"
    embedding_dim: int = Field(64, ge=1)
    ngrams: Literal[1, 2] = Field(1, description="2: also hashed token bigrams")
    buckets: int = Field(32768, ge=1, description="hash buckets of the bigrams")
    dropout: float = Field(0.5, ge=0, lt=1)
    token_dropout: float = Field(0.0, ge=0, lt=1, description="training: share of tokens left out of each average")
    prior: bool = Field(
        True, description="classification: add a per-token score channel started from naive-Bayes log-count "
        "ratios of the training split (NBSVM-style), trained with the rest"
    )
    prior_scale: float = Field(1.5, gt=0, description="weight of the prior channel in the logits")


class PretrainedConfig(Strict):
    """The encoder named by `preprocess.encoder` (BERT-like), fine-tuned frozen, fully or with LoRA (peft)."""

    name: Literal["pretrained"] = "pretrained"
    finetune: Literal["frozen", "full", "lora"] = "lora"
    pooling: Literal["mean", "cls"] = "mean"
    dropout: float = Field(0.1, ge=0, lt=1)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    lora_target_modules: list[str] = Field(default_factory=lambda: ["query", "key", "value", "dense"])


TextModel = Annotated[BagConfig | RecurrentConfig | TransformerConfig | PretrainedConfig, Field(discriminator="name")]
TabularModel = Annotated[MLPConfig, Field(discriminator="name")]
ImageModel = Annotated[CNNConfig, Field(discriminator="name")]


# --------------------------------------------------------------------------- training
class EarlyStopping(Strict):
    enabled: bool = True
    patience: int = Field(5, ge=1)
    min_delta: float = 0.0


class Augment(Strict):
    """Random jitter of image batches (plain torch ops): a little shift, rotation, zoom and elastic warp."""

    enabled: bool = False
    max_shift: float = Field(0.1, ge=0, lt=0.5, description="largest shift as a fraction of the image size")
    max_rotation: float = Field(10.0, ge=0, le=45, description="largest rotation in degrees")
    max_scale: float = Field(0.0, ge=0, lt=0.5, description="largest zoom in or out, as a fraction (0.1: 0.9x to 1.1x)")
    elastic_alpha: float = Field(0.0, ge=0, description="elastic warp strength in pixels; 0: off")
    elastic_sigma: float = Field(4.0, gt=0, description="smoothness of the elastic warp (Gaussian std, pixels)")


class Calibration(Strict):
    """Classification: probabilities made honest after training, fitted on the validation split and
    applied inside the exported model, so every consumer gets calibrated probabilities."""

    method: Literal["none", "temperature", "vector", "matrix"] = Field(
        "temperature", description="temperature: one scale for all logits (keeps the ranking, so ROC AUC); "
        "vector: a scale and bias per class; matrix: a full linear map of the logits"
    )


class Threshold(Strict):
    """Binary classification: the decision threshold on the positive class's probability, chosen on the
    validation split for an objective; predict, serve and the dashboard use it."""

    objective: Literal["none", "f1", "balanced_accuracy", "cost", "min_precision"] = Field(
        "none", description="none: 0.5; cost: minimise cost_fp * FP + FN; min_precision: the highest recall "
        "whose precision is at least min_precision"
    )
    cost_fp: float = Field(1.0, gt=0, description="cost of a false positive relative to a false negative")
    min_precision: float = Field(0.8, gt=0, lt=1)


class Checkpointing(Strict):
    """Resumable training: state is saved outside the DVC outputs and picked up by the next run
    with the same params and data."""

    enabled: bool = True
    dir: str = Field(".checkpoints", description="relative to the project root; one subfolder per task")
    every_steps: int = Field(0, ge=0, description="also save every N optimiser steps; 0: at epoch ends only")


class Inspection(Strict):
    every_epochs: int = Field(0, ge=0, description="per-layer activation/gradient statistics every N epochs; 0: off")


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and rmsprop")
    nesterov: bool = Field(False, description="Nesterov momentum (sgd)")
    scheduler: Literal["none", "cosine", "step", "onecycle", "plateau"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up before the cosine decay (per step)")
    step_size: int = Field(5, ge=1, description="epochs between decays for the step schedule")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor of the step and plateau schedules")
    plateau_patience: int = Field(2, ge=0, description="epochs without improvement before plateau decays")
    onecycle_pct_start: float = Field(0.3, gt=0, lt=1, description="share of the steps spent warming up")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip_norm: float | None = Field(None, gt=0, description="clip the global gradient norm to this")
    grad_accumulation: int = Field(1, ge=1, description="micro-batches per optimiser step (effective batch)")
    mixed_precision: bool = Field(False, description="bfloat16 autocast on CPU; float16 + GradScaler on CUDA")
    augment: Augment = Field(default_factory=Augment)
    channels_last: bool = Field(False, description="channels-last memory format for image models")
    compile: bool = Field(False, description="torch.compile the model (pays off only for long runs)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    distributed: Literal["auto", "off"] = Field(
        "auto", description="auto: DistributedDataParallel when launched by torchrun (WORLD_SIZE > 1)"
    )
    overfit_batches: int = Field(0, ge=0, description="sanity mode: train on this many fixed batches only")
    monitor: Literal["val_loss", "val_accuracy", "val_roc_auc", "val_rmse", "val_mae", "val_r2"] = Field(
        "val_loss", description="classification: val_accuracy, val_roc_auc; regression: val_rmse, val_mae, val_r2"
    )
    regression_loss: Literal["mse", "huber"] = Field("mse", description="regression targets (standardised)")
    huber_delta: float = Field(1.0, gt=0, description="huber: where the loss turns linear (in standard deviations)")
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="evaluate and keep an exponential moving average of the weights "
        "(and batch-norm statistics), updated every optimiser step with this decay; 0: off"
    )
    restore_best: bool = Field(
        True, description="end with the weights of the best epoch by `monitor`; false keeps the last epoch's, "
        "which suits schedules that anneal to a small learning rate (one-cycle, cosine)"
    )
    calibration: Calibration = Field(default_factory=Calibration)
    threshold: Threshold = Field(default_factory=Threshold)
    checkpoint: Checkpointing = Field(default_factory=Checkpointing)
    inspect: Inspection = Field(default_factory=Inspection)
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: all cores")


# --------------------------------------------------------------------------- search
class SearchDim(Strict):
    """One searched param: a float/int range (optionally log-scaled) or a list of choices."""

    type: Literal["float", "int", "categorical"] = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> SearchDim:
        if self.type == "categorical" and not self.choices:
            raise ValueError("a categorical dimension needs `choices`")
        if self.type != "categorical" and (self.low is None or self.high is None or self.low > self.high):
            raise ValueError("a float/int dimension needs `low` <= `high`")
        return self


class TuneConfig(Strict):
    """`torchcycle tune <task>`: an Optuna search over params of the model/train sections."""

    trials: int = Field(20, ge=1)
    metric: Literal["val_loss", "val_accuracy", "val_roc_auc", "val_rmse", "val_mae", "val_r2"] = "val_loss"
    epochs: int | None = Field(None, ge=1, description="epochs per trial; default: train.epochs")
    prune_after: int | None = Field(
        4, ge=1, description="stop a trial early when, after this many completed trials and a few epochs, its "
        "best metric so far is worse than the median of earlier trials at the same epoch (Optuna's median "
        "rule); null: every trial runs to the end",
    )
    space: dict[str, SearchDim] = Field(
        default_factory=dict, description="dotted keys inside the task, e.g. model.dropout or train.lr"
    )

    @field_validator("space")
    @classmethod
    def _sections(cls, v: dict[str, SearchDim]) -> dict[str, SearchDim]:
        bad = [k for k in v if k.split(".")[0] not in ("model", "train")]
        if bad:
            raise ValueError(f"search keys must start with model. or train.: {bad}")
        return v


# --------------------------------------------------------------------------- tasks
def _default_model_name(name: str):
    def fill(value: Any) -> Any:
        if isinstance(value, dict) and "name" not in value:
            return {"name": name, **value}
        return value

    return fill


class TabularTask(Strict):
    kind: Literal["tabular"]
    source: TabularSource
    split: SplitConfig = Field(default_factory=SplitConfig)
    preprocess: TabularPreprocess = Field(default_factory=TabularPreprocess)
    model: TabularModel = Field(default_factory=MLPConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig | None = None

    _model_name = field_validator("model", mode="before")(_default_model_name("mlp"))


class ImageTask(Strict):
    kind: Literal["image"]
    source: ImageSource
    split: SplitConfig = Field(default_factory=SplitConfig)
    preprocess: ImagePreprocess = Field(default_factory=ImagePreprocess)
    model: ImageModel = Field(default_factory=CNNConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig | None = None

    _model_name = field_validator("model", mode="before")(_default_model_name("cnn"))


class TextTask(Strict):
    kind: Literal["text"]
    source: TextSource
    split: SplitConfig = Field(default_factory=SplitConfig)
    preprocess: TextPreprocess = Field(default_factory=TextPreprocess)
    model: TextModel = Field(default_factory=BagConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig | None = None

    _model_name = field_validator("model", mode="before")(_default_model_name("bag"))

    @model_validator(mode="after")
    def _encoder_and_tokenizer(self) -> TextTask:
        if self.model.name == "pretrained" and self.preprocess.tokenizer != "pretrained":
            raise ValueError("model `pretrained` reads the encoder's own token ids: set `preprocess.tokenizer: "
                             "pretrained` (and `preprocess.encoder`)")
        return self


TaskConfig = Annotated[TabularTask | ImageTask | TextTask, Field(discriminator="kind")]


# --------------------------------------------------------------------------- explain, export, register
class ExplainConfig(Strict):
    """explain@<task>: SHAP for tabular tasks, Grad-CAM for image tasks, integrated gradients for text."""

    shap_method: Literal["deep", "gradient"] = Field(
        "deep", description="deep: DeepExplainer (exact additivity for ReLU MLPs); gradient: GradientExplainer"
    )
    background_rows: int = Field(100, ge=1, description="training rows SHAP compares against")
    max_rows: int = Field(1000, ge=1, description="test rows explained and written to shap_values.parquet")
    local_examples: int = Field(6, ge=0, description="rows with a waterfall plot, half of them misclassified")
    gradcam_layer: str | None = Field(None, description="layer name for Grad-CAM; default: the last Conv2d")
    cam_method: Literal["gradcam", "hirescam"] = Field(
        "gradcam", description="hirescam: element-wise gradient x activation, marks only what the output reads"
    )
    examples_per_class: int = Field(2, ge=0, description="correct and misclassified test images per class")
    text_examples: int = Field(12, ge=0, description="text tasks: test texts highlighted in attributions.html, "
                               "half correct, half the most confident mistakes (regression: best and worst)")
    ig_steps: int = Field(32, ge=2, description="text tasks: integrated-gradients interpolation steps per text")


class ExportConfig(Strict):
    """export@<task>: ONNX with a parity check on the whole test split and a runtime benchmark."""

    parity_tolerance: float = Field(1e-4, gt=0, description="max |probability difference| torch vs ONNX Runtime")
    opset: int | None = Field(None, ge=17, description="ONNX opset; default: the exporter's")
    ort_threads: int = Field(1, ge=1, description="onnxruntime intra-op threads (1 is fastest at batch 1 here)")
    benchmark_repeats: int = Field(200, ge=10, description="batch-1 timing calls (batch-256 gets a tenth)")
    benchmark_seconds: float = Field(0.5, gt=0, description="and at least this long per measurement")
    min_speedup: float = Field(0.0, ge=0, description="ORT batch-1 latency floor vs eager torch; 0: report only")


class EvaluateConfig(Strict):
    """evaluate@<task> and slices@<task>: uncertainty of the headline metrics, calibration binning, and
    which groups of the test split are scored on their own."""

    bootstrap_samples: int = Field(200, ge=0, description="bootstrap resamples of the test split for confidence "
                                   "intervals of the headline metrics; 0: none")
    confidence: float = Field(0.95, gt=0, lt=1, description="level of the bootstrap intervals")
    ece_bins: int = Field(15, ge=2, description="equal-width confidence bins of the expected calibration error")
    slice_columns: dict[str, list[str]] = Field(
        default_factory=dict, description="per task, the columns to slice by; a task not listed: every "
        "categorical column (tables), or the class and an input property (images)"
    )
    min_slice_rows: int = Field(30, ge=1, description="levels with fewer test rows are not reported on their own")


class Gates(Strict):
    """Conditions a challenger must meet, besides beating the champion on the registry metric."""

    max_ece: float | None = Field(None, gt=0, description="highest expected calibration error on the test split")
    max_slice_drop: float | None = Field(
        None, ge=0, description="no slice's registry metric may fall more than this below the champion's same slice"
    )
    max_fairness_difference: float | None = Field(
        None, ge=0, description="highest demographic-parity or equalized-odds difference over the slice columns"
    )


class CardConfig(Strict):
    """What a model card says that data cannot: what the model is for, and what it must not be used for."""

    intended_use: str = ""
    limits: list[str] = Field(default_factory=list)
    owners: list[str] = Field(default_factory=list)


class RegistryConfig(Strict):
    """register@<task>: a new registry version per run; champion moves only on a clear improvement."""

    metric: Literal["auto", "roc_auc", "accuracy", "balanced_accuracy", "f1_macro", "log_loss", "rmse", "mae", "r2",
                    "mape"] = Field("auto", description="auto: roc_auc for classification, rmse for regression")
    margin: float = Field(0.001, ge=0, description="the challenger must beat the champion by at least this")
    gates: Gates = Field(default_factory=Gates)


class TrackingConfig(Strict):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; MLFLOW_TRACKING_URI wins; default sqlite:///mlflow.db"
    )
    experiment_prefix: str = "torchcycle-"
    log_figures: bool = True


class RetrainConfig(Strict):
    """Scheduled retraining (pipelines/): when to run, when new data is worth a retrain, retries."""

    cron: str = Field("0 3 * * *", description="schedule of the retraining deployment (default nightly)")
    deployment: str = "nightly-retrain"
    min_new_samples: int = Field(500, ge=1, description="retrain once this many new rows/images are pending")
    drift_share: float = Field(0.3, gt=0, le=1, description="retrain when this share of columns drifts")
    psi_threshold: float = Field(0.2, gt=0)
    p_value: float = Field(0.01, gt=0, lt=1)
    retries: int = Field(1, ge=0, description="retries of a failing stage (transient failures)")
    retry_delay_seconds: float = Field(5.0, ge=0, description="first retry delay; doubles each retry")
    stage_retries: dict[str, int] = Field(default_factory=dict, description="per stage name, e.g. {train: 2}")


class Params(Strict):
    seed: int = 42
    tasks: list[str] = Field(min_length=1)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    card: dict[str, CardConfig] = Field(default_factory=dict, description="per task: intended use and limits")
    export: ExportConfig = Field(default_factory=ExportConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    task_configs: dict[str, TaskConfig] = Field(default_factory=dict)

    def task(self, name: str) -> TabularTask | ImageTask | TextTask:
        try:
            return self.task_configs[name]
        except KeyError:
            known = ", ".join(sorted(self.task_configs)) or "none"
            raise ConfigError(
                f"unknown task '{name}'. Tasks defined in {PARAMS_FILE}: {known}. "
                f"Add a '{name}:' section (kind: tabular, image or text) to {PARAMS_FILE}."
            ) from None


# --------------------------------------------------------------------------- loading
_TOP_LEVEL = {"seed", "tasks", "tracking", "retrain"}
_TOP_LEVEL |= {"explain", "evaluate", "export", "registry", "card"}  # sections of the later stages
TASK_SECTIONS = ("source", "split", "preprocess", "model", "train")


def parse_params(raw: dict[str, Any], source: str = PARAMS_FILE) -> Params:
    """Validate a params mapping; task sections are the top-level keys named in `tasks`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    tasks = raw.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError(f"{source}: `tasks` must be a non-empty list of task names, e.g. [adult, mnist]")
    # a mapping with a `kind` is a task section; ones not listed in `tasks` are kept (and validated)
    # but not run, so a task can be switched off without deleting its settings
    sections = [k for k, v in raw.items() if k not in _TOP_LEVEL and isinstance(v, dict) and "kind" in v]
    unknown = [k for k in raw if k not in _TOP_LEVEL and k not in tasks and k not in sections]
    if unknown:
        allowed = sorted(_TOP_LEVEL | set(map(str, tasks)))
        hints = "; ".join(_suggest(k, allowed) for k in unknown)
        raise ConfigError(
            f"{source}: unknown top-level key(s) {unknown}. {hints}. Allowed: {allowed} "
            "or a task section (a mapping with `kind: tabular`, `image` or `text`)."
        )
    missing = [t for t in tasks if t not in raw]
    if missing:
        raise ConfigError(f"{source}: task(s) {missing} listed in `tasks` have no section of their own.")
    for t in tasks:
        absent = [k for k in TASK_SECTIONS if isinstance(raw[t], dict) and k not in raw[t]]
        if absent:
            raise ConfigError(
                f"{source}: task '{t}' has no {', '.join(absent)} section(s). dvc.yaml tracks each section as "
                f"a parameter dependency, so each must be present; write e.g. `{absent[0]}: {{}}` to use "
                "the defaults."
            )
    payload = {k: raw[k] for k in _TOP_LEVEL if k in raw}
    payload["task_configs"] = {t: raw[t] for t in dict.fromkeys([*tasks, *sections])}
    try:
        return Params.model_validate(payload)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found. Run torchcycle from the project root (where params.yaml is).")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw, str(path))


def _suggest(key: Any, allowed: list[str]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    return f"'{key}': did you mean '{close[0]}'" if close else f"'{key}' is not a known key"


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source} has {exc.error_count()} problem(s):"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] == "task_configs":
            loc = loc[1:]
            # drop the discriminator tag pydantic inserts (e.g. 'tabular', 'mlp')
            loc = [p for i, p in enumerate(loc) if not (i in (1, 3) and p in {"tabular", "image", "text", "mlp", "cnn", "bag", "gru",
                                                                    "lstm", "transformer", "pretrained"})]
        where = ".".join(loc)
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(err, exc)
            hint = _suggest(loc[-1], allowed) if allowed else ""
            lines.append(f"  - {where}: unknown key. {hint}. Allowed here: {', '.join(allowed)}.")
        else:
            lines.append(f"  - {where}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _allowed_keys(err: dict, exc: ValidationError) -> list[str]:
    """Field names of the model that rejected an extra key, found by walking the error location."""
    ann: Any = Params
    for part in err["loc"][:-1]:
        ann = _step(ann, part)
        if ann is None:
            return []
    ann = _step(ann, None) if not _is_model(ann) else ann
    return sorted(ann.model_fields) if _is_model(ann) else []


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _tag_of(model: Any) -> Any:
    from typing import get_args

    for key in ("kind", "name"):
        f = model.model_fields.get(key)
        if f is not None and get_args(f.annotation):
            return get_args(f.annotation)[0]
    return None


def _step(ann: Any, part: Any) -> Any:
    """Follow one location element: a field name, a dict key / list index, or a union tag."""
    from typing import get_args, get_origin

    while get_origin(ann) is Annotated:
        ann = get_args(ann)[0]
    if _is_model(ann):
        field = ann.model_fields.get(part)
        if field is None and _tag_of(ann) == part:
            return ann  # the discriminator tag pydantic puts in the location of a one-member union
        return field.annotation if field else None
    origin = get_origin(ann)
    if origin in (dict, list):
        return get_args(ann)[-1]
    members = [a for a in get_args(ann) if _is_model(a)]
    for m in members:
        for key in ("kind", "name"):
            f = m.model_fields.get(key)
            if f is not None and part in get_args(f.annotation):
                return m
    if len(members) == 1:
        return _step(members[0], part) if part is not None else members[0]
    return None
