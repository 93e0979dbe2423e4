"""Relative polish: refit on relative error, kept only when as good by R2 and clearly
better by Acc_tau's measure."""

import jax
import numpy as np
import pytest

from sr_jax import expressions, inference, metrics, refine, relative_polish, selection


def _r2(prediction, y):
  return 1 - np.mean((prediction - y)**2) / np.var(y)


def _fitted(prefix, x, y):
  with jax.enable_x64(True):
    result = refine.refine([prefix], [x], [y], refine.RefineConfig(max_iters=300))
  return list(result.prefixes[0])


# y = x^4 + x + 1 on [0, 20] (1 to 160,000) read as c0 x^4 + c1 sqrt(x): least squares
# serves the large values and misses y by over 10% on more than 5% of the points.
_QUARTIC = ["add", "mul", 1.0, "pow2", "pow2", "x_0", "mul", 1.0, "sqrt", "x_0"]


def _quartic_data(seed=0):
  x = np.random.default_rng(seed).uniform(0, 20, size=(300, 1))
  return x, x[:, 0]**4 + x[:, 0] + 1


def test_the_polish_meets_acc_where_least_squares_misses_small_y_at_the_same_r2():
  x, y = _quartic_data()
  fitted = _fitted(_QUARTIC, x, y)
  before = expressions.evaluate(fitted, x)
  assert not metrics.accuracy(y, before, rtol=0.1)
  with jax.enable_x64(True):
    [kept] = relative_polish.polish([fitted], [x], [y], [_r2(before, y)],
                                    selection.r2_slack, refine.RefineConfig())
  assert kept is not None
  prefix, mse, r2 = kept
  after = expressions.evaluate(prefix, x)
  assert metrics.accuracy(y, after, rtol=0.1)  # numpy's oracle on every point
  assert expressions.skeleton(prefix) == expressions.skeleton(fitted)
  np.testing.assert_allclose(mse, np.mean((after - y)**2), rtol=1e-9)
  np.testing.assert_allclose(r2, _r2(after, y), rtol=1e-12)
  assert _r2(after, y) >= _r2(before, y) - selection.r2_slack(_r2(before, y))
  assert _r2(after, y) < _r2(before, y)  # it did trade some R2


def test_the_polish_is_refused_where_it_costs_more_r2_than_the_selection_allows():
  """exp(x) + 1 on [0, 10] as c0 exp(c1 x) + c2 sqrt(x): the relative fit gets 3x
  closer to y where it is small but gives up 4.6e-5 of R2 against a 2.6e-6 slack."""
  x = np.random.default_rng(0).uniform(0, 10, size=(300, 1))
  y = np.exp(x[:, 0]) + 1
  fitted = _fitted(["add", "mul", 1.0, "exp", "mul", 1.0, "x_0", "mul", 1.0, "sqrt",
                    "x_0"], x, y)
  r2 = _r2(expressions.evaluate(fitted, x), y)
  with jax.enable_x64(True):
    assert relative_polish.polish([fitted], [x], [y], [r2], selection.r2_slack,
                                  refine.RefineConfig()) == [None]
    # With a loose enough slack the same refit is kept.
    [kept] = relative_polish.polish([fitted], [x], [y], [r2], lambda r2: 1e-3,
                                    refine.RefineConfig())
  assert kept is not None
  before = relative_polish.relative_error_quantile(expressions.evaluate(fitted, x), y)
  after = relative_polish.relative_error_quantile(expressions.evaluate(kept[0], x), y)
  assert after <= before / 2 and r2 - 1e-3 <= kept[2] < r2 - selection.r2_slack(r2)


def test_accurate_fits_constant_y_and_formulas_without_constants_are_left_alone():
  """Also a fit already within 0.1% of y on 95% of the points (min_error): the
  quartic's small terms shrunk to 0.001 (x + 1), read as c0 x^4 + c1 sqrt(x), is off
  by 0.07%; the relative fit would take that to 0.003%, which no Acc_tau can see."""
  x = np.random.default_rng(1).uniform(1, 3, size=(100, 1))
  y = 2.5 * x[:, 0]**2
  exact = ["mul", 2.5, "pow2", "x_0"]
  none_fitted = ["pow2", "x_0"]
  constant = np.full(100, 4.0)
  close_x, _ = _quartic_data()
  close_y = close_x[:, 0]**4 + 1e-3 * (close_x[:, 0] + 1)
  close = _fitted(_QUARTIC, close_x, close_y)
  close_r2 = _r2(expressions.evaluate(close, close_x), close_y)
  assert 0 < relative_polish.relative_error_quantile(
      expressions.evaluate(close, close_x), close_y) < 1e-3
  with jax.enable_x64(True):
    out = relative_polish.polish([exact, none_fitted, [4.0], close], [x, x, x, close_x],
                                 [y, y, constant, close_y],
                                 [1.0, _r2(x[:, 0]**2, y), 1.0, close_r2],
                                 selection.r2_slack, refine.RefineConfig())
    assert out == [None, None, None, None]
    [kept] = relative_polish.polish([close], [close_x], [close_y], [close_r2],
                                    selection.r2_slack, refine.RefineConfig(),
                                    relative_polish.PolishConfig(min_error=0))
  assert kept is not None  # only min_error held it back


def test_a_constant_tidying_set_to_zero_stays_zero():
  """The quartic with a removed term 0 * x: refitted freely, that term would take up
  y's + x; held, it stays out and the polish still meets Acc0.1."""
  x, y = _quartic_data()
  fitted = _fitted(_QUARTIC, x, y)
  with_zero = ["add", *fitted, "mul", 0.0, "x_0"]
  r2 = _r2(expressions.evaluate(with_zero, x), y)
  with jax.enable_x64(True):
    [kept] = relative_polish.polish([with_zero], [x], [y], [r2], selection.r2_slack,
                                    refine.RefineConfig())
  assert kept is not None and kept[0][-3:] == ["mul", 0.0, "x_0"]
  assert metrics.accuracy(y, expressions.evaluate(kept[0], x), rtol=0.1)


def test_relative_error_quantile_is_the_least_tau_acc_accepts():
  """Against metrics.accuracy (E2E's Acc_tau) on random predictions: it holds at the
  quantile and fails just below it."""
  rng = np.random.default_rng(2)
  for _ in range(20):
    y = rng.normal(size=rng.integers(5, 200)) * 10**rng.uniform(-3, 3)
    prediction = y * (1 + rng.normal(size=y.size) * 10**rng.uniform(-4, 0))
    tau = relative_polish.relative_error_quantile(prediction, y)
    assert metrics.accuracy(y, prediction, rtol=tau * (1 + 1e-12))
    assert not metrics.accuracy(y, prediction, rtol=tau * (1 - 1e-9))
  y = np.array([0.0, 1.0, 2.0])
  # 0 / 0 where y = 0: exact
  assert relative_polish.relative_error_quantile(y.copy(), y) == 0.0
  assert relative_polish.relative_error_quantile(np.array([np.nan, 1.0, 2.0]), y) == np.inf


def test_relative_weights_floor_small_y_at_a_quantile():
  y = np.array([0.0, 0.0, 1e-9, -2.0, 4.0, 8.0, 1e4, -1e6] * 5)
  weights = relative_polish.relative_weights(y, 0.2)  # the 20% quantile of |y| is 0: 1e-9
  np.testing.assert_allclose(weights, 1 / np.maximum(np.abs(y), 1e-9))
  weights = relative_polish.relative_weights(y, 0.5)  # the median of |y|: 3
  np.testing.assert_allclose(weights, 1 / np.maximum(np.abs(y), 3.0))
  assert relative_polish.relative_weights(np.zeros(4), 0.05) is None
  with pytest.raises(ValueError, match="floor_quantile"):
    relative_polish.PolishConfig(floor_quantile=1.0)


def test_the_pipeline_returns_the_polished_formula_and_none_turns_it_off():
  x, y = _quartic_data()
  propose = lambda bags: [[list(_QUARTIC)] for _ in bags]
  config = inference.InferenceConfig(views=("raw",), residual_rounds=0, max_bags=1,
                                     tidy=None, simplify=False)
  polished = inference.run(None, [(x, y)], config, propose=propose)
  plain = inference.run(None, [(x, y)], inference.InferenceConfig(
      **{**config.__dict__, "relative_polish": None}), propose=propose)
  for output, accurate in ((polished, True), (plain, False)):
    best = output.results[0].best
    assert expressions.skeleton(best.prefix) == expressions.skeleton(_QUARTIC)
    assert metrics.accuracy(y, output.results[0].predict(x), rtol=0.1) == accurate
    assert best.r2 > 1 - 1e-6
  assert polished.seconds["relative_polish"] > 0 and plain.seconds["relative_polish"] == 0


@pytest.mark.parametrize("polished", [True, False])
def test_the_residual_round_shows_the_model_the_residual_of_the_polished_formula(polished):
  """The quartic's best formula f misses 0.1% on over 5% of the points, so a residual
  round decodes y - f. With the polish, the f behind that residual (y minus what the
  model is shown) is within 10% of y on 95% of the bag's points; the least-squares f
  is not."""
  x, y = _quartic_data()
  calls = []

  def propose(bags):
    calls.append(bags)
    return [[list(_QUARTIC)] if len(calls) == 1 else [] for _ in bags]

  config = inference.InferenceConfig(
      views=("raw",), residual_rounds=1, max_bags=1, tidy=None, simplify=False,
      relative_polish=relative_polish.PolishConfig() if polished else None)
  inference.run(None, [(x, y)], config, propose=propose)
  assert len(calls) == 2  # the dataset, then its residual
  [(_, bag_x, residual, _)] = calls[1]
  truth = bag_x[:, 0]**4 + bag_x[:, 0] + 1
  assert metrics.accuracy(truth, truth - residual, rtol=0.1) == polished
