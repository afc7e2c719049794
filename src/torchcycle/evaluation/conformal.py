"""Split-conformal prediction intervals for regression, calibrated on a held-out (validation) split.

Split conformal needs no assumption about the noise distribution: if calibration and new points are
exchangeable, the interval `pred ± h` covers at least `coverage` of new targets, where h is a
finite-sample-corrected quantile of the calibration |residuals|. One half-width for every point is the
plainest variant; it is honest on average, not per region of the input space.

The quantile comes from `crepes` rather than being hand-rolled or taken from MAPIE: crepes is maintained,
its ConformalRegressor is fitted on precomputed residuals, so it works for a PyTorch model trained
elsewhere, whereas MAPIE expects a scikit-learn estimator and would need a wrapper around the network.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
from crepes import ConformalRegressor

from torchcycle.evaluation.regression import validate_targets

# Below this the calibration quantile jumps by whole residuals from one point to the next, so the
# interval width is too noisy to report even when the coverage level itself is reachable.
MIN_CALIBRATION_POINTS = 20


def conformal_halfwidth(y_cal: np.ndarray, pred_cal: np.ndarray, coverage: float) -> float:
    """Half-width h such that [pred - h, pred + h] covers `coverage` of new points.

    Fitted on the calibration residuals y_cal - pred_cal. crepes' ConformalRegressor.predict_int returns
    symmetric intervals around the prediction it is given, so predicting around 0 yields [-h, h].
    """
    y, p = validate_targets(y_cal, pred_cal, names=("y_cal", "pred_cal"))
    _check_coverage(coverage)
    needed = min_calibration_points(coverage)
    if y.size < needed:
        raise ValueError(f"need at least {needed} calibration points for coverage {coverage}, got {y.size}")
    regressor = ConformalRegressor().fit(y - p)
    with warnings.catch_warnings():
        # crepes warns and returns infinite bounds when the calibration set is too small; the size check
        # above already turns that case into a ValueError, and the check below guards any rounding edge.
        warnings.simplefilter("ignore", UserWarning)
        bounds = regressor.predict_int(np.zeros(1), confidence=coverage)
    halfwidth = float(bounds[0, 1])
    if not math.isfinite(halfwidth):
        raise ValueError(f"{y.size} calibration points are too few for coverage {coverage}")
    return halfwidth


def interval(pred: np.ndarray, halfwidth: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds pred ∓ halfwidth, kept separate so they feed `regression_metrics` directly."""
    if not math.isfinite(halfwidth) or halfwidth < 0:
        raise ValueError(f"halfwidth must be a finite non-negative number, got {halfwidth}")
    p = np.asarray(pred, dtype=np.float64)
    return p - halfwidth, p + halfwidth


def min_calibration_points(coverage: float) -> int:
    """Fewest calibration points that give a finite interval at `coverage` (at least 20).

    The split-conformal quantile is the ceil((n + 1) * coverage)-th smallest residual, which only exists
    when n >= coverage / (1 - coverage); e.g. 0.99 coverage needs 99 points.
    """
    _check_coverage(coverage)
    return max(MIN_CALIBRATION_POINTS, math.ceil(coverage / (1.0 - coverage) - 1e-9))


def _check_coverage(coverage: float) -> None:
    if not isinstance(coverage, numbers.Real) or not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be a number strictly between 0 and 1, got {coverage!r}")
