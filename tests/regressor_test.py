"""SymbolicTransformerRegressor: scikit-learn's estimator checks, pandas names in every
export, the exports agree with predict, bad input is named, and a trained run loads."""

import jax
import numpy as np
import pandas as pd
import pytest
import sympy
from flax import nnx
from sklearn.exceptions import NotFittedError
from sklearn.metrics import r2_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from configs import debug
from sr_jax import checkpoint, inference, pretrained, training
from sr_jax.model import Transformer, model_config
from sr_jax.regressor import SymbolicTransformerRegressor, model

_TINY = Transformer(model_config("debug", max_target_len=32), rngs=nnx.Rngs(0))


def _fast(**overrides):
  """A cheap regressor: one view (each view is one more decoding pass; the views have
  tests of their own in inference_test), no search."""
  settings = dict(num_candidates=2, max_len=16, max_bags=2, num_refine=2, refine_iters=10,
                  search_time=0.0, views=("standardised",))
  return SymbolicTransformerRegressor(_TINY, **{**settings, **overrides})


@parametrize_with_checks([_fast()])
def test_sklearn_estimator_checks(estimator, check):
  check(estimator)


@pytest.fixture(scope="module")
def fitted():
  rng = np.random.default_rng(0)
  X = pd.DataFrame(rng.uniform(1, 2, size=(60, 3)), columns=["mass", "speed", "time"])
  y = 0.5 * X["mass"] * X["speed"]**2
  return _fast().fit(X, y), X, y


def test_exports_agree_with_predict(fitted):
  est, X, y = fitted
  prediction = est.predict(X)
  assert prediction.shape == (60,)
  table = est.candidates_
  assert list(table.columns) == ["expression", "sympy", "complexity", "loss", "r2",
                                 "refined", "source", "score"]
  assert table["score"].is_monotonic_decreasing
  assert est.score(X, y) == pytest.approx(table["r2"][0], abs=1e-9)
  front = est.equations_
  assert front["complexity"].is_monotonic_increasing and front["loss"].is_monotonic_decreasing
  assert front["selected"].sum() == 1
  assert front.loc[front["selected"], "expression"].item() == table["expression"][0]
  # The SRBench string parses with sympy in the user's column names.
  parsed = sympy.sympify(model(est, X))
  assert {str(s) for s in parsed.free_symbols} <= {"mass", "speed", "time"}
  values = sympy.lambdify(sorted(parsed.free_symbols, key=str), parsed, "numpy")(
      *[X[str(s)].to_numpy() for s in sorted(parsed.free_symbols, key=str)])
  np.testing.assert_allclose(np.broadcast_to(values, (60,)), prediction, rtol=1e-9)
  assert isinstance(est.sympy(), sympy.Expr) and isinstance(est.latex(), str)
  f, constants = est.jax()
  np.testing.assert_allclose(np.asarray(f(X.to_numpy(), constants)), prediction, rtol=1e-5)


def test_bad_use_is_named():
  with pytest.raises(NotFittedError):
    _fast().predict(np.ones((3, 2)))
  with pytest.raises(ValueError, match="pretrained=3"):
    SymbolicTransformerRegressor(pretrained=3).fit(np.ones((3, 1)), np.ones(3))
  with pytest.raises(pretrained.ModelFileError, match="no model file"):
    SymbolicTransformerRegressor("no/such/model.srj").fit(np.ones((3, 1)), np.ones(3))
  with pytest.raises(ValueError, match="NaN"):
    _fast().fit(np.array([[1.0], [np.nan], [2.0]]), np.ones(3))
  with pytest.raises(ValueError, match="dataset 1: X has 3 rows but y has 2"):
    _fast().fit_many([(np.ones((3, 1)), np.ones(3)), (np.ones((3, 1)), np.ones(2))])


def test_fit_many_matches_fit_on_each():
  """A dataset's result does not depend on the datasets beside it: each dataset fitted
  alone gets the table it gets in a batch, in any order (its bags, samples and
  subsets come from its own stream). Without residual rounds: on pure noise their
  sums of two formulas have flat minima, which refinement calls of other shapes leave
  at constants 1e-5 apart (inference_test checks a residual round beside another
  dataset)."""
  rng = np.random.default_rng(1)
  datasets = [(rng.normal(size=(n, 2)), rng.normal(size=n)) for n in (40, 250, 90)]
  est = _fast(num_candidates=4, max_bags=3, views=("standardised", "mirrored"),
              residual_rounds=0)
  many = est.fit_many(datasets)
  reverse = est.fit_many(datasets[::-1])[::-1]
  assert not hasattr(est, "prefix_")
  assert len(many) == 3 and all(isinstance(r, inference.DatasetResult) for r in many)
  for k, (x, y) in enumerate(datasets):
    alone = est.fit(x, y).result_
    for other in (many[k], reverse[k]):
      assert [c.prefix for c in other.candidates] == [c.prefix for c in alone.candidates]
      assert other.num_decoded == alone.num_decoded and other.num_invalid == alone.num_invalid
      # Scores are sums over points in batches of other shapes: equal to rounding.
      np.testing.assert_allclose([c.r2 for c in other.candidates],
                                 [c.r2 for c in alone.candidates], rtol=1e-12, atol=1e-12)


def test_trained_run_loads_and_fits(tmp_path):
  config = debug.get_config()
  config.data.point_buckets = (200,)  # one batch shape
  config.data.points_per_batch = 1_600
  config.generator.max_input_dimension = 2
  config.model.max_target_len = 128
  config.train.update(num_steps=2, log_every=1, eval_every=1_000, eval_batches=1,
                      checkpoint_every=2, async_checkpoints=False, tensorboard=False)
  training.train_and_evaluate(config, str(tmp_path))
  loaded = inference.load_model(str(tmp_path))
  assert loaded.config.max_target_len == 128
  est = SymbolicTransformerRegressor(str(tmp_path), num_candidates=2, max_len=16,
                                     max_bags=1, num_refine=1, refine_iters=5,
                                     views=("standardised",),
                                     search_time=0.0)  # the search has tests of its own
  x, y = np.linspace(0, 1, 20)[:, None], np.linspace(0, 1, 20) ** 2
  est.fit(x, y)
  assert est.score(x, y) == pytest.approx(r2_score(y, est.predict(x)), abs=1e-12)
  exported = inference.load_model(str(tmp_path / "model.srj"))  # the run's model file
  for a, b in zip(jax.tree.leaves(nnx.state(exported, nnx.Param)),
                  jax.tree.leaves(nnx.state(loaded, nnx.Param))):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)  # stored as float16
  with pytest.raises(pretrained.ModelFileError, match="no model file"):
    inference.load_model(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoint.CheckpointError, match="not a training run"):
    inference.load_model(str(tmp_path / "empty"))


def test_fit_many_reports_progress_only_when_asked(capsys):
  rng = np.random.default_rng(2)
  datasets = [(rng.normal(size=(30, 1)), rng.normal(size=30)) for _ in range(3)]
  _fast(max_bags=1).fit_many(datasets)
  assert capsys.readouterr().err == ""
  _fast(max_bags=1).fit_many(datasets, verbose=True)
  assert "3/3 datasets" in capsys.readouterr().err


def test_search_is_on_by_default_and_its_pareto_front_is_the_table():
  rng = np.random.default_rng(3)
  X = rng.uniform(1, 2, size=(80, 2))
  y = X[:, 0] * X[:, 1] + np.exp(X[:, 0])
  assert SymbolicTransformerRegressor().search_time == 2.0
  est = _fast(search_generations=8, selection="penalized").fit(X, y)
  assert est.seconds_["search"] > 0
  assert (est.candidates_["source"] == "search").any()
  front = est.equations_
  chosen = front.loc[front["selected"]]
  assert len(chosen) == 1
  # The penalized rule picks the front's best R2 - penalty * complexity.
  penalized = front["r2"] - est.complexity_penalty * front["complexity"]
  assert chosen.index.item() == penalized.idxmax()
  again = _fast(search_generations=8, selection="penalized").fit(X, y)
  assert again.model() == est.model()  # a generation count reproduces the result


def test_candidates_are_ranked_on_a_subset_of_max_score_points_rows():
  """The regressor ranks on 2,000 rows by default (E2E: all, up to 10,000); the subset
  is what the candidates' reported MSE is measured on."""
  assert SymbolicTransformerRegressor().get_params()["max_score_points"] == 2_000
  rng = np.random.default_rng(3)
  x = rng.uniform(1, 2, size=(250, 1))
  y = 2.5 * x[:, 0] + 1
  result = _fast(max_score_points=60).fit(x, y).result_
  assert any("ranked on a random 60" in note for note in result.notes)
  # The reported MSE is a mean over 60 of the 250 rows: between the means of the 60
  # smallest and the 60 largest squared errors.
  errors = np.sort((result.predict(x) - y) ** 2)
  assert errors[:60].mean() * (1 - 1e-9) <= result.best.mse <= errors[-60:].mean() * (1 + 1e-9)


def test_residual_settings_reach_the_pipeline():
  """The regressor's residual parameters default to the pipeline's and are passed on;
  a bad one is refused by name."""
  default, pipeline = SymbolicTransformerRegressor()._config(), inference.InferenceConfig()
  assert default.residual_rounds == pipeline.residual_rounds
  assert default.residual_rtol == pipeline.residual_rtol
  config = _fast(residual_rounds=1, residual_rtol=0.02)._config()
  assert (config.residual_rounds, config.residual_rtol) == (1, 0.02)
  with pytest.raises(ValueError, match="residual_rtol"):
    _fast(residual_rtol=-1.0)._config()
