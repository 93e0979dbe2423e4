"""The scikit-learn face of sr_jax: SymbolicTransformerRegressor.

fit(X, y) runs the batched inference pipeline (inference.py) on one dataset;
fit_many(datasets) runs it on many at once, which is the fast path for evaluation at
scale. The fitted estimator exposes its ranked candidates as `equations_` (a pandas
DataFrame, like PySR's), the best formula as sympy / LaTeX / SRBench string, and a
jitted JAX function of it.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import sympy
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from sr_jax import compiler, expressions, inference, interpreter, monitor, refine, search
from sr_jax.model import Transformer


@functools.lru_cache(maxsize=4)
def _load(source: str | None) -> Transformer:
  return inference.load_model(source)


class SymbolicTransformerRegressor(RegressorMixin, BaseEstimator):
  """End-to-end symbolic regression with a pretrained transformer.

  pretrained: None (the model shipped in the package), a model file (pretrained.py),
  a training run's directory (train.py --workdir) or a Transformer.
  method / num_candidates / temperature / max_len: decoding (C candidates per bag,
  plus the greedy one); max_bags: bags of <= 200 points read per dataset (3, where
  E2E reads 10: on 30 Feynman problems the model alone was as accurate with 3 and took
  0.62 s per dataset instead of 2.16 s, time the search puts to better use);
  views: the coordinates each bag is shown to the model in, one decoding pass each:
  'standardised' (E2E's: zero mean, unit variance per feature), 'scaled' (divided by
  the root mean square, not centred: products and ratios of features stay so), 'raw'
  (as given), 'mirrored' (standardised, every sign flipped), 'reversed'
  (standardised, the features in reverse order) and 'negated' (standardised, y shown
  as -y; the formula written there is read negated). The default,
  standardised, scaled and mirrored: the scaled view solves Feynman laws on positive
  ranges that standardised inputs alone turn into long rational functions, and each
  further view is another look at the same points: adding reversed and negated took
  600 in-domain problems (model alone) from 32.8% to 36.5% R2 > 0.99 for 1.55x the
  seconds per dataset without search (BENCHMARKS.md);
  max_score_points: training points (a seeded random subset) the candidates are ranked
  and their constants refined on (2,000; E2E ranks on all, up to 10,000: on 30 Feynman
  problems with 10,000 training rows the model stages then took 0.80 s per dataset
  instead of 0.52 s, at the same accuracy, BENCHMARKS.md);
  num_refine: top distinct skeletons whose constants are refined (refine_method
  'lm' or 'lbfgs', refine_iters iterations);
  residual_rounds: rounds in which a dataset whose best formula f fits to R2 < 0.999,
  or is off by over 0.1% on over 5% of the points, is decoded again with y - f(x) as
  the target, the formulas g found joining as f + g refitted on y (2; 0 turns it
  off): the model misses a term of a long formula more often than it writes a short
  one wrong (inference.InferenceConfig, BENCHMARKS.md); residual_rtol: that relative
  error (1e-3);
  search_time: seconds of evolutionary search per dataset after refinement, seeded
  with the model's candidates, with sums and ratios of a few terms fitted by
  sparse regression and with power laws times a function of a product of features
  fitted on logs (search.py, sparse_seeds.py, group_seeds.py; 0 turns it off; one-time XLA
  compilation is not counted, so the first fit in a process searches as long as
  later ones). The default, 2 s, is the budget at which
  Operon, the strongest GP baseline, was measured here (BENCHMARKS.md); a
  single fit then takes a few seconds. search_generations > 0 runs exactly that many
  generations instead, which makes the result reproducible bit for bit (a time budget
  reaches a machine-dependent number of generations);
  selection: the model-selection rule among the candidates: 'simplest' (the shortest
  formula whose R2 is within r2_tolerance of the best, or within relative_tolerance
  of the best one's error 1 - R2 where that is more, up to max_tolerance, and near an
  exact fit within error_ratio times its error: on Feynman, the same accuracy as the
  most accurate formula at 5 SRBench nodes fewer, also with noise in y, and exact
  laws kept over shorter approximations), 'r2' (the most accurate,
  E2E's rule) or 'penalized' (R2 minus complexity_penalty per node). Every rule prices
  a formula that is not finite just outside the data (the box widened by 10% of each
  feature's range) as 1e-3 of R2 worse, and picks from formulas tidied of constants
  that do nothing (1.0*x + 1e-16 -> x; sr_jax/tidy.py); the picked formula's
  constants are refitted on relative error and kept so where that is as good by R2
  and halves the relative error 95% of the points stay within (sr_jax/relative_polish.py:
  least squares serves large |y| only); it is then written in its smallest exact
  form (m*a + m*b -> m*(a + b); sr_jax/simplify.py);
  max_time: seconds per fit call, later stages are cut short when it runs out;
  random_state: seed of bags, sampling and search (None means 0).

  After fit: `equations_` is the Pareto front of complexity vs error (PySR's table:
  simplest first; `selected` marks the formula the selection rule picked, which
  predict, sympy, latex and model use), `candidates_` every reported candidate, best
  first.
  """

  def __init__(self, pretrained: str | Transformer | None = None, method: str = "sample",
               num_candidates: int = 10, temperature: float = 1.0, max_len: int = 128,
               max_bags: int = 3, views: tuple[str, ...] = inference.InferenceConfig.views,
               max_score_points: int = 2_000, num_refine: int = 10,
               residual_rounds: int = inference.InferenceConfig.residual_rounds,
               residual_rtol: float = inference.InferenceConfig.residual_rtol,
               refine_method: str = "lm",
               refine_iters: int = 100, search_time: float = 2.0,
               search_generations: int = 0, selection: str = "simplest",
               complexity_penalty: float = inference.InferenceConfig.complexity_penalty,
               r2_tolerance: float = inference.InferenceConfig.r2_tolerance,
               relative_tolerance: float = inference.InferenceConfig.relative_tolerance,
               max_tolerance: float = inference.InferenceConfig.max_tolerance,
               error_ratio: float = inference.InferenceConfig.error_ratio,
               max_time: float | None = None,
               float64: bool = True, random_state: int | None = None):
    self.pretrained = pretrained
    self.method = method
    self.num_candidates = num_candidates
    self.temperature = temperature
    self.max_len = max_len
    self.max_bags = max_bags
    self.views = views
    self.max_score_points = max_score_points
    self.num_refine = num_refine
    self.residual_rounds = residual_rounds
    self.residual_rtol = residual_rtol
    self.refine_method = refine_method
    self.refine_iters = refine_iters
    self.search_time = search_time
    self.search_generations = search_generations
    self.selection = selection
    self.complexity_penalty = complexity_penalty
    self.r2_tolerance = r2_tolerance
    self.relative_tolerance = relative_tolerance
    self.max_tolerance = max_tolerance
    self.error_ratio = error_ratio
    self.max_time = max_time
    self.float64 = float64
    self.random_state = random_state

  # -- configuration --------------------------------------------------------------

  def _config(self) -> inference.InferenceConfig:
    seed = 0 if self.random_state is None else int(self.random_state)
    return inference.InferenceConfig(
        method=self.method, num_candidates=self.num_candidates,
        temperature=self.temperature, max_len=self.max_len, max_bags=self.max_bags,
        views=(self.views,) if isinstance(self.views, str) else tuple(self.views),
        max_score_points=self.max_score_points, num_refine=self.num_refine,
        residual_rounds=self.residual_rounds, residual_rtol=self.residual_rtol,
        refine=refine.RefineConfig(method=self.refine_method,
                                   max_iters=self.refine_iters, seed=seed),
        search_time=self.search_time,
        search=search.SearchConfig(generations=self.search_generations, seed=seed),
        selection=self.selection, complexity_penalty=self.complexity_penalty,
        r2_tolerance=self.r2_tolerance, relative_tolerance=self.relative_tolerance,
        max_tolerance=self.max_tolerance, error_ratio=self.error_ratio,
        float64=self.float64, max_time=self.max_time,
        seed=seed)

  def _transformer(self) -> Transformer:
    if isinstance(self.pretrained, Transformer):
      return self.pretrained
    if self.pretrained is None or isinstance(self.pretrained, str):
      return _load(self.pretrained)
    raise ValueError(f"pretrained={self.pretrained!r}: pass None (the shipped model), a model "
                     "file, a training run directory (python train.py --workdir DIR) or a "
                     "sr_jax.model.Transformer")

  def __sklearn_tags__(self):
    tags = super().__sklearn_tags__()
    tags.regressor_tags.poor_score = True  # an untrained model must pass the API checks
    return tags

  # -- fitting --------------------------------------------------------------------

  def fit(self, X, y):
    """Finds formulas for y = f(X); the best is used by predict, sympy, model, ..."""
    X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
    output = inference.run(self._transformer(), [(X, y)], self._config())
    self._set_result(output.results[0])
    self.seconds_ = output.seconds
    return self

  def fit_many(self, datasets: Sequence[tuple], verbose: bool = False
               ) -> list[inference.DatasetResult]:
    """Formulas for many (X, y) datasets in one batched run; returns each dataset's
    ranked candidates (inference.DatasetResult). The estimator itself stays as it was.
    verbose: a progress line (datasets done, elapsed, time left) on stderr.
    Bad input raises inference.run's ValueError, which names the dataset."""
    progress = monitor.Progress(len(datasets), unit=" datasets") if verbose else None
    output = inference.run(self._transformer(), datasets, self._config(),
                           progress=progress.update if progress else None)
    if progress:
      progress.close()
    return output.results

  def _set_result(self, result: inference.DatasetResult) -> None:
    self.result_ = result
    self.features_ = result.features
    self.prefix_ = list(result.best.prefix)
    self.candidates_ = self._table(result.candidates)
    self.equations_ = self._table(result.front)
    self.equations_["selected"] = [c == result.best for c in result.front]

  def _table(self, candidates) -> pd.DataFrame:
    names = self._names()
    return pd.DataFrame({
        "expression": [expressions.to_infix(list(c.prefix), names) for c in candidates],
        "sympy": [expressions.to_sympy(list(c.prefix), self._symbols()) for c in candidates],
        "complexity": [c.complexity for c in candidates],
        "loss": [c.mse for c in candidates],
        "r2": [c.r2 for c in candidates],
        "refined": [c.refined for c in candidates],
        "source": [c.source for c in candidates],
        "score": [c.score for c in candidates],
    })

  def _names(self) -> list[str]:
    """The user's names of the kept features, in x_0, x_1, ... order."""
    all_names = (list(map(str, self.feature_names_in_)) if hasattr(self, "feature_names_in_")
                 else [f"x_{i}" for i in range(self.n_features_in_)])
    return [all_names[f] for f in self.features_]

  def _symbols(self) -> list[sympy.Symbol]:
    return [sympy.Symbol(name, real=True) for name in self._names()]

  # -- using the fit --------------------------------------------------------------

  def predict(self, X) -> np.ndarray:
    check_is_fitted(self, "prefix_")
    X = validate_data(self, X, reset=False, dtype=np.float64)
    return expressions.evaluate(self.prefix_, X[:, list(self.features_)])

  def sympy(self) -> sympy.Expr:
    check_is_fitted(self, "prefix_")
    return expressions.to_sympy(self.prefix_, self._symbols())

  def latex(self) -> str:
    check_is_fitted(self, "prefix_")
    return expressions.to_latex(self.prefix_, self._names())

  def model(self) -> str:
    """SRBench's model string: sympy-parsable, in the user's column names."""
    check_is_fitted(self, "prefix_")
    return expressions.model_string(self.prefix_, self._names())

  def jax(self):
    """(f, constants): f(X, constants) is a jitted JAX function of the best formula on
    the user's X (all columns), differentiable in its constants."""
    check_is_fitted(self, "prefix_")
    program = compiler.compile_batch([self.prefix_])
    arrays = tuple(jnp.asarray(a[0]) for a in program.arrays)
    columns = jnp.asarray(self.features_, jnp.int32)
    count = int(program.num_constants_B[0])

    @jax.jit
    def f(x_NxD, constants_K):
      slots_K = jnp.zeros(program.shape[2], constants_K.dtype).at[:count].set(constants_K)
      return interpreter.evaluate_one(*arrays, slots_K, x_NxD[:, columns])

    return f, jnp.asarray(program.constants_BxK[0, :count])


def model(est: SymbolicTransformerRegressor, X=None) -> str:
  """SRBench's `model(est, X)` hook: the fitted model string."""
  del X
  return est.model()
