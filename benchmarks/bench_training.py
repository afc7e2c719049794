"""Time-to-accuracy: the reference ("seed") training loops against torchcycle's loop, side by side in
one process on the same data.

    python benchmarks/bench_training.py            # or: make bench

For each task the seed loop runs first (DataLoader over a TensorDataset, batch 64, Adam 1e-3); its
final test accuracy is the target. Test accuracy is measured after every epoch with the evaluation
time kept off the training clock. Then torchcycle's `fit` trains on the same split in several
configurations (the levers), and the time each needs to reach the target is compared. The peak RSS
of the real `torchcycle train` stage (one epoch on the pipeline's processed data) is measured in a
child process. Results: benchmarks/results/training.json and training.md.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
ORIGINAL_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
# isort: off
import torchcycle  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch loads OpenMP, as the CLI does)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torchcycle.config import EarlyStopping, TrainConfig  # noqa: E402
from torchcycle.models.cnn import ImageCNN  # noqa: E402
from torchcycle.models.mlp import TabularMLP  # noqa: E402
from torchcycle.training.loop import TensorData, fit, predict_proba  # noqa: E402
# isort: on

DATA = ROOT / "src" / "torchcycle" / "datasets"
RESULTS = ROOT / "benchmarks" / "results"

ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
                 "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week",
                 "native-country", "income"]  # fmt: skip


# --------------------------------------------------------------------------- data, as the seeds prepared it
def adult_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frames = [pd.read_csv(DATA / "adult" / name, header=None, names=ADULT_COLUMNS, sep=r",\s*", engine="python",
                          skiprows=skip, na_values="?", compression="gzip")
              for name, skip in (("adult.data.gz", 0), ("adult.test.gz", 1))]  # fmt: skip
    df = pd.concat(frames, ignore_index=True)
    y = df.pop("income").str.rstrip(".").eq(">50K").astype(np.int64).to_numpy()
    numeric = df.select_dtypes("number").columns.tolist()
    categorical = [c for c in df.columns if c not in numeric]
    df[categorical] = df[categorical].fillna("missing")
    x_tr, x_te, y_tr, y_te = train_test_split(df, y, test_size=0.2, random_state=42)
    ct = ColumnTransformer([("num", StandardScaler(), numeric),
                            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical)])
    return (ct.fit_transform(x_tr).astype(np.float32), y_tr, ct.transform(x_te).astype(np.float32), y_te)


def mnist_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    with gzip.open(DATA / "mnist5k" / "mnist_5k.csv.gz", "rb") as fh:
        arr = np.loadtxt(io.BytesIO(fh.read()), delimiter=",", dtype=np.float32)
    x, y = (arr[:, :784] / 255.0).reshape(-1, 1, 28, 28).astype(np.float32), arr[:, 784].astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=42, stratify=y)
    return x_tr, y_tr, x_te, y_te


# --------------------------------------------------------------------------- the seed loops
def seed_adult_model(d: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 2))


class SeedCNN(nn.Module):
    """Two 3x3 convs (32, 64) each followed by max-pool, 128 hidden units."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3)
        self.fc1, self.fc2 = nn.Linear(64 * 5 * 5, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 2048]).argmax(1) for i in range(0, len(x), 2048)])
    model.train()
    return float((pred == y).float().mean())


def seed_loop(model: nn.Module, x_tr, y_tr, x_te, y_te, epochs: int) -> list[dict[str, float]]:
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(x_tr, y_tr), batch_size=64, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    clock, curve = 0.0, []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        clock += time.perf_counter() - t0
        curve.append({"epoch": epoch, "seconds": clock, "test_accuracy": accuracy(model, x_te, y_te)})
    return curve


def seed_setup(task: str):
    """Tensors and model of the seed loop for `task`."""
    x_tr, y_tr, x_te, y_te = adult_data() if task == "adult" else mnist_data()
    xt, yt, xe, ye = map(torch.from_numpy, (x_tr, y_tr, x_te, y_te))
    torch.manual_seed(0)  # the same initial weights in the child and in this process
    if task == "adult":
        return xt, yt, xe, ye, seed_adult_model(xt.shape[1]), 10
    return xt, yt, xe, ye, SeedCNN(), 8


def seed_in_child(task: str) -> list[dict]:
    """The seed loop in a child process with the environment a user would run it with (torch's default
    threads and OpenMP waiting policy), since the OpenMP setting is fixed per process."""
    env = dict(os.environ)
    if ORIGINAL_OMP_WAIT_POLICY is None:
        env.pop("OMP_WAIT_POLICY", None)
    else:
        env["OMP_WAIT_POLICY"] = ORIGINAL_OMP_WAIT_POLICY
    env["PYTHONPATH"] = str(ROOT / "src")
    # torch (and its OpenMP runtime) loads before the bench imports torchcycle, so the policy stays as given
    code = (f"import torch, sys, json, runpy; sys.argv=['bench', '--seed-only', {task!r}]; "
            f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- torchcycle's loop
class _TestCurve:
    def __init__(self, model: nn.Module, test: TensorData) -> None:
        self.model, self.test, self.curve, self.clock = model, test, [], 0.0

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.clock = logs["train_seconds"]  # training time only: validation and this callback excluded
        acc = float((predict_proba(self.model, self.test).argmax(1) == self.test.y.numpy()).mean())
        self.curve.append({"epoch": epoch, "seconds": self.clock, "test_accuracy": acc})


def torchcycle_curve(build: Callable[[], nn.Module], train: TensorData, test: TensorData, **train_kw) -> list[dict]:
    torch.manual_seed(0)
    if train_kw.get("num_threads"):  # the stage applies train.num_threads; fit alone does not
        torch.set_num_threads(train_kw["num_threads"])
    model = build()
    cfg = TrainConfig(early_stopping=EarlyStopping(enabled=False), **train_kw)
    cb = _TestCurve(model, test)
    fit(model, train, train.take(1000), cfg, n_classes=int(train.y.max()) + 1, seed=0, callbacks=[cb],
        progress=False)
    return cb.curve


def time_to(curve: list[dict], target: float) -> float | None:
    return next((c["seconds"] for c in curve if c["test_accuracy"] >= target - 1e-12), None)


# --------------------------------------------------------------------------- peak memory of the real stage
def stage_peak_rss(task: str) -> dict[str, Any]:
    """Run `torchcycle train <task>` (default params, one epoch) on the pipeline's processed data in a
    scratch project and read the child's peak RSS from the kernel."""
    import yaml

    processed = ROOT / "data" / "processed" / task
    if not (processed / "train.npz").exists():
        return {"skipped": f"{processed} missing: run `dvc repro preprocess@{task}` first"}
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params[task]["train"]["epochs"] = 1
    params[task]["train"].setdefault("checkpoint", {})["enabled"] = False
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data" / "processed").mkdir(parents=True)
        os.symlink(processed, root / "data" / "processed" / task)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        exe = Path(sys.executable).parent / "torchcycle"
        proc = subprocess.Popen([str(exe), "train", task, "--no-progress"], cwd=root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = proc.stdout.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return {"error": out[-2000:]}
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "epochs": 1}


# --------------------------------------------------------------------------- main
def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "python": platform.python_version(), "load_average_at_start": os.getloadavg()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["adult", "mnist"])
    ap.add_argument("--quick", action="store_true", help="only the seed loop and the speed preset per task")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS run of the real train stage")
    ap.add_argument("--seed-only", help=argparse.SUPPRESS)  # child process: run one seed loop, print JSON
    args = ap.parse_args()
    if args.seed_only:
        xt, yt, xe, ye, model, epochs = seed_setup(args.seed_only)
        print(json.dumps(seed_loop(model, xt, yt, xe, ye, epochs)))
        return
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    results: dict[str, Any] = {"machine": machine(), "tasks": {}}

    for task in args.tasks:
        if task == "adult":
            x_tr, y_tr, x_te, y_te = adult_data()
            d = x_tr.shape[1]
            xt, yt, xe, ye = map(torch.from_numpy, (x_tr, y_tr, x_te, y_te))
            torch.manual_seed(0)
            seed_model, seed_epochs = seed_adult_model(d), 10
            train = TensorData((xt, torch.zeros(len(yt), 0, dtype=torch.long)), yt)
            test = TensorData((xe, torch.zeros(len(ye), 0, dtype=torch.long)), ye)

            def mlp(hidden: list[int], d: int = d) -> Callable[[], nn.Module]:
                return lambda: TabularMLP(d, [], 2, hidden, dropout=0.0, batch_norm=False)

            adult_preset = {"epochs": 8, "batch_size": 512, "optimizer": "adamw", "lr": 1e-2,
                            "scheduler": "onecycle", "onecycle_pct_start": 0.25}
            variants = {
                "seed recipe, in-memory batches": (mlp([32]), {"epochs": 10, "batch_size": 64, "optimizer": "adam",
                                                                   "lr": 1e-3, "scheduler": "none"}),
                "seed recipe, 1 thread": (mlp([32]), {"epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": 1e-3,
                                                          "scheduler": "none", "num_threads": 1}),
                "batch 512 + one-cycle": (mlp([32]), {"epochs": 6, "batch_size": 512, "optimizer": "adam", "lr": 1e-2,
                                                          "scheduler": "onecycle"}),
                "speed preset": (mlp([64]), adult_preset),
                "speed preset + bf16": (mlp([64]), {**adult_preset, "mixed_precision": True}),
                "speed preset + torch.compile": (mlp([64]), {**adult_preset, "compile": True}),
            }  # fmt: skip
        else:
            x_tr, y_tr, x_te, y_te = mnist_data()
            xt, yt, xe, ye = map(torch.from_numpy, (x_tr, y_tr, x_te, y_te))
            torch.manual_seed(0)
            seed_model, seed_epochs = SeedCNN(), 8
            train, test = TensorData((xt,), yt), TensorData((xe,), ye)

            def cnn(channels: list[int], hidden: int, bn: bool = True) -> Callable[[], nn.Module]:
                return lambda: ImageCNN(1, (28, 28), 10, channels, hidden=hidden, dropout=0.0, batch_norm=bn)

            preset = {"epochs": 5, "batch_size": 128, "optimizer": "adamw", "lr": 1e-2, "scheduler": "onecycle",
                          "onecycle_pct_start": 0.25}  # fmt: skip
            variants = {
                "seed recipe, in-memory batches": (cnn([32, 64], 128, bn=False),
                                                   {"epochs": 8, "batch_size": 64, "optimizer": "adam", "lr": 1e-3,
                                                        "scheduler": "none"}),
                "seed recipe, channels-last": (cnn([32, 64], 128, bn=False),
                                               {"epochs": 8, "batch_size": 64, "optimizer": "adam", "lr": 1e-3,
                                                    "scheduler": "none", "channels_last": True}),
                "batch 128 + one-cycle + BN": (cnn([32, 64], 128), preset),
                "speed preset": (cnn([16, 32], 64), preset),
                "speed preset + channels-last": (cnn([16, 32], 64), {**preset, "channels_last": True}),
                "speed preset + bf16": (cnn([16, 32], 64), {**preset, "mixed_precision": True}),
                "speed preset + torch.compile": (cnn([16, 32], 64), {**preset, "compile": True}),
            }  # fmt: skip
        if args.quick:
            variants = {k: v for k, v in variants.items() if k == "speed preset"}
        print(f"[{task}] seed loop ({seed_epochs} epochs, DataLoader, batch 64), as the seed runs it...", flush=True)
        seed_curve = seed_in_child(task)
        target = seed_curve[-1]["test_accuracy"]
        seed_time = time_to(seed_curve, target)
        entry: dict[str, Any] = {"target_accuracy": target, "seed": {"curve": seed_curve, "time_to_target": seed_time},
                                 "torchcycle": {}}  # fmt: skip
        print(f"[{task}] seed: test accuracy {target:.4f}, reached after {seed_time:.2f}s of training", flush=True)
        passive = seed_loop(seed_model, xt, yt, xe, ye, seed_epochs)  # same loop, this process's OpenMP setting
        entry["seed_passive_openmp"] = {"curve": passive, "time_to_target": time_to(passive, target)}
        print(f"[{task}] seed loop with passive OpenMP waiting: {entry['seed_passive_openmp']['time_to_target']}s",
              flush=True)
        for name, (build, kw) in variants.items():
            threads = kw.get("num_threads")
            curve = torchcycle_curve(build, train, test, **kw)
            torch.set_num_threads(len(os.sched_getaffinity(0)))  # fit may have changed it via params
            t = time_to(curve, target)
            ratio = (t / seed_time) if t is not None else None
            passive_t = entry["seed_passive_openmp"]["time_to_target"]
            entry["torchcycle"][name] = {"params": kw, "curve": curve, "time_to_target": t, "ratio": ratio,
                                         "ratio_vs_seed_passive_openmp": (t / passive_t) if t and passive_t else None,
                                         "threads": threads}  # fmt: skip
            shown = f"{t:.2f}s, ratio {ratio:.3f} (1/{1 / ratio:.1f})" if t else "target not reached"
            print(f"[{task}] torchcycle {name}: best acc {max(c['test_accuracy'] for c in curve):.4f}; "
                  f"time to {target:.4f}: {shown}", flush=True)
        if not args.no_rss:
            entry["train_stage_memory"] = stage_peak_rss(task)
            print(f"[{task}] train stage peak RSS: {entry['train_stage_memory']}", flush=True)
        results["tasks"][task] = entry
    results["machine"]["load_average_at_end"] = os.getloadavg()
    import resource

    results["bench_process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "training.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "training.md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = ["# Training speed: time to the seed loop's test accuracy", "",
             (f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}; "
             f"load average at start {m['load_average_at_start'][0]:.2f}, at end "
             f"{m.get('load_average_at_end', [float('nan')])[0]:.2f} (the cores were shared)."), "",
             "Training time only (evaluation after each epoch is off the clock). Ratio = torchcycle / seed.", ""]  # fmt: skip
    for task, e in r["tasks"].items():
        lines += [f"## {task}: target test accuracy {e['target_accuracy']:.4f}", "",
                  "| loop | time to target (s) | ratio vs seed | ratio vs seed with passive OpenMP | best test accuracy |",
                  "|---|---|---|---|---|",
                  (f"| seed (DataLoader, batch 64), as run by default | {e['seed']['time_to_target']:.2f} | 1 | - | "
                  f"{max(c['test_accuracy'] for c in e['seed']['curve']):.4f} |")]  # fmt: skip
        sp = e.get("seed_passive_openmp")
        if sp and sp["time_to_target"] is not None:
            lines.append(f"| seed, same loop with OMP_WAIT_POLICY=PASSIVE | {sp['time_to_target']:.2f} | "
                         f"{sp['time_to_target'] / e['seed']['time_to_target']:.3f} | 1 | "
                         f"{max(c['test_accuracy'] for c in sp['curve']):.4f} |")
        for name, v in e["torchcycle"].items():
            t = f"{v['time_to_target']:.2f}" if v["time_to_target"] is not None else "not reached"
            ratio = f"{v['ratio']:.3f}" if v["ratio"] is not None else "-"
            rp = v.get("ratio_vs_seed_passive_openmp")
            rp = f"{rp:.3f}" if rp is not None else "-"
            best = max(c["test_accuracy"] for c in v["curve"])
            lines.append(f"| torchcycle: {name} | {t} | {ratio} | {rp} | {best:.4f} |")
        mem = e.get("train_stage_memory", {})
        if "peak_rss_mb" in mem:
            lines += ["", f"Peak RSS of `torchcycle train {task}` (default params, one epoch): {mem['peak_rss_mb']} MB"]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
