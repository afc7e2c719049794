"""Champion/challenger promotion in the MLflow Model Registry.

Every pipeline run registers a new version of torchcycle-<task> and points `challenger` at it.
`champion` moves only when the new version beats the current champion on the params-named metric, by at
least the configured margin, on the same test split, AND passes every configured gate (`registry.gates`:
calibration error, per-slice drop against the champion, fairness difference). The first version serves
whatever its gates say (there is nothing else to serve), with a warning for each failing gate. The alias
is moved last, after everything else (scores, tags) succeeded, so a failure anywhere leaves the champion
where it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

CHAMPION, CHALLENGER = "champion", "challenger"
LOWER_IS_BETTER = {"log_loss", "rmse", "mae", "mape"}  # used when the caller does not say


@dataclass
class Gate:
    """One promotion condition besides the metric rule: the challenger's value, the limit, the verdict.

    A gate that cannot be measured (no ECE for this target, no fairness measures, no champion slices to
    compare with) passes with `skipped` set and the reason in `detail`.
    """

    name: str
    value: float | None
    limit: float | None
    passed: bool
    detail: str
    skipped: bool = False

    @property
    def verdict(self) -> str:
        return "skipped" if self.skipped else ("pass" if self.passed else "fail")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}

    def tags(self) -> dict[str, str]:
        return {
            f"gate.{self.name}.value": _fmt(self.value),
            f"gate.{self.name}.limit": "none" if self.limit is None else f"{self.limit:g}",
            f"gate.{self.name}.passed": str(self.passed).lower(),
            f"gate.{self.name}.verdict": self.verdict,
            f"gate.{self.name}.detail": self.detail[:4000],
        }

    def describe(self) -> str:
        """`max_ece (0.051234 > limit 0.03)`: the gate as a reason names it."""
        value = "none" if self.value is None else f"{self.value:.6f}"
        return f"{self.name} ({value} > limit {self.limit:g})" if self.limit is not None else self.name


@dataclass
class Decision:
    metric: str
    higher_is_better: bool
    margin: float
    challenger_version: str
    challenger_score: float | None
    champion_version: str | None
    champion_score: float | None
    champion_score_source: str | None
    promoted: bool
    reason: str
    gates: list[Gate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def rule(self) -> str:
        better = "higher" if self.higher_is_better else "lower"
        rule = (f"promote if {self.metric} ({better} is better) improves on the champion's by at least "
                f"{self.margin:g} on the same test split")
        if self.gates:
            limits = ", ".join(f"{g.name} {g.limit:g}" if g.limit is not None else g.name for g in self.gates)
            rule += f" and every gate passes ({limits})"
        return rule + "; the first version is promoted"

    @property
    def failed_gates(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gates": [g.as_dict() for g in self.gates], "rule": self.rule}

    def tags(self) -> dict[str, str]:
        """The decision as model-version tags (strings)."""
        return {
            "decision.metric": self.metric,
            "decision.margin": f"{self.margin:g}",
            "decision.challenger_score": _fmt(self.challenger_score),
            "decision.champion_version": self.champion_version or "none",
            "decision.champion_score": _fmt(self.champion_score),
            "decision.promoted": str(self.promoted).lower(),
            "decision.reason": self.reason,
            "decision.rule": self.rule,
            **({"decision.warnings": " | ".join(self.warnings)[:4000]} if self.warnings else {}),
            **{k: v for g in self.gates for k, v in g.tags().items()},
        }


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.6f}"


def decide(metric: str, margin: float, challenger_version: str, challenger_score: float | None,
           champion_version: str | None, champion_score: float | None,
           champion_score_source: str | None = None, higher_is_better: bool | None = None,
           gates: Sequence[Gate] = ()) -> Decision:
    """Promote the first version; afterwards only a strict improvement of at least `margin` with every
    gate passing.

    Once there is a champion, a missing or non-finite challenger score never promotes; a champion
    without a usable score (its metric undefined on this split) yields to a challenger with one. A failing
    gate keeps the champion and the reason names it; the first version is promoted anyway (nothing else
    could serve) and the failing gates become warnings.
    """
    higher = metric not in LOWER_IS_BETTER if higher_is_better is None else higher_is_better
    usable = challenger_score is not None and math.isfinite(challenger_score)
    if champion_version is None:  # nothing to compare with: the first version serves
        promoted, reason = True, "first version" if usable else f"first version (its {metric} is undefined)"
    elif not usable:
        promoted, reason = False, f"challenger has no finite {metric}"
    elif champion_score is None or not math.isfinite(champion_score):
        promoted, reason = True, f"champion has no finite {metric} on this test split"
    else:
        gain = (challenger_score - champion_score) if higher else (champion_score - challenger_score)
        promoted = gain > 0 and gain >= margin - 1e-12
        if promoted:
            reason = f"improves {metric} by {gain:.6f} >= margin {margin:g}"
        elif gain > 0:
            reason = f"improves {metric} by only {gain:.6f} < margin {margin:g} (tie within margin)"
        else:
            reason = f"does not improve {metric} ({challenger_score:.6f} vs champion {champion_score:.6f})"
    gates = list(gates)
    failed = [g for g in gates if not g.passed]
    warnings: list[str] = []
    if failed:
        names = ", ".join(g.describe() for g in failed)
        if champion_version is None:
            warnings = [f"gate {g.name} failed: {g.detail}" for g in failed]
            reason += f"; promoted although gate(s) failed: {names} (there is no champion to keep)"
        elif promoted:
            promoted = False
            reason = f"gate(s) failed: {names}; the champion stays (the metric alone would promote: {reason})"
        else:
            reason += f"; gate(s) failed too: {names}"
    return Decision(metric, higher, margin, challenger_version, challenger_score, champion_version,
                    champion_score, champion_score_source, promoted, reason, gates, warnings)


# --------------------------------------------------------------------------- gates (pure: dicts in)
def _finite(x: Any) -> float | None:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def ece_gate(limit: float, metrics: dict[str, Any]) -> Gate:
    """The challenger's expected calibration error on the test split (metrics.json `ece`)."""
    ece = _finite((metrics or {}).get("ece"))
    if ece is None:
        return Gate("max_ece", None, limit, True, "skipped: this target reports no expected calibration error",
                    skipped=True)
    passed = ece <= limit + 1e-12
    return Gate("max_ece", ece, limit, passed, f"ECE {ece:.6f} {'<=' if passed else '>'} limit {limit:g}")


def _slice_scores(slices: dict[str, Any] | None, metric: str) -> dict[tuple[str, str], float]:
    out = {}
    for s in (slices or {}).get("slices") or []:
        value = _finite((s.get("metrics") or {}).get(metric))
        if value is not None and s.get("column") is not None:
            out[(str(s["column"]), str(s.get("level")))] = value
    return out


def slice_drop_gate(limit: float, metric: str, higher_is_better: bool, challenger: dict[str, Any] | None,
                    champion: dict[str, Any] | None, champion_note: str | None = None) -> Gate:
    """The largest drop of `metric` in any slice level present in both slices reports (the challenger's
    and the champion's), in the metric's own direction; passes with a note when there is nothing to
    compare (no champion, no champion slices, no common slice with a finite metric)."""
    if champion is None:
        return Gate("max_slice_drop", None, limit, True,
                    f"skipped: {champion_note or 'no champion slices to compare with'}", skipped=True)
    ours, theirs = _slice_scores(challenger, metric), _slice_scores(champion, metric)
    common = sorted(set(ours) & set(theirs))
    if not common:
        return Gate("max_slice_drop", None, limit, True,
                    f"skipped: no slice with a finite {metric} in both the challenger's and the champion's report",
                    skipped=True)
    drops = {k: (theirs[k] - ours[k]) if higher_is_better else (ours[k] - theirs[k]) for k in common}
    (column, level), worst = max(drops.items(), key=lambda kv: kv[1])
    passed = worst <= limit + 1e-12
    detail = (f"largest drop over {len(common)} common slice(s): {column}={level} {metric} {ours[(column, level)]:.6f} "
              f"vs champion {theirs[(column, level)]:.6f} (drop {worst:.6f} {'<=' if passed else '>'} limit {limit:g})")
    return Gate("max_slice_drop", worst, limit, passed, detail)


FAIRNESS_MEASURES = ("demographic_parity_difference", "equalized_odds_difference")


def fairness_gate(limit: float, slices: dict[str, Any] | None) -> Gate:
    """The largest demographic-parity or equalized-odds difference over the slice columns."""
    found = [(value, column, measure) for column, m in ((slices or {}).get("fairness") or {}).items()
             for measure in FAIRNESS_MEASURES if (value := _finite((m or {}).get(measure))) is not None]
    if not found:
        return Gate("max_fairness_difference", None, limit, True, "skipped: no fairness measures in the slices report",
                    skipped=True)
    value, column, measure = max(found)
    passed = value <= limit + 1e-12
    return Gate("max_fairness_difference", value, limit, passed,
                f"largest: {measure} over {column} {value:.6f} {'<=' if passed else '>'} limit {limit:g}")


def compute_gates(gates_cfg: Any, metric: str, higher_is_better: bool, metrics: dict[str, Any] | None,
                  slices: dict[str, Any] | None, champion_slices: Callable[[], tuple[dict | None, str | None]]
                  ) -> list[Gate]:
    """The configured gates (None: off). `champion_slices()` is only called when the slice gate is on and
    returns (the champion's slices report or None, a note why not)."""
    out = []
    if getattr(gates_cfg, "max_ece", None) is not None:
        out.append(ece_gate(gates_cfg.max_ece, metrics or {}))
    if getattr(gates_cfg, "max_slice_drop", None) is not None:
        theirs, note = champion_slices()
        out.append(slice_drop_gate(gates_cfg.max_slice_drop, metric, higher_is_better, slices, theirs, note))
    if getattr(gates_cfg, "max_fairness_difference", None) is not None:
        out.append(fairness_gate(gates_cfg.max_fairness_difference, slices))
    return out


def current_alias(client: Any, name: str, alias: str) -> Any | None:
    """The version behind an alias, or None when the model or the alias does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def ensure_registered_model(client: Any, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=description)


def register_and_decide(
    client: Any,
    name: str,
    model_uri: str,
    run_id: str,
    metric: str,
    margin: float,
    challenger_score: float | None,
    split_id: str,
    rescore: Callable[[str], float | None],
    model_id: str | None = None,
    tags: dict[str, str] | None = None,
    higher_is_better: bool | None = None,
    gates: Sequence[Gate] | Callable[[Any | None], Sequence[Gate]] = (),
) -> tuple[Any, Decision]:
    """Register `model_uri` as a new version of `name`, compare it with the champion and move aliases.

    The champion's score is its recorded one when it was measured on the same test split (`split_id`),
    otherwise `rescore(champion_uri)` measures it now. `gates` is a list, or a function of the current
    champion's model version (None when there is none) that returns one. Aliases move only after every
    score and tag is in place, champion last: an exception anywhere before leaves both aliases untouched.
    """
    ensure_registered_model(client, name, "torchcycle model; aliases: champion (serving), challenger (latest run)")
    version_tags = {"test_split": split_id, f"score.{metric}": _fmt(challenger_score), **(tags or {})}
    kwargs = {"model_id": model_id} if model_id else {}
    version = client.create_model_version(name, model_uri, run_id=run_id, tags=version_tags, **kwargs)
    champion = current_alias(client, name, CHAMPION)
    champion_score, source = None, None
    if champion is not None:
        recorded = champion.tags.get(f"score.{metric}")
        if champion.tags.get("test_split") == split_id and recorded not in (None, "none"):
            champion_score, source = float(recorded), "recorded on the same test split"
        else:
            uri = f"models:/{name}/{champion.version}"
            try:
                champion_score, source = rescore(uri), "re-scored on this test split"
            except Exception as exc:
                from torchcycle.errors import TorchcycleError

                raise TorchcycleError(
                    f"cannot re-score the champion {uri} on the current test split ({type(exc).__name__}: {exc}). "
                    f"Version {version.version} stays registered without a decision; no alias was moved."
                ) from exc
    gate_list = list(gates(champion) if callable(gates) else gates)
    decision = decide(metric, margin, str(version.version), challenger_score,
                      None if champion is None else str(champion.version), champion_score, source,
                      higher_is_better=higher_is_better, gates=gate_list)
    for key, value in decision.tags().items():
        client.set_model_version_tag(name, version.version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    return version, decision
