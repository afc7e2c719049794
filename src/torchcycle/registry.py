"""Champion/challenger promotion in the MLflow Model Registry.

Every pipeline run registers a new version of torchcycle-<task> and points `challenger` at it.
`champion` moves only when the new version beats the current champion on the params-named metric, by at
least the configured margin, on the same test split. The alias is moved last, after everything else
(scores, tags) succeeded, so a failure anywhere leaves the champion where it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

CHAMPION, CHALLENGER = "champion", "challenger"
LOWER_IS_BETTER = {"log_loss", "rmse", "mae", "mape"}  # used when the caller does not say


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

    @property
    def rule(self) -> str:
        better = "higher" if self.higher_is_better else "lower"
        return (f"promote if {self.metric} ({better} is better) improves on the champion's by at least "
                f"{self.margin:g} on the same test split; the first version is promoted")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rule": self.rule}

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
        }


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.6f}"


def decide(metric: str, margin: float, challenger_version: str, challenger_score: float | None,
           champion_version: str | None, champion_score: float | None,
           champion_score_source: str | None = None, higher_is_better: bool | None = None) -> Decision:
    """Promote the first version; afterwards only a strict improvement of at least `margin`.

    Once there is a champion, a missing or non-finite challenger score never promotes; a champion
    without a usable score (its metric undefined on this split) yields to a challenger with one.
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
    return Decision(metric, higher, margin, challenger_version, challenger_score, champion_version,
                    champion_score, champion_score_source, promoted, reason)


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
) -> tuple[Any, Decision]:
    """Register `model_uri` as a new version of `name`, compare it with the champion and move aliases.

    The champion's score is its recorded one when it was measured on the same test split (`split_id`),
    otherwise `rescore(champion_uri)` measures it now. Aliases move only after every score and tag is
    in place, champion last: an exception anywhere before leaves both aliases untouched.
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
    decision = decide(metric, margin, str(version.version), challenger_score,
                      None if champion is None else str(champion.version), champion_score, source,
                      higher_is_better=higher_is_better)
    for key, value in decision.tags().items():
        client.set_model_version_tag(name, version.version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    return version, decision
