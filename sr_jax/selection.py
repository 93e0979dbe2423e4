"""Scoring and ranking candidate formulas (reference.md 5.3), batched in JAX.

E2E scores each candidate with numexpr, one at a time. Here every candidate of every
dataset is scored in a few jitted calls: candidates are grouped by compiled shape
(compiler buckets), each reads its own dataset from one padded device array by index,
and MSE / R2 come back for all of them. Non-finite predictions score MSE = inf.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sr_jax import compiler
from sr_jax import expressions
from sr_jax import interpreter

SELECTION_RULES = ("r2", "penalized", "simplest")
# The R2 that any formula may give up to an exact fit: float64 rounding of the scores
# (R2 itself is spaced 1.1e-16 below 1). 1e-10 let a formula 1.5e-11 worse than an
# exact law win that was 0.1% off on a sixth of its points (BENCHMARKS.md).
EXACT_SLACK = 1e-13
# The 'simplest' rule's defaults (selection_score says why each is there), shared by
# InferenceConfig and the regressor.
R2_TOLERANCE = 1e-4
RELATIVE_TOLERANCE = 0.1
MAX_TOLERANCE = 3e-4
ERROR_RATIO = 1e3
# Elements (candidates x nodes x points) one scoring call may hold in its node buffers.
_ELEMENT_BUDGET = 1 << 24


@dataclasses.dataclass(frozen=True)
class Scores:
  mse: np.ndarray  # inf where the prediction is not finite on some point
  r2: np.ndarray  # -inf where mse is inf


def score(prefixes: Sequence[expressions.Prefix], dataset_ids: Sequence[int],
          xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], scaled: bool = False,
          check: bool = True, shape: tuple[int, int, int] | None = None) -> Scores:
  """MSE and R2 of prefixes[i] on dataset dataset_ids[i], for all i at once.

  xs[j] is N_j x D_j and ys[j] has N_j values (all finite). Runs in float64 under
  `jax.enable_x64(True)`, else float32. scaled: the scores of a + b * prediction with
  the best a and b (least squares, in closed form): R2 is then the squared correlation
  of prediction and y (the search screens offspring with it, as Operon does).
  check=False skips validating prefixes that are valid by construction. shape:
  (operator nodes, constants, candidates per chunk) of the compiled program, at least
  those nodes and constants and exactly that chunk, so that a caller's calls of many
  sizes share one program (each new shape compiles, seconds in float64).
  """
  if not prefixes:
    return Scores(np.zeros(0), np.zeros(0))
  dtype = interpreter.float_dtype()
  num_points = compiler.bucket(max(len(y) for y in ys), compiler.CALL_POINT_BUCKETS)
  num_features = max(x.shape[1] for x in xs)
  x_MxNxD = np.zeros((len(xs), num_points, num_features))
  y_MxN = np.zeros((len(xs), num_points))
  mask_MxN = np.zeros((len(xs), num_points), bool)
  for j, (x, y) in enumerate(zip(xs, ys)):
    x_MxNxD[j, :len(y), :x.shape[1]] = x
    y_MxN[j, :len(y)] = y
    mask_MxN[j, :len(y)] = True
  data = (jnp.asarray(x_MxNxD, dtype), jnp.asarray(y_MxN, dtype), jnp.asarray(mask_MxN))
  mse = np.full(len(prefixes), np.inf)
  r2 = np.full(len(prefixes), -np.inf)
  # One program shape per call (~0.3 s to compile in float64; compilation dominated a
  # cold ranking): every candidate padded to the call's longest, in chunks of similar
  # lengths (evaluate_batch skips the padding rows a chunk shares).
  nodes = [compiler.num_operator_nodes(p) for p in prefixes]
  min_nodes, min_constants, fixed_chunk = shape or (1, 1, 0)
  length = compiler.bucket(max(max(nodes), min_nodes), compiler.CALL_NODE_BUCKETS)
  slots = compiler.bucket(max(max(map(expressions.num_constants, prefixes)), min_constants),
                          compiler.CALL_CONSTANT_BUCKETS)
  chunk = fixed_chunk or max(8, min(
      512, 1 << (_ELEMENT_BUDGET // (length * num_points)).bit_length() - 1,
      1 << (len(prefixes) - 1).bit_length()))
  order = np.argsort(nodes, kind="stable")
  for begin in range(0, len(prefixes), chunk):
    rows = order[begin:begin + chunk].tolist()
    padded = rows + [rows[0]] * (chunk - len(rows))
    program = compiler.compile_batch([prefixes[i] for i in padded], length, slots,
                                     check=check)
    ids = jnp.asarray([dataset_ids[i] for i in padded], jnp.int32)
    out = _score_chunk(tuple(map(jnp.asarray, program.arrays)),
                       jnp.asarray(program.constants_BxK, dtype), ids, *data, scaled=scaled)
    chunk_mse, chunk_r2 = (np.asarray(a, np.float64)[:len(rows)] for a in out)
    mse[rows], r2[rows] = chunk_mse, chunk_r2
  return Scores(mse, r2)


@functools.partial(jax.jit, static_argnames="scaled")
def _score_chunk(program, constants_BxK, ids_B, x_MxNxD, y_MxN, mask_MxN, scaled=False):
  x_BxNxD, y_BxN, mask_BxN = x_MxNxD[ids_B], y_MxN[ids_B], mask_MxN[ids_B]
  prediction_BxN = interpreter.evaluate_batch(*program, constants_BxK, x_BxNxD)
  count_B = jnp.maximum(jnp.sum(mask_BxN, axis=1), 1)
  finite_B = jnp.all(jnp.isfinite(prediction_BxN) | ~mask_BxN, axis=1)
  if scaled:
    prediction_BxN = _linearly_scaled(jnp.where(mask_BxN & finite_B[:, None],
                                                prediction_BxN, 0.0), y_BxN, mask_BxN)
  error_BxN = jnp.where(mask_BxN, prediction_BxN - y_BxN, 0.0)
  mse_B = jnp.where(finite_B, jnp.sum(error_BxN**2, axis=1) / count_B, jnp.inf)
  mean_B = jnp.sum(jnp.where(mask_BxN, y_BxN, 0.0), axis=1) / count_B
  variance_B = jnp.sum(jnp.where(mask_BxN, (y_BxN - mean_B[:, None])**2, 0.0),
                       axis=1) / count_B
  # sklearn's convention for a constant target: 1 if fitted exactly, else 0.
  r2_B = jnp.where(variance_B > 0, 1.0 - mse_B / jnp.where(variance_B > 0, variance_B, 1.0),
                   jnp.where(mse_B == 0, 1.0, 0.0))
  mse_B = jnp.where(jnp.isnan(mse_B), jnp.inf, mse_B)
  return mse_B, jnp.where(jnp.isfinite(mse_B), r2_B, -jnp.inf)


def _linearly_scaled(prediction_BxN, y_BxN, mask_BxN):
  """a + b * prediction with the least-squares a, b per row (b = 0 for a constant
  prediction): the fit linear scaling gives before its error is counted."""
  count_B = jnp.maximum(jnp.sum(mask_BxN, axis=1), 1)
  mean = lambda v: jnp.sum(jnp.where(mask_BxN, v, 0.0), axis=1) / count_B
  f_mean, y_mean = mean(prediction_BxN), mean(y_BxN)
  centred_BxN = prediction_BxN - f_mean[:, None]
  variance_B = mean(centred_BxN ** 2)
  slope_B = jnp.where(variance_B > 0, mean(centred_BxN * (y_BxN - y_mean[:, None]))
                      / jnp.where(variance_B > 0, variance_B, 1.0), 0.0)
  return y_mean[:, None] + slope_B[:, None] * centred_BxN


def unique_by_skeleton(prefixes: Sequence[expressions.Prefix], order: Sequence[int],
                       frames: Sequence | None = None) -> list[int]:
  """Indices (from `order`, best first) whose skeleton no earlier one has: E2E keeps
  only the best candidate of each skeleton. With `frames` (the coordinates each
  formula reads its variables in), one skeleton in two frames is two functions."""
  seen, kept = set(), []
  for i in order:
    key = (frames[i] if frames is not None else None, expressions.skeleton(prefixes[i]))
    if key not in seen:
      seen.add(key)
      kept.append(i)
  return kept


def selection_score(r2: np.ndarray, complexity: np.ndarray, rule: str,
                    complexity_penalty: float = 1e-3,
                    r2_tolerance: float = R2_TOLERANCE,
                    relative_tolerance: float = RELATIVE_TOLERANCE,
                    max_tolerance: float = MAX_TOLERANCE,
                    error_ratio: float = ERROR_RATIO) -> np.ndarray:
  """Higher is better, within one dataset's candidates.

  'r2': E2E's rule, the most accurate. 'penalized': R2 minus a price per prefix node, so
  a much shorter formula wins over a marginally better fit. 'simplest': the shortest
  formula whose R2 is within r2_tolerance of the best, or within relative_tolerance
  of the best formula's error 1 - R2 where that is more (PySR's 'best' rule likewise
  looks only at formulas whose loss is within 1.5x of the lowest): an exact fit
  leaves little room, a rough one more, but never more than max_tolerance, because
  noise in y makes every fit look rough (at SRBench's noise 0.1, 10% of the best
  error let simpler, wrong formulas win on 8 of 117 Feynman problems). Those score
  above 1, the shortest highest (ties: the more accurate), and the rest score their
  R2. On 117 Feynman problems at 2 s of search r2_tolerance alone picked formulas of
  median SRBench size 18 instead of 22 at the same R2 > 0.99 and > 0.999 rates, and
  relative_tolerance 0.1 17 (15 uncapped; BENCHMARKS.md). Near an exact fit the
  tolerance shrinks: a shorter formula's 1 - R2 may exceed the best one's by at most
  error_ratio times it (but EXACT_SLACK always: float64's rounding), so an exact law
  (1 - R2 = 1e-16) is not traded for a shorter approximation at 1 - R2 = 3e-5, which
  r2_tolerance alone let win on 11 of 117 Feynman problems (m0 / sqrt(1 - v^2 / c^2)
  for m0 (1 + 0.5 v^2 / c^2)-like series; BENCHMARKS.md).
  """
  r2 = np.asarray(r2, np.float64)
  if rule == "r2":
    return r2
  if rule == "penalized":
    return r2 - complexity_penalty * np.asarray(complexity)
  if rule == "simplest":
    finite = np.isfinite(r2)
    if not finite.any():
      return r2
    best = r2[finite].max()
    slack = r2_slack(best, r2_tolerance, relative_tolerance, max_tolerance, error_ratio)
    within = finite & (r2 >= best - slack)
    shortness = 1 + 1 / (1 + np.asarray(complexity, np.float64))
    return np.where(within, shortness + 1e-6 * np.where(finite, r2, 0), r2)
  raise ValueError(f"unknown selection rule {rule!r}; choose from {SELECTION_RULES}")


def r2_slack(best_r2: float, r2_tolerance: float = R2_TOLERANCE,
             relative_tolerance: float = RELATIVE_TOLERANCE,
             max_tolerance: float = MAX_TOLERANCE, error_ratio: float = ERROR_RATIO) -> float:
  """The R2 a formula may give up against the best one, best_r2, and still count as
  good as it ('simplest' in selection_score says why each term is there)."""
  error = max(1 - best_r2, np.finfo(np.float64).eps)  # no R2 is closer to 1
  floor = min(r2_tolerance, max(error_ratio * error, EXACT_SLACK))
  return max(floor, min(relative_tolerance * error, max_tolerance))
