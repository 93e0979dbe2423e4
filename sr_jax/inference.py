"""Batched inference (reference.md 5): many datasets -> ranked, refined formulas.

For every dataset: keep at most 10 features (the most correlated with y, as E2E's
wrapper does), split the rows into bags of <= 200 points, show each bag to the model in
each of the `views` (X standardised, as E2E; divided by its root mean square; as
given; standardised with the signs flipped, or with the features in reverse order; or
standardised with y negated), decode candidates for every bag
(greedy plus C samples or a beam), parse them (invalid ones dropped and counted),
score them on the training points in their view's coordinates, keep the best of each
skeleton, refine the constants of the top K per view, decode the residual of the best
formula where it falls short and add what is found to it, optionally evolve the pool for
`search_time` seconds per dataset (search.py: its Pareto front and best formula join
the pool, refined like the rest), undo the scaling symbolically, tidy, rank the pool
by R2 or a complexity-penalised score, polish the selected formula on relative error
where that pays (relative_polish.py) and simplify it.

Every stage runs batched: decoding in fixed-shape chunks of bags, in a worker thread
that runs ahead; scoring, refinement and search in a few jitted calls (selection.py,
refine.py, search.py) per group of datasets (`_GROUP`), overlapping the decoding of the
next. Timings per stage come back with the results. A dataset's random stream (bags,
samples, subsets, search) comes from the seed and the data itself
(`dataset_stream`), so its result does not depend on the datasets beside it.

Deviations from E2E, on purpose:
- Bags are drawn from a seeded shuffle of the rows; E2E cuts consecutive rows, which
  gives biased bags on sorted data.
- Every bag is decoded in three views of X by default: standardised (E2E's only
  one), scaled (divided by the root mean square, not centred) and mirrored
  (standardised, signs flipped). The model was trained on whitened inputs, yet on
  positive physical ranges (Feynman's x ~ U[1, 5]) a law like x0*x1/x2 stays a
  monomial in the scaled view and is a long rational function of standardised
  inputs: on eval.py's 100 Feynman problems (model + refinement, no search) R2 > 0.99
  went from 8% to 28%. Each view also conditions the decoder anew on the same
  points, which more samples from one view do not: on 600 in-domain problems, 24.2%,
  29.5% and 32.2% with one, two and three views (BENCHMARKS.md).
- Residual rounds (InferenceConfig.residual_rounds): where the best refined formula f
  fits to R2 < 0.999, or is off by over 0.1% on over 5% of the points (a large term
  fitted, a small one missed), the model reads the residual y - f(x) as a dataset of
  its own and the formulas g it writes join the pool as f + g, refitted on y. E2E
  decodes once.
- The selected formula's constants are refitted on relative error (relative_polish.py)
  and kept so where R2 stays within the selection's slack and the relative error 95%
  of the points stay within (Acc_tau's measure) at least halves; E2E returns the
  least-squares constants, which serve the points where |y| is large.
- A constant candidate (the mean of y) is always in the pool, so every dataset gets
  a formula even when no decoded candidate is valid.
- A candidate reading a column the data lacks is dropped and counted (E2E's
  `rescale_function` loops forever on it).
- Decoding is grammar-constrained by default (decoding.grammar_mask): tokens that
  would make a malformed float or a formula that cannot end by max_len are masked,
  so no candidate is wasted; E2E samples unconstrained and drops invalid ones.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sr_jax import checkpoint, data, decoding, expressions, metrics, operators, pretrained
from sr_jax import refine, relative_polish, search, selection, sharding, simplify, tidy
from sr_jax.model import MAX_INPUT_DIM, Transformer
# By name: inside InferenceConfig the field `selection` hides the module.
from sr_jax.selection import ERROR_RATIO, MAX_TOLERANCE, R2_TOLERANCE, RELATIVE_TOLERANCE

# The largest |y| the float tokens represent (tokens.py): 9.9995e100.
MAX_ABS_Y = 9.9995e100
# The least spread of y (max - min, when not 0) whose fits can be scored: below it the
# squared errors and the variance fall under float64's normal range (2.2e-308 at 1e-154),
# every formula, 0 included, reads R2 = 1, and a fit would return 0.0 as exact.
MIN_Y_SPREAD = 1e-140
STAGES = ("prepare", "decode", "parse", "rank", "refine", "residual", "search", "tidy",
          "relative_polish", "simplify", "select")
# The coordinates a bag can be shown in, per feature: standardised (E2E: zero mean,
# unit variance), scaled (divided by its root mean square, not centred, so a law's
# products and ratios of features stay products and ratios), raw (as given), or
# mirrored (standardised with every sign flipped: the same training-like inputs seen
# from the other side, so the model writes other formulas for them), reversed
# (standardised with the features in reverse order: x_0 is the last feature), or
# negated (standardised X shown with -y: the model's formula g is read as -g).
VIEWS = ("standardised", "scaled", "raw", "mirrored", "reversed", "negated")


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
  """Defaults follow the E2E baseline of the TPSR paper: sampling, C=10 per bag, 10
  bags of 200 points, K=10 refined (reference.md 5.2)."""
  method: str = "sample"  # "sample" (E2E's best), "beam", or "greedy" alone
  num_candidates: int = 10  # C per bag: samples, or the beam size
  include_greedy: bool = True  # E2E always adds the greedy decode
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  length_penalty: float = 1.0
  max_len: int = 128  # decoded tokens, BOS and EOS included
  constrained: bool = True  # grammar-masked decoding: every candidate parses
  max_points_per_bag: int = 200
  max_bags: int = 10
  # The views (VIEWS) every bag is shown to the model in, one decoding pass each.
  # Standardised (E2E's, the training distribution's) and scaled: on eval.py's 100
  # Feynman problems (model + refinement, no search) R2 > 0.99 rose from 8%
  # (standardised alone) to 29% (scaled alone) and 28% (both); the standardised view
  # stays for features far from 0 relative to their spread. Mirrored: a third look
  # at a bag; on 600 in-domain problems (one bag each) it took R2 > 0.99 from 29.5% to
  # 32.2%, 16 problems won and none lost (BENCHMARKS.md). Reversed and negated are
  # further looks, not in the default for their cost: with both, 600 in-domain
  # problems went from 32.8% to 36.5% (23 won, 1 lost) and 100 Feynman from 29% to 31%,
  # for 1.55x (in-domain) and 1.6x (Feynman) the seconds per task; fewer samples in more
  # views at the default's cost gave no gain (BENCHMARKS.md). With today's pipeline
  # (residual rounds, polish) five views took in-domain problems 0-199 from Acc0.1 /
  # 0.01 0.500 / 0.405 to 0.520 / 0.445 but Feynman's first 50 from R2 > 0.99 0.82 to
  # 0.78 (R2 > 0.999 0.58 -> 0.66), for 1.4x the seconds: mixed, so still left out.
  views: tuple[str, ...] = ("standardised", "scaled", "mirrored")
  # Bags per decoding call (a fixed shape: one compile); 0: 8 on a CPU, 64 on an
  # accelerator (`default_decode_batch`). A call runs until its longest candidate
  # ends, so on a CPU, where a step's cost grows with its rows, small calls waste
  # less: 8 instead of 32 cut the decode stage 13% on 100 Feynman problems and 7.5% on
  # 600 in-domain ones, same formulas (BENCHMARKS.md). On a GPU a step of 64 bags'
  # rows costs about what one of 8 does, so fewer, fuller calls win (not yet measured
  # here: benchmarks/device_train.py's inference stage runs 64).
  decode_batch: int = 0
  num_refine: int = 10  # K: top distinct skeletons refined per dataset and view
  refine: refine.RefineConfig = refine.RefineConfig()
  # Residual rounds (not in E2E): a dataset whose most accurate refined formula f fits
  # its training points to R2 < residual_below, or misses more than residual_rtol
  # relative error on over 5% of them (Acc_tau's rule: a large term fitted, a small
  # one missed, R2 1 - 1e-7), is decoded again with the residual y - f(x) as the
  # target (the same bags, views and samples, up to residual_bags bags, 0:
  # max_bags); the residual_terms most accurate formulas g for it join the
  # pool as f + g, every constant refitted on y. The model writes whole formulas well
  # where they are short; a missed term of a long one is a short formula of its own.
  # On 600 in-domain problems (model alone) R2 > 0.99 rose from 52.0% to 63.7% (74
  # won, 4 lost) for 1.9x the seconds; on 300 others a second pass over y itself,
  # kept where better, gave 61.0% where the residual gave 64.3% (BENCHMARKS.md). A
  # further round starts from the pool the last one left. The relative trigger took
  # 600 in-domain problems from Acc0.1 / 0.01 / 0.001 0.382 / 0.238 / 0.168 to
  # 0.437 / 0.308 / 0.232 (none lost) for 1.22x the seconds (BENCHMARKS.md). A second
  # round (on the sums f + g still short of it) took in-domain problems 0-199 from
  # Acc0.1 0.450 to 0.485 and R2 > 0.999 from 0.530 to 0.575 for 2.2x the seconds, and
  # 50 Feynman problems from R2 > 0.99 0.68 to 0.82 (7 won, none lost) for 1.3x.
  residual_rounds: int = 2
  residual_below: float = 0.999
  residual_rtol: float = 1e-3
  residual_terms: int = 5
  residual_bags: int = 0
  max_score_points: int = 10_000  # training points used to rank candidates
  # A dataset with more scoring points than screen_points has its candidates ranked
  # first on screen_points of them (a random subset: the refinement's points); the
  # best screen_keep distinct skeletons per view go on and are ranked on all, the
  # others are dropped (0: no screening). E2E ranks every candidate on every point; on
  # eval.py's 100 Feynman problems (10,000 rows) screening selected the same 100
  # formulas with the rank stage 3.9x faster (BENCHMARKS.md).
  screen_points: int = 1_024
  screen_keep: int = 20
  # The model-selection rule (selection.selection_score). 'simplest' (the shortest
  # formula within r2_tolerance of the best R2) deviates from E2E's 'r2' (the most
  # accurate): on 117 Feynman problems at 2 s it gave the same R2 > 0.99 and > 0.999
  # rates with median SRBench size 18 instead of 22 (BENCHMARKS.md).
  selection: str = "simplest"
  complexity_penalty: float = 1e-3  # 'penalized': the price of a prefix node
  r2_tolerance: float = R2_TOLERANCE  # 'simplest': the R2 a shorter formula
  relative_tolerance: float = RELATIVE_TOLERANCE  # may give up, or this share
  # of the best formula's 1 - R2,
  # but never more than max_tolerance: with noise in y the best formula's 1 - R2 is the
  # noise's share, and 10% of it let simpler, wrong formulas win (Feynman at SRBench's
  # noise 0.1: R2 > 0.99 71.8% uncapped, 78.6% capped; BENCHMARKS.md).
  max_tolerance: float = MAX_TOLERANCE
  # ... and near an exact fit at most error_ratio times the best formula's 1 - R2: an
  # exact law is kept over a shorter approximation (Feynman at 2 s: 11 of 117 laws;
  # BENCHMARKS.md).
  error_ratio: float = ERROR_RATIO
  max_reported: int = 32  # candidates kept in each dataset's table
  # Evolutionary search after refinement (search.py): seconds per dataset (0: off),
  # and its knobs (search.generations > 0 runs that many generations instead).
  search_time: float = 0.0
  search: search.SearchConfig = search.SearchConfig()
  # Tidying of the final Pareto front (tidy.py: 1.0*x + 1e-16 -> x); None: off.
  tidy: tidy.TidyConfig | None = tidy.TidyConfig()
  # The selected formula's constants refitted on relative error, kept where that is
  # as good by R2 and clearly better by Acc_tau's measure (relative_polish.py), and
  # so the formula each residual round decodes the residual of; None: off.
  relative_polish: relative_polish.PolishConfig | None = relative_polish.PolishConfig()
  # The selected formula rewritten by sympy into its smallest exact form
  # (simplify.py: m*a + m*b -> m*(a + b)); on 117 Feynman problems at 2 s it took the
  # median SRBench size from 17 to 15 at the same accuracy (BENCHMARKS.md).
  simplify: bool = True
  # A formula that is not finite somewhere in the data's box widened by this share of
  # each feature's range (per side) is selected as if its R2 were extrapolation_price
  # lower: a formula as good that stays finite there wins (0: no check).
  extrapolation_margin: float = 0.1
  extrapolation_price: float = 1e-3
  float64: bool = True  # scoring and refinement in float64, as E2E's BFGS
  max_time: float | None = None  # seconds for the whole call; stages after it are cut
  seed: int = 0

  def __post_init__(self):
    if self.method not in decoding.METHODS:
      raise ValueError(f"unknown decoding method {self.method!r}; choose from "
                       f"{decoding.METHODS}")
    if not self.views or len(set(self.views)) < len(self.views) or any(
        view not in VIEWS for view in self.views):
      raise ValueError(f"views must be distinct names from {VIEWS}, got {self.views!r}")
    if self.selection not in selection.SELECTION_RULES:
      raise ValueError(f"unknown selection rule {self.selection!r}; choose from "
                       f"{selection.SELECTION_RULES}")
    if min(self.num_candidates, self.max_bags, self.max_points_per_bag,
           self.max_reported, self.screen_keep, self.residual_terms) < 1 or min(
               self.num_refine, self.screen_points, self.decode_batch,
               self.residual_rounds, self.residual_bags) < 0:
      raise ValueError(f"sizes must be positive: {self}")
    if min(self.r2_tolerance, self.relative_tolerance, self.max_tolerance,
           self.error_ratio) < 0:
      raise ValueError("the selection's tolerances and error_ratio must be >= 0: "
                       f"{self.r2_tolerance}, {self.relative_tolerance}, "
                       f"{self.max_tolerance}, {self.error_ratio}")
    if self.search_time < 0:
      raise ValueError(f"search_time must be >= 0 seconds, got {self.search_time}")
    if not self.residual_rtol >= 0:
      raise ValueError(f"residual_rtol must be >= 0, got {self.residual_rtol}")
    if not 0 <= self.residual_below <= 1:
      raise ValueError(f"residual_below is an R2 and must be in [0, 1], got "
                       f"{self.residual_below}")
    if self.max_points_per_bag > 200:
      raise ValueError("the model reads at most 200 points per bag (E2E's training "
                       f"maximum); got max_points_per_bag={self.max_points_per_bag}")

  def r2_slack(self, best_r2: float) -> float:
    """The R2 a formula may give up against the best one, best_r2, and still count as
    good as it under this config's tolerances (selection.r2_slack)."""
    return selection.r2_slack(best_r2, self.r2_tolerance, self.relative_tolerance,
                              self.max_tolerance, self.error_ratio)


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One formula for a dataset, in the original units of the kept features: variable
  x_k is column `DatasetResult.features[k]` of the user's X."""
  prefix: tuple
  refined: bool
  mse: float  # on the training points (at most max_score_points of them)
  r2: float
  complexity: int  # prefix nodes
  score: float  # the selection score the table is sorted by
  # "model" (decoded), "residual" (a decoded formula plus one decoded for its
  # residual), "search" or "constant" (the fallback)
  source: str = "model"


@dataclasses.dataclass(frozen=True)
class DatasetResult:
  candidates: tuple[Candidate, ...]  # best first
  features: tuple[int, ...]  # the original columns read as x_0, x_1, ...
  num_decoded: int
  num_invalid: int  # unparsable, or reading a column the data lacks
  num_duplicates: int  # same skeleton as a better candidate
  notes: tuple[str, ...]
  # The Pareto front of complexity vs MSE over every candidate found (not only the
  # reported ones), simplest first, with the best candidate: every rule picks from the
  # front, unless a formula not finite just outside the data (priced down) dominates
  # the pick, which then joins it.
  front: tuple[Candidate, ...] = ()

  @property
  def best(self) -> Candidate:
    return self.candidates[0]

  def predict(self, x: np.ndarray, rank: int = 0) -> np.ndarray:
    """The rank-th candidate on the user's X (all original columns)."""
    return expressions.evaluate(list(self.candidates[rank].prefix),
                                np.asarray(x, np.float64)[:, list(self.features)])


@dataclasses.dataclass(frozen=True)
class InferenceOutput:
  results: list[DatasetResult]
  seconds: dict[str, float]  # per stage, see STAGES


# ---------------------------------------------------------------------------------
# input checks and scaling


def check_dataset(x, y, index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """X as N x D float64 and y as N float64, or a ValueError naming the problem."""
  where = "" if index is None else f"dataset {index}: "
  try:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}X and y must be numeric: {e}") from None
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if x.ndim == 1:
    raise ValueError(f"{where}X must be 2-D (N x D); got shape {x.shape}. Use "
                     "X.reshape(-1, 1) for a single feature")
  if x.ndim != 2 or y.ndim != 1:
    raise ValueError(f"{where}X must be N x D and y of length N; got shapes {x.shape} "
                     f"and {y.shape}")
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"{where}X has {x.shape[0]} rows but y has {y.shape[0]} values")
  if x.shape[0] < 2:
    raise ValueError(f"{where}need at least 2 points to fit; got n_samples = {x.shape[0]}")
  if x.shape[1] < 1:
    raise ValueError(f"{where}X has no feature columns")
  for name, a in (("X", x), ("y", y)):
    bad = ~np.isfinite(a)
    if bad.any():
      kind = "NaN" if np.isnan(a).any() else "inf"
      raise ValueError(f"{where}{name} contains {kind} values ({int(bad.sum())} "
                       "entries); remove or impute them first")
  if np.max(np.abs(y)) > MAX_ABS_Y:
    raise ValueError(f"{where}|y| reaches {np.max(np.abs(y)):.3g}, beyond the "
                     f"{MAX_ABS_Y:.4g} the float tokens represent; rescale y")
  spread = np.max(y) - np.min(y)
  if 0 < spread < MIN_Y_SPREAD:
    raise ValueError(f"{where}y varies by only {spread:.3g}: its variance underflows "
                     "float64, so no formula's error can be measured; rescale y")
  return x, y


def top_features(x: np.ndarray, y: np.ndarray, k: int = MAX_INPUT_DIM) -> np.ndarray:
  """The k columns with the largest |Pearson r| with y (E2E's get_top_k_features),
  in their original order; constant columns count as r = 0."""
  if x.shape[1] <= k:
    return np.arange(x.shape[1])
  xc, yc = x - x.mean(0), y - y.mean()
  norms = np.linalg.norm(xc, axis=0) * np.linalg.norm(yc)
  with np.errstate(all="ignore"):
    r = np.where(norms > 0, np.abs(xc.T @ yc) / np.where(norms > 0, norms, 1), 0.0)
  return np.sort(np.argsort(-r, kind="stable")[:k])


def dataset_stream(x: np.ndarray, y: np.ndarray, seed: int) -> int:
  """The random stream of one dataset: from the seed and the data itself, so that a
  dataset gets the same bags, samples and subsets alone or anywhere in a batch."""
  digest = hashlib.blake2b(digest_size=8)
  for a in (x, y):
    digest.update(str(a.shape).encode())
    digest.update(np.ascontiguousarray(a, np.float64).tobytes())
  return int.from_bytes(digest.digest(), "little") ^ (seed & 0xFFFFFFFFFFFFFFFF)


class _View(NamedTuple):
  """A view's coordinates, per view column k: the kept feature it shows (columns[k]),
  shifted by centre[k] and divided by scale[k]; y is shown times y_sign, so a formula
  the model writes there is one for y_sign * y."""
  centre: np.ndarray
  scale: np.ndarray
  columns: np.ndarray
  y_sign: float = 1.0


@dataclasses.dataclass(frozen=True)
class _Prepared:
  x_kept: np.ndarray  # the kept features as given (the search reads them)
  y: np.ndarray
  features: np.ndarray
  views: dict[str, _View]
  bags: list[np.ndarray]  # row indices
  score_rows: np.ndarray  # a seeded random subset of <= max_score_points rows
  stream: int  # dataset_stream
  notes: list[str]

  def in_view(self, view: str, rows: np.ndarray) -> np.ndarray:
    """The kept features of `rows` in a view's coordinates: view column k is
    (x[:, columns[k]] - centre[k]) / scale[k]."""
    v = self.views[view]
    return (self.x_kept[rows][:, v.columns] - v.centre) / v.scale

  def y_in_view(self, view: str, rows: np.ndarray) -> np.ndarray:
    """y at `rows` as the view shows it to the model."""
    return self.views[view].y_sign * self.y[rows]

  def for_y(self, prefix: expressions.Prefix, view: str) -> list:
    """A formula the model wrote in a view, as one for y itself (on the view's X)."""
    return list(prefix) if self.views[view].y_sign > 0 else ["mul", -1.0, *prefix]

  def to_raw(self, prefix: expressions.Prefix, view: str) -> list:
    """A formula on a view's coordinates rewritten on the kept features as given."""
    v = self.views[view]
    return unscale(prefix, v.centre, v.scale, v.columns)


def _view_transforms(x: np.ndarray) -> dict[str, _View]:
  """Each view's coordinates. A scale of 0 (a constant or an all-zero column) becomes 1."""
  order, zeros, mean = np.arange(x.shape[1]), np.zeros(x.shape[1]), x.mean(0)
  std, rms = x.std(0), np.sqrt(np.mean(np.square(x), axis=0))
  std = np.where(std == 0, 1.0, std)
  backwards = order[::-1]
  return {"standardised": _View(mean, std, order),
          "scaled": _View(zeros, np.where(rms == 0, 1.0, rms), order),
          "raw": _View(zeros, zeros + 1, order),
          "mirrored": _View(mean, -std, order),
          "reversed": _View(mean[backwards], std[backwards], backwards),
          "negated": _View(mean, std, order, -1.0)}


def _prepare(x, y, index: int, config: InferenceConfig) -> _Prepared:
  x, y = check_dataset(x, y, index)
  stream = dataset_stream(x, y, config.seed)
  # One shuffle of the rows serves the bags, the scoring subset and (its first
  # refine.max_points rows) the refinement subset: none is biased on sorted data.
  order = np.random.default_rng(stream).permutation(len(y))
  notes = []
  features = top_features(x, y)
  if len(features) < x.shape[1]:
    notes.append(f"{x.shape[1]} features: kept the {len(features)} most correlated "
                 f"with y, columns {features.tolist()}")
  x = x[:, features]
  constant = x.std(0) == 0
  if constant.any():
    notes.append(f"constant feature column(s) {features[constant].tolist()}: "
                 "they cannot explain y")
  num_bags = min(config.max_bags, -(-len(y) // config.max_points_per_bag))
  read = order[:num_bags * config.max_points_per_bag]
  bags = np.array_split(read, num_bags)
  if num_bags * config.max_points_per_bag < len(y):
    notes.append(f"{len(y)} points: the model read {len(read)} of them "
                 f"({num_bags} bags of <= {config.max_points_per_bag})")
  if len(y) > config.max_score_points:
    notes.append(f"{len(y)} points: candidates were ranked on a random "
                 f"{config.max_score_points} of them")
  return _Prepared(x, y, features, _view_transforms(x), bags,
                   order[:config.max_score_points], stream, notes)


def unscale(prefix: expressions.Prefix, centre: np.ndarray, scale: np.ndarray,
            columns: np.ndarray | None = None) -> list:
  """The formula on raw features, from one on features in a view's coordinates: x_k
  becomes (x_c - centre_k) / scale_k with c = columns[k] (default k), written
  add(-centre_k/scale_k, mul(1/scale_k, x_c)) as E2E does, without the add where the
  centre is 0 and the mul where the scale is 1. A variable beyond the data's features
  raises ExpressionError."""
  out = []
  for token in prefix:
    k = operators.variable_index(token) if isinstance(token, str) else None
    if k is None:
      out.append(token)
      continue
    if k >= len(centre):
      raise expressions.ExpressionError(
          f"formula reads x_{k} but the data has {len(centre)} feature(s)")
    if centre[k] != 0:
      out += ["add", float(-centre[k] / scale[k])]
    if scale[k] != 1:
      out += ["mul", float(1.0 / scale[k])]
    out.append(token if columns is None else f"x_{int(columns[k])}")
  return out


# ---------------------------------------------------------------------------------
# the pipeline


class _Clock:
  """Seconds per stage. The caller's thread laps its stages; the decoding thread adds
  its own time, so with both at work the stages' sum exceeds the wall time."""

  def __init__(self, max_time: float | None):
    self.start = time.perf_counter()
    self.deadline = None if max_time is None else self.start + max_time
    self.seconds = {stage: 0.0 for stage in STAGES}
    self._mark = self.start

  def lap(self, stage: str | None) -> None:
    """Books the time since the last lap to `stage` (None: to no stage, for waiting)."""
    now = time.perf_counter()
    if stage is not None:
      self.seconds[stage] += now - self._mark
    self._mark = now

  def add(self, stage: str, seconds: float) -> None:
    self.seconds[stage] += seconds

  def expired(self) -> bool:
    return self.deadline is not None and time.perf_counter() > self.deadline


# Datasets ranked and refined together while the next ones decode (fixed groups, so
# results do not depend on timing). Smaller groups shorten the head (refinement waits
# for a group's decoding) and the tail (the last group refines alone): 64 kept both
# CPU cores busier than 128 (1.85 vs 1.78 cores, 1.1x the datasets/s, measured).
_GROUP = 64


def run(model: Transformer | None, datasets: Sequence[tuple[np.ndarray, np.ndarray]],
        config: InferenceConfig = InferenceConfig(), propose=None,
        progress: Callable[[int], None] | None = None) -> InferenceOutput:
  """Formulas for every (X, y) in `datasets`, all stages batched over them.

  With a model, decoding runs in a worker thread ahead of the rest: while the bags of
  one group of datasets decode, the previous group is parsed, ranked and refined
  (the stages overlap; on a 2-core CPU that saved 30% of the wall time). The search,
  whose budget is wall clock, starts only once every bag is decoded.
  `propose(bags) -> list of candidate lists` replaces the model's decoding, where
  `bags` is a list of (dataset index, X in the bag's view, y as the view shows it, the
  view's name); it exists so the rest of the pipeline can be tested with known
  candidates. `progress(datasets_done)` is called after each group of datasets.
  Raises ValueError on bad input, naming the dataset.
  """
  if model is None and propose is None:
    raise ValueError("run needs a model (or a `propose` function)")
  clock = _Clock(config.max_time)
  prepared = [_prepare(x, y, i, config) for i, (x, y) in enumerate(datasets)]
  # (dataset index, X in the bag's view, y as the view shows it, the bag's own sampling
  # key: its dataset's stream, its number and its view, the view).
  bags = [(i, p.in_view(view, rows), p.y_in_view(view, rows),
           (p.stream, j, VIEWS.index(view)), view)
          for i, p in enumerate(prepared) for j, rows in enumerate(p.bags)
          for view in config.views]
  first_bag = np.cumsum([0] + [len(p.bags) * len(config.views) for p in prepared])
  clock.lap("prepare")

  if propose is not None:
    proposed = [list(c) for c in propose([(i, x, y, view) for i, x, y, _, view in bags])]
    clock.lap("decode")
    decoder = None
  else:
    decoder = _Decoder(model, bags, config, clock)
  # The residual rounds' decoding: this pipeline, on the residual datasets.
  fit_residuals = functools.partial(run, model, propose=propose)
  results = []
  try:
    for begin in range(0, len(prepared), _GROUP):
      group = range(begin, min(begin + _GROUP, len(prepared)))
      bag_range = range(first_bag[group.start], first_bag[group.stop])
      if decoder is None:
        proposals = [proposed[b] for b in bag_range]
      else:
        proposals = decoder.proposals(bag_range)
        clock.lap(None)  # waiting for the decoder is not a stage of this thread
      results += _finish_group([prepared[i] for i in group],
                               [(bags[b][0] - group.start, bags[b][4]) for b in bag_range],
                               proposals, config, clock, fit_residuals,
                               decoder.wait_all if decoder else None)
      if progress is not None:
        progress(len(results))
  finally:
    if decoder is not None:
      decoder.close()
  return InferenceOutput(results, dict(clock.seconds))


def _finish_group(prepared: list[_Prepared], bag_owner: list[tuple[int, str]],
                  proposals: list, config: InferenceConfig, clock: _Clock,
                  fit_residuals: Callable, before_search: Callable[[], None] | None = None
                  ) -> list[DatasetResult]:
  """Parses, ranks, refines and selects the candidates of some datasets; bag_owner
  gives each bag's dataset and view; a bag's proposals are None
  when the time budget stopped decoding before it. fit_residuals(datasets, config)
  runs the pipeline on the residual rounds' datasets; before_search runs before the
  search stage (run: waiting for the decoder)."""
  candidates: list[list] = [[] for _ in prepared]  # (prefix, view) pairs
  num_decoded = [0] * len(prepared)
  num_invalid = [0] * len(prepared)
  undecoded = set()
  for (i, view), bag_candidates in zip(bag_owner, proposals):
    if bag_candidates is None:
      undecoded.add(i)
      continue
    for prefix in bag_candidates:
      num_decoded[i] += 1
      used = expressions.variables_used(prefix) if prefix is not None else ()
      if prefix is None or (used and max(used) >= prepared[i].x_kept.shape[1]):
        num_invalid[i] += 1
      else:
        candidates[i].append((prepared[i].for_y(prefix, view), view))
  for i, p in enumerate(prepared):
    candidates[i].append(([float(np.mean(p.y))], "raw"))  # the fallback: a constant
    if i in undecoded and not num_decoded[i]:
      p.notes.append("time budget reached before this dataset was decoded")
  clock.lap("parse")

  with jax.enable_x64(config.float64):
    table = _rank_refine_select(prepared, candidates, config, clock, fit_residuals,
                                before_search)
  results = []
  for i, p in enumerate(prepared):
    rows, front, duplicates = table[i]
    results.append(DatasetResult(
        candidates=tuple(rows), features=tuple(int(f) for f in p.features),
        num_decoded=num_decoded[i], num_invalid=num_invalid[i], num_duplicates=duplicates,
        notes=tuple(p.notes), front=tuple(front)))
  clock.lap("select")
  return results


class _Entry(NamedTuple):
  """A formula in a dataset's pool. `view`: the coordinates it reads the features in
  (the view of the bag it was decoded from; "raw", as given, for the search's, the
  constant, and every formula once unscaled)."""
  prefix: list
  refined: bool
  mse: float
  r2: float
  source: str
  view: str


class _Frames(NamedTuple):
  """Every dataset's scoring points in each view candidates are scored in: the decoding
  views, then "raw" (the search, tidying and the user read the features as given).
  Only those views are laid out: each frame is padded and uploaded to score."""
  views: tuple[str, ...]
  xs: list[np.ndarray]
  ys: list[np.ndarray]

  @classmethod
  def of(cls, prepared: list[_Prepared], views: Sequence[str]) -> "_Frames":
    views = tuple(dict.fromkeys((*views, "raw")))
    return cls(views, [p.in_view(view, p.score_rows) for view in views for p in prepared],
               [p.y[p.score_rows] for p in prepared] * len(views))

  def first(self, rows: int) -> "_Frames":
    """The same frames cut to their first `rows` points (all of them: rows = 0)."""
    cut = slice(None, rows or None)
    return self._replace(xs=[x[cut] for x in self.xs], ys=[y[cut] for y in self.ys])

  def at(self, i: int, view: str) -> int:
    """Where dataset i's points in `view` are in xs and ys."""
    return self.views.index(view) * (len(self.xs) // len(self.views)) + i

  def of_view(self, view: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every dataset's points in `view`: (xs, ys), dataset by dataset."""
    begin = self.at(0, view)
    end = begin + len(self.xs) // len(self.views)
    return self.xs[begin:end], self.ys[begin:end]


def _refined_scores(refined: refine.RefineResult, to_refine: list, frames: _Frames,
                    config: InferenceConfig) -> tuple[np.ndarray, np.ndarray]:
  """MSE and R2 of the refined candidates on their scoring points, as selection.score
  computes them. In float64, a dataset that fits within the refinement's max_points was
  refined on exactly those points, so refinement's own loss and R2 are those numbers
  (equal to 1e-15; rescoring them was 8% of the refinement stage); the others are
  rescored."""
  mse = np.where(np.isfinite(refined.loss), refined.loss, np.inf)
  r2 = np.where(np.isfinite(mse), refined.r2, -np.inf)
  rescore = [k for k, (i, _) in enumerate(to_refine)
             if not config.float64 or len(frames.ys[i]) > config.refine.max_points]
  if rescore:
    scores = selection.score([refined.prefixes[k] for k in rescore],
                             [to_refine[k][0] for k in rescore], frames.xs, frames.ys)
    mse[rescore], r2[rescore] = scores.mse, scores.r2
  return mse, r2


def _rank_refine_select(prepared: list[_Prepared], candidates: list[list],
                        config: InferenceConfig, clock: _Clock, fit_residuals: Callable,
                        before_search: Callable[[], None] | None = None):
  """Per dataset: (ranked Candidates, their Pareto front, number of skeleton
  duplicates)."""
  frames = _Frames.of(prepared, config.views)
  raw_xs, raw_ys = frames.of_view("raw")
  flat = [(i, prefix, view) for i, cs in enumerate(candidates) for prefix, view in cs]
  screen = frames.first(config.screen_points)
  scores = selection.score([c for _, c, _ in flat], [frames.at(i, v) for i, _, v in flat],
                           screen.xs, screen.ys)
  pools: list[list[_Entry]] = [[] for _ in prepared]  # the constant fallback last
  for k, ((i, prefix, view), mse, r2) in enumerate(zip(flat, scores.mse, scores.r2)):
    last = k + 1 == len(flat) or flat[k + 1][0] != i
    pools[i].append(_Entry(prefix, False, mse, r2, "constant" if last else "model", view))
  duplicates, screened = [], []
  for i, pool in enumerate(pools):
    order = sorted(range(len(pool)), key=lambda j: pool[j].mse)  # stable
    kept = selection.unique_by_skeleton([c.prefix for c in pool], order,
                                        [c.view for c in pool])
    duplicates.append(len(pool) - len(kept))
    if len(screen.ys[i]) < len(frames.ys[i]):
      kept = _best_per_view(pool, kept, config.screen_keep)
      screened.append(i)
      prepared[i].notes.append(
          f"candidates were screened on a random {config.screen_points} points: the "
          f"best {config.screen_keep} per view were ranked on all")
    pools[i] = [pool[j] for j in kept]
  if screened:
    _rescore_on_all(pools, screened, frames)
  to_refine = []
  for i, pool in enumerate(pools):
    for view in config.views:  # K per view: a view's candidates never crowd out another's
      best = [c for c in pool if c.view == view][:config.num_refine]
      to_refine += [(i, c) for c in best
                    if np.isfinite(c.mse) and expressions.num_constants(c.prefix)]
  clock.lap("rank")

  if to_refine and not clock.expired():
    _refine_into(pools, to_refine, frames, config)
  elif to_refine:
    for p in prepared:
      p.notes.append("time budget reached: constants not refined")
  clock.lap("refine")

  for _ in range(config.residual_rounds):
    if clock.expired() or not _residual_into(pools, prepared, frames, config, clock,
                                             fit_residuals):
      break
  clock.lap("residual")

  if (config.search_time > 0 or config.search.generations) and not clock.expired():
    # The search's budget is wall clock: decoding the next group beside it on the same
    # cores would take the CPU its clock counts. (On 117 Feynman problems at 2 s this
    # measured no change in accuracy, 64 of 117 either way; BENCHMARKS.md.)
    if before_search is not None:
      before_search()
      clock.lap(None)  # waiting for the decoder is not a stage of this thread
    _search_into(pools, prepared, frames, config, clock)
  clock.lap("search")

  pools = [[entry._replace(prefix=p.to_raw(entry.prefix, entry.view), view="raw")
            for entry in pool] for pool, p in zip(pools, prepared)]
  if config.tidy is not None and not clock.expired():
    _tidy_fronts(pools, raw_xs, raw_ys, config.tidy)
  clock.lap("tidy")

  nearby = _finite_nearby(pools, prepared, config)
  ranked = []
  for i, pool in enumerate(pools):
    complexity = np.array([len(c.prefix) for c in pool])
    r2 = np.array([c.r2 for c in pool])
    priced = np.where(nearby[i], r2, r2 - config.extrapolation_price)
    order_score = selection.selection_score(priced, complexity, config.selection,
                                            config.complexity_penalty, config.r2_tolerance,
                                            config.relative_tolerance,
                                            config.max_tolerance, config.error_ratio)
    order = np.argsort(-np.nan_to_num(order_score, nan=-np.inf), kind="stable")
    ranked.append([Candidate(tuple(pool[j].prefix), pool[j].refined, float(pool[j].mse),
                             float(pool[j].r2), int(complexity[j]), float(order_score[j]),
                             pool[j].source)
                   for j in order])
  if config.relative_polish is not None and not clock.expired():
    clock.lap("select")
    _polish_best(ranked, raw_xs, raw_ys, config)
    clock.lap("relative_polish")
  table = []
  for i, rows in enumerate(ranked):
    if config.simplify and not clock.expired():
      clock.lap("select")
      rows[0] = _simplified(rows[0], raw_xs[i])
      clock.lap("simplify")
    front = _front(rows)
    if rows[0] not in front:
      front = sorted(front + [rows[0]], key=lambda c: (c.complexity, c.mse))
    table.append((rows[:config.max_reported], front, duplicates[i]))
  return table


def _relative_polish(prefixes: list, r2: list, xs: list, ys: list,
                     config: InferenceConfig) -> list[tuple[list, float, float] | None]:
  """relative_polish.polish of each dataset's formula (raw view) on its scoring points,
  with the selection rule's slack."""
  return relative_polish.polish(prefixes, xs, ys, r2, config.r2_slack, config.refine,
                                config.relative_polish)


def _polish_best(ranked: list[list[Candidate]], xs: list, ys: list,
                 config: InferenceConfig) -> None:
  """Replaces each dataset's selected formula with its relative polish
  (relative_polish.py) where that is kept."""
  polished = _relative_polish([list(rows[0].prefix) for rows in ranked],
                              [rows[0].r2 for rows in ranked], xs, ys, config)
  for rows, new in zip(ranked, polished):
    if new is not None:
      prefix, mse, r2 = new
      rows[0] = dataclasses.replace(rows[0], prefix=tuple(prefix), mse=mse, r2=r2)


def _best_per_view(pool: list[_Entry], ranked: list[int], keep: int) -> list[int]:
  """The first `keep` of `ranked` (pool indices, best first) in each view, and the
  constant fallback."""
  taken: dict[str, int] = {}
  out = []
  for j in ranked:
    taken[pool[j].view] = taken.get(pool[j].view, 0) + 1
    if taken[pool[j].view] <= keep or pool[j].source == "constant":
      out.append(j)
  return out


def _rescore_on_all(pools: list[list[_Entry]], datasets: list[int], frames: _Frames) -> None:
  """Scores the pools of `datasets` on all their scoring points, and sorts them by MSE
  (stable: ties keep their screening order)."""
  at = [(i, j) for i in datasets for j in range(len(pools[i]))]
  scores = selection.score([pools[i][j].prefix for i, j in at],
                           [frames.at(i, pools[i][j].view) for i, j in at],
                           frames.xs, frames.ys)
  for (i, j), mse, r2 in zip(at, scores.mse, scores.r2):
    pools[i][j] = pools[i][j]._replace(mse=mse, r2=r2)
  for i in datasets:
    pools[i].sort(key=lambda c: c.mse)


def _simplified(best: Candidate, x: np.ndarray) -> Candidate:
  """best in its smallest exact form (simplify.py), judged on 128 of its points. Its
  MSE and R2 are kept: the forms agree to 1e-8 on those points."""
  prefix = simplify.simplified(best.prefix, x[:_SIMPLIFY_POINTS])
  if prefix == list(best.prefix):
    return best
  return dataclasses.replace(best, prefix=tuple(prefix), complexity=len(prefix))


_SIMPLIFY_POINTS = 128


def _refine_into(pools: list[list[_Entry]], to_refine: list[tuple[int, _Entry]],
                 frames: _Frames, config: InferenceConfig) -> None:
  """Refines (dataset, entry) candidates on their refinement points (the first
  refine.max_points of the scoring subset, in the entry's view) and adds them to their
  pools."""
  at = [frames.at(i, entry.view) for i, entry in to_refine]
  refined = refine.refine([entry.prefix for _, entry in to_refine],
                          [frames.xs[k][:config.refine.max_points] for k in at],
                          [frames.ys[k][:config.refine.max_points] for k in at],
                          config.refine)
  entries = [(k, entry.prefix) for k, (_, entry) in zip(at, to_refine)]
  for (i, entry), prefix, mse, r2 in zip(
      to_refine, refined.prefixes, *_refined_scores(refined, entries, frames, config)):
    pools[i].append(_Entry(prefix, True, mse, r2, entry.source, entry.view))


def _residual_into(pools: list[list[_Entry]], prepared: list[_Prepared], frames: _Frames,
                   config: InferenceConfig, clock: _Clock, fit_residuals: Callable) -> bool:
  """One residual round: for every dataset whose most accurate formula f has R2 below
  config.residual_below or is not within residual_rtol of y on 95% of the points
  (metrics.ACCURACY_SHARE), the pipeline (without search, tidying or another round)
  finds formulas g for y - f(x); the best config.residual_terms join the pool as
  f + g, refined on y like the model's candidates. With config.relative_polish, f is
  first polished on relative error where that pays (relative_polish.py): the residual
  of a least-squares f hides a small missed term under f's own errors where |y| is
  small (in-domain 0-199: R2 > 0.99 / > 0.999 0.650 / 0.575 -> 0.660 / 0.590, none
  lost; BENCHMARKS.md). False when no dataset took part."""
  bests = [min(pool, key=lambda c: c.mse if np.isfinite(c.mse) else np.inf)
           for pool in pools]
  fs = [p.to_raw(best.prefix, best.view) for best, p in zip(bests, prepared)]
  if config.relative_polish is not None:
    polished = _relative_polish(fs, [best.r2 for best in bests], *frames.of_view("raw"),
                                config)
    fs = [f if new is None else new[0] for f, new in zip(fs, polished)]
  owners, datasets = [], []
  for i, (f, best, p) in enumerate(zip(fs, bests, prepared)):
    with np.errstate(all="ignore"):
      residual = p.y - expressions.evaluate(f, p.x_kept)
      close = np.mean(np.abs(residual) <= config.residual_rtol * np.abs(p.y))
    if best.r2 >= config.residual_below and close >= metrics.ACCURACY_SHARE:
      continue
    spread = np.ptp(residual) if np.all(np.isfinite(residual)) else 0.0
    if MIN_Y_SPREAD <= spread and np.max(np.abs(residual)) <= MAX_ABS_Y:
      owners.append((i, f))
      datasets.append((p.x_kept, residual))
  if not datasets:
    return False
  remaining = None if clock.deadline is None else clock.deadline - time.perf_counter()
  nested = dataclasses.replace(
      config, residual_rounds=0, search_time=0.0,
      search=dataclasses.replace(config.search, generations=0), tidy=None,
      relative_polish=None, simplify=False,
      selection="r2", max_reported=config.residual_terms,
      max_bags=config.residual_bags or config.max_bags, max_time=remaining)
  output = fit_residuals(datasets, nested)
  combined = []
  for (i, f), result in zip(owners, output.results):
    # g reads x_k as column result.features[k] of the residual dataset's X, x_kept.
    unit = np.ones(len(result.features))
    for g in result.candidates:
      if g.source != "constant":  # f + a constant: f's own refit
        g_kept = unscale(g.prefix, unit - 1, unit, result.features)
        combined.append((i, _Entry(tidy.fold(["add", *f, *g_kept]), False, np.inf,
                                   -np.inf, "residual", "raw")))
  if combined:
    _refine_into(pools, combined, frames, config)
  return True


def _search_into(pools: list[list[_Entry]], prepared: list[_Prepared], frames: _Frames,
                 config: InferenceConfig, clock: _Clock) -> None:
  """Evolves every dataset's formulas (seeded with its pool, best first) and adds the
  search's Pareto front and best formula, refined like the model's, to the pool. The
  search reads the features as given (search.py says why), so its formulas join the
  pool in the raw view."""
  seeds = [[p.to_raw(c.prefix, c.view)
            for c in sorted(pool, key=lambda c: c.mse) if np.isfinite(c.mse)]
           for pool, p in zip(pools, prepared)]
  results = search.run(seeds, *frames.of_view("raw"), [p.stream for p in prepared],
                       config.search, config.search_time * len(prepared), clock.deadline)
  found = []
  for i, (result, p) in enumerate(zip(results, prepared)):
    p.notes.append(f"search: {result.generations} generations, {result.evaluated} "
                   "formulas evaluated")
    best = (result.best,) if result.best else ()
    found += [(i, _Entry(list(prefix), False, np.inf, -np.inf, "search", "raw"))
              for prefix in dict.fromkeys(f.prefix for f in result.front + best)]
  if found:
    _refine_into(pools, found, frames, config)


def _finite_nearby(pools: list[list[_Entry]], prepared: list[_Prepared],
                   config: InferenceConfig) -> list[np.ndarray]:
  """Per pool entry (all in the raw view by now): whether the formula is finite on 128
  random points of the data's box widened by extrapolation_margin of each feature's
  range on each side. A formula such as sqrt(11.3 - 1.97 x), fitted on x < 5.7, is real
  on the training points and NaN just past them (a Strogatz test point, BENCHMARKS.md)."""
  if not config.extrapolation_margin:
    return [np.ones(len(pool), bool) for pool in pools]
  xs = []
  for p in prepared:
    low, high = p.x_kept.min(0), p.x_kept.max(0)
    margin = config.extrapolation_margin * (high - low)
    rng = np.random.default_rng(p.stream + 1)
    xs.append(rng.uniform(low - margin, high + margin, size=(128, len(low))))
  flat = [(i, entry.prefix) for i, pool in enumerate(pools) for entry in pool]
  # Chunks of 64, as tidy.py's: a chunk size per call would compile for each.
  mse = selection.score([prefix for _, prefix in flat], [i for i, _ in flat], xs,
                        [np.zeros(128)] * len(xs), shape=(1, 1, 64)).mse
  out, begin = [], 0
  for pool in pools:
    out.append(np.isfinite(mse[begin:begin + len(pool)]))
    begin += len(pool)
  return out


def _tidy_fronts(pools: list[list[_Entry]], xs: list, ys: list,
                 config: tidy.TidyConfig) -> None:
  """Tidies (tidy.py) in place the formulas a selection rule picks from: the most
  accurate _TIDIED of each pool's Pareto front of length vs MSE, within 0.01 of the best
  R2; rescores what changed on the scoring points."""
  at = []
  for i, pool in enumerate(pools):
    front = _front_indices([len(c.prefix) for c in pool], [c.mse for c in pool])[-_TIDIED:]
    at += [(i, j) for j in front if pool[j].r2 >= pool[front[-1]].r2 - 0.01]
  tidied = tidy.tidy([pools[i][j].prefix for i, j in at], [i for i, _ in at], xs, ys,
                     config)
  changed = [k for k, (i, j) in enumerate(at) if tidied[k] != list(pools[i][j].prefix)]
  if not changed:
    return
  scores = selection.score([tidied[k] for k in changed], [at[k][0] for k in changed], xs, ys)
  for k, mse, r2 in zip(changed, scores.mse, scores.r2):
    i, j = at[k]
    pools[i][j] = pools[i][j]._replace(prefix=tidied[k], mse=mse, r2=r2)


_TIDIED = 8


def _front_indices(complexity: Sequence[int], mse: Sequence[float]) -> list[int]:
  """Indices of the items no other beats in both complexity and MSE, simplest first."""
  front, best = [], np.inf
  for j in sorted(range(len(mse)), key=lambda j: (complexity[j], mse[j])):
    if np.isfinite(mse[j]) and mse[j] < best:
      front.append(j)
      best = mse[j]
  return front


def _front(rows: list[Candidate]) -> list[Candidate]:
  """The candidates on the Pareto front of complexity vs MSE, simplest first."""
  return [rows[j] for j in _front_indices([c.complexity for c in rows],
                                          [c.mse for c in rows])]


class _Decoder:
  """Decodes the bags in fixed-shape chunks, in order, in one worker thread, so the
  caller can rank and refine earlier bags meanwhile. A chunk that starts after the
  time budget ran out is skipped (its bags get None)."""

  def __init__(self, model: Transformer, bags: list, config: InferenceConfig,
               clock: _Clock):
    self.model, self.bags, self.config, self.clock = model, bags, config, clock
    # Sampling decodes the greedy candidate in the same loop, as row 0 of each bag.
    greedy_row = config.include_greedy and config.method == "sample"
    self.methods = [decoding.DecodeConfig(
        config.method,
        1 if config.method == "greedy" else config.num_candidates + greedy_row,
        config.temperature, config.top_k, config.top_p, config.length_penalty,
        config.max_len, config.seed, config.constrained, greedy_first=greedy_row)]
    if config.include_greedy and config.method == "beam":
      self.methods.append(decoding.DecodeConfig("greedy", 1, max_len=config.max_len,
                                                constrained=config.constrained))
    # Few bags (a single fit) decode in a small power-of-two batch; many fill decode_batch.
    devices = jax.device_count()
    batch = min(config.decode_batch or default_decode_batch(),
                1 << max(len(bags) - 1, 0).bit_length())
    self.batch = -(-batch // devices) * devices
    self.mesh = sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=1, tensor=1))
    self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sr_jax-decode")
    self.chunks = [self.pool.submit(self._decode_chunk, index, begin)
                   for index, begin in enumerate(range(0, len(bags), self.batch))]

  def proposals(self, bag_range: range) -> list:
    """Candidate prefixes (None where invalid) of each bag in the range; waits for
    their chunks. Raises what decoding raised."""
    out = []
    for b in bag_range:
      chunk = self.chunks[b // self.batch].result()
      out.append(None if chunk is None else chunk[b % self.batch])
    return out

  def wait_all(self) -> None:
    """Returns once every chunk is decoded (or skipped); raises what decoding raised."""
    for chunk in self.chunks:
      chunk.result()

  def close(self) -> None:
    self.pool.shutdown(wait=True, cancel_futures=True)

  def _decode_chunk(self, index: int, begin: int) -> list | None:
    if index and self.clock.expired():
      return None
    start = time.perf_counter()
    config, batch = self.config, self.batch
    chunk = self.bags[begin:begin + batch]
    samples = [_Bag(x, y) for _, x, y, _, _ in chunk]
    samples += [samples[0]] * (batch - len(samples))
    keys = [_bag_key(*key) for _, _, _, key, _ in chunk]
    keys = jnp.stack(keys + keys[:1] * (batch - len(keys)))
    points = data.tokenize_points(samples, config.max_points_per_bag)
    mask = np.zeros((batch, config.max_points_per_bag), bool)
    for row, s in enumerate(samples):
      mask[row, :len(s.y)] = True
    with jax.set_mesh(self.mesh), nnx.logical_axis_rules(sharding.DEFAULT_RULES):
      inputs = [jax.device_put(a, sharding.batch_sharding(self.mesh, sharding.DEFAULT_RULES,
                                                          a.ndim)) for a in (points, mask)]
      outputs = [decoding.decode(self.model, *inputs, cfg, keys) for cfg in self.methods]
    per_bag = [[] for _ in chunk]
    for out in outputs:
      prefixes, _ = decoding.to_prefixes(np.asarray(out.tokens_BxCxL)[:len(chunk)])
      for row, candidates in enumerate(prefixes):
        per_bag[row] += candidates
    self.clock.add("decode", time.perf_counter() - start)
    return per_bag


def default_decode_batch() -> int:
  """Bags per decoding call when InferenceConfig.decode_batch is 0: 8 where JAX runs on
  the CPU, 64 on an accelerator."""
  return 8 if jax.default_backend() == "cpu" else 64


def _bag_key(stream: int, bag: int, view: int) -> jax.Array:
  """The sampling key of a dataset's bag-th bag in VIEWS[view] (dataset_stream folds in
  the seed). It does not depend on the other views decoded, so adding a view only adds
  candidates; the standardised view's keys are those of the releases before views."""
  key = jax.random.key(stream & 0x7FFFFFFF)
  key = jax.random.fold_in(jax.random.fold_in(key, (stream >> 31) & 0x7FFFFFFF), bag)
  return jax.random.fold_in(key, view) if view else key


@dataclasses.dataclass(frozen=True)
class _Bag:
  """What data.tokenize_points reads from a sample."""
  x: np.ndarray
  y: np.ndarray


# ---------------------------------------------------------------------------------
# trained models


def load_model(source: str | None = None, step: int | None = None) -> Transformer:
  """A trained model: the one shipped in the package (source None or "default"), a model
  file (pretrained.py; also its numbered parts), or a training run's directory
  (train.py's --workdir: its newest readable checkpoint, or `step`)."""
  if source is None or source == "default":
    source = pretrained.DEFAULT_MODEL
  if not os.path.isdir(source):
    return pretrained.load(source)
  from sr_jax import training  # training imports the data pipeline; only needed here

  config_path = os.path.join(source, "config.json")
  if not os.path.isfile(config_path):
    raise checkpoint.CheckpointError(
        f"{source!r} is not a training run: no config.json (train with "
        f"python train.py --workdir {source}), nor a model file")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  # Replicated on every device: decoding shards its batch over the same devices.
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
  cfg = training.RunConfig.from_config_dict(config)
  mesh = sharding.make_mesh(cfg.mesh)
  graphdef, state, _ = training.create_state(cfg, mesh)
  checkpointer = checkpoint.Checkpointer(os.path.join(source, "checkpoints"), 1, 1)
  try:
    _, state, _ = checkpointer.restore(checkpoint.abstract_like(state), step)
  finally:
    checkpointer.close()
  model, _ = nnx.merge(graphdef, state)
  return model
