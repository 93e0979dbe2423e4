"""Tests of sr_jax.metrics against scikit-learn, SRBench's own recipe and hand-worked
cases."""

import time

import numpy as np
import pytest
import sklearn.metrics
import sklearn.model_selection
import sympy

from sr_jax import metrics


# ---------------------------------------------------------------------------------
# numeric metrics


@pytest.mark.parametrize("seed", range(5))
def test_r2_equals_sklearn(seed):
  rng = np.random.default_rng(seed)
  y = rng.normal(size=50) * 10 + 3
  prediction = y + rng.normal(size=50) * rng.uniform(0.1, 20)
  assert metrics.r2(y, prediction) == pytest.approx(
      sklearn.metrics.r2_score(y, prediction), rel=1e-12, abs=1e-12)
  result = metrics.compute_metrics(y, prediction)
  assert result["r2_zero"] == max(0.0, sklearn.metrics.r2_score(y, prediction))
  assert result["mse"] == pytest.approx(sklearn.metrics.mean_squared_error(y, prediction))
  assert result["mae"] == pytest.approx(sklearn.metrics.mean_absolute_error(y, prediction))


def test_r2_of_a_constant_target_follows_sklearn():
  y = np.full(10, 2.0)
  for prediction in (y.copy(), y + 1):
    assert metrics.r2(y, prediction) == sklearn.metrics.r2_score(y, prediction)


def test_r2_zero_clips_a_bad_model():
  y = np.arange(10.0)
  result = metrics.compute_metrics(y, -y)
  assert result["r2"] == pytest.approx(sklearn.metrics.r2_score(y, -y))
  assert result["r2"] < 0 and result["r2_zero"] == 0.0


def test_accuracy_counts_points_within_relative_tolerance():
  y = np.full(100, 10.0)
  prediction = y.copy()
  prediction[:5] = 12.0  # 5 points 20% off, 95 exact: exactly the 95% share
  result = metrics.compute_metrics(y, prediction)
  assert result["acc_0.1"] and result["acc_0.01"] and result["acc_0.001"]
  prediction[5] = 10.5  # a sixth point 5% off: within 0.1, outside 0.01
  result = metrics.compute_metrics(y, prediction)
  assert result["acc_0.1"] and not result["acc_0.01"]
  prediction[5] = 12.0  # a sixth point outside 0.1: 94% is not enough
  assert not metrics.compute_metrics(y, prediction)["acc_0.1"]
  prediction[:6] = 10.005  # 0.05% off: within 0.01 and 0.001, not 0.0001
  assert metrics.compute_metrics(y, prediction)["acc_0.001"]
  assert not metrics.accuracy(y, prediction, rtol=1e-4)


def test_accuracy_is_relative_to_the_target_not_the_prediction():
  y = np.full(20, 1.0)
  # |pred - y| = 0.25 * |y| passes at tau = 0.25, although it is a third of |pred|.
  assert metrics.accuracy(y, np.full(20, 0.75), rtol=0.25)
  assert not metrics.accuracy(y, np.full(20, 0.74), rtol=0.25)


def test_biggio_accuracy_has_an_absolute_floor():
  y = np.zeros(20)
  assert metrics.compute_metrics(y, y + 5e-4)["accuracy_l1_biggio"]
  assert not metrics.compute_metrics(y, y + 5e-4)["acc_0.1"]  # no floor: 0 tolerance
  assert not metrics.compute_metrics(y, y + 2e-3)["accuracy_l1_biggio"]
  y = np.full(20, 100.0)
  assert metrics.compute_metrics(y, y * 1.049)["accuracy_l1_biggio"]
  assert not metrics.compute_metrics(y, y * 1.06)["accuracy_l1_biggio"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_predictions_never_crash(bad):
  y = np.linspace(1, 2, 40)
  prediction = y.copy()
  prediction[3] = bad  # one bad point among otherwise perfect ones
  result = metrics.compute_metrics(y, prediction)
  assert result["r2"] == -np.inf and result["r2_zero"] == 0.0
  assert result["mse"] == np.inf and result["mae"] == np.inf
  assert not any(result[key] for key in ("acc_0.1", "acc_0.01", "acc_0.001",
                                         "accuracy_l1_biggio"))


def test_overflowing_predictions_give_minus_infinite_r2():
  y = np.array([1.0, 2.0, 3.0])
  assert metrics.r2(y, np.array([1e200, 2.0, 3.0])) == -np.inf


def test_bad_shapes_and_broken_targets_are_errors():
  with pytest.raises(ValueError, match="one shape"):
    metrics.compute_metrics(np.zeros(3), np.zeros(4))
  with pytest.raises(ValueError, match="y_true has non-finite"):
    metrics.compute_metrics(np.array([1.0, np.nan]), np.zeros(2))


# ---------------------------------------------------------------------------------
# protocol


def _data(rows, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(rows, 3))
  return x, 5 + x[:, 0] * x[:, 1] - np.sin(x[:, 2])


@pytest.mark.parametrize("rows", [100, 101, 7])
def test_split_is_sklearns_75_25_split(rows):
  x, y = _data(rows)
  x_train, y_train, x_test, y_test = metrics.srbench_split(x, y, seed=3)
  expected = sklearn.model_selection.train_test_split(
      x, y, train_size=0.75, test_size=0.25, random_state=3)
  for got, want in zip((x_train, x_test, y_train, y_test), expected):
    np.testing.assert_array_equal(got, want)
  assert len(y_train) == int(0.75 * rows) and len(y_train) + len(y_test) == rows


def _srbench_recipe(x, y, seed, cap, noise):
  """SRBench's evaluate_model.py for ground-truth data, transcribed (global RNG)."""
  np.random.seed(seed)
  x_train, x_test, y_train, y_test = sklearn.model_selection.train_test_split(
      x, y, train_size=0.75, test_size=0.25, random_state=seed)
  if cap > 0 and len(y) > cap:
    sample_idx = np.random.choice(np.arange(len(x_train)), size=cap)
    x_train, y_train = x_train[sample_idx], y_train[sample_idx]
  if noise > 0:
    y_train = y_train + np.random.normal(0, noise * np.sqrt(np.mean(np.square(y_train))),
                                         size=len(y_train))
  return x_train, y_train, x_test, y_test


@pytest.mark.parametrize("rows,cap,noise", [(400, 100, 0.0), (400, 100, 0.01),
                                            (90, 100, 0.1), (130, 100, 0.001)])
def test_split_cap_and_noise_equal_srbench_recipe(rows, cap, noise):
  x, y = _data(rows)
  got = metrics.srbench_split(x, y, seed=7, train_cap=cap, noise=noise)
  want = _srbench_recipe(x, y, 7, cap, noise)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)


def test_cap_draws_training_rows_only():
  x, y = _data(400)
  x_train, y_train, x_test, y_test = metrics.srbench_split(x, y, seed=1, train_cap=50)
  assert x_train.shape == (50, 3) and len(y_test) == 100
  _, _, clean_x_test, _ = metrics.srbench_split(x, y, seed=1, train_cap=None)
  np.testing.assert_array_equal(x_test, clean_x_test)
  test_rows = {row.tobytes() for row in x_test}
  assert not any(row.tobytes() in test_rows for row in x_train)


def test_noise_is_on_train_only_and_relative_to_rms():
  x, y = _data(40_000)
  clean = metrics.srbench_split(x, y, seed=2, train_cap=None)
  noisy = metrics.srbench_split(x, y, seed=2, train_cap=None, noise=0.1)
  np.testing.assert_array_equal(noisy[0], clean[0])
  np.testing.assert_array_equal(noisy[2], clean[2])
  np.testing.assert_array_equal(noisy[3], clean[3])
  residual = noisy[1] - clean[1]
  rms = np.sqrt(np.mean(clean[1] ** 2))
  assert np.std(residual) == pytest.approx(0.1 * rms, rel=0.03)
  assert abs(np.mean(residual)) < 0.1 * rms * 0.05
  again = metrics.srbench_split(x, y, seed=2, train_cap=None, noise=0.1)
  np.testing.assert_array_equal(again[1], noisy[1])


def test_split_rejects_bad_arguments():
  x, y = _data(10)
  with pytest.raises(ValueError, match="shape"):
    metrics.srbench_split(x, y[:5], seed=0)
  with pytest.raises(ValueError, match="train_size"):
    metrics.srbench_split(x, y, seed=0, train_size=1.5)
  with pytest.raises(ValueError, match="noise"):
    metrics.srbench_split(x, y, seed=0, noise=-1)


# ---------------------------------------------------------------------------------
# symbolic metrics


def test_model_size_counts_sympy_nodes():
  assert metrics.model_size("x + 1", ["x"]) == 3  # Add, 1, x
  assert metrics.model_size("2*sin(x)", ["x"]) == 4  # Mul, 2, sin, x
  assert metrics.model_size(sympy.Symbol("x") ** 2) == 3  # Pow, x, 2


def test_parse_expression_treats_columns_as_symbols():
  expr = metrics.parse_expression("I*gamma + beta", ["I", "gamma", "beta"])
  assert expr.free_symbols == {sympy.Symbol("I"), sympy.Symbol("gamma"),
                               sympy.Symbol("beta")}
  assert metrics.parse_expression("2*pi*r", ["r"]) == sympy.Float(
      metrics.SRBENCH_PI) * 2 * sympy.Symbol("r")
  assert metrics.parse_expression("2*pi*r", ["r"], keep_pi=True) == 2 * sympy.pi * \
      sympy.Symbol("r")
  with pytest.raises(ValueError, match="not among the features"):
    metrics.parse_expression("x + z", ["x"])
  for text in ("x +* ", "sin(x"):
    with pytest.raises(ValueError, match="cannot parse"):
      metrics.parse_expression(text, ["x"])


def test_round_floats_as_srbench():
  x = sympy.Symbol("x")
  rounded = metrics.round_floats(sympy.Float(2.0001) * x + sympy.Float(3e-5))
  assert rounded == sympy.Float(2.0, 3) * x


@pytest.mark.parametrize("model,formula,names,solved,reason", [
    ("x*2.0001", "2*x", ["x"], True, "difference is 0"),
    ("x + 1", "x", ["x"], True, "difference is constant"),
    ("sin(x)", "cos(x)", ["x"], False, "not equivalent"),
    ("0.5*x**2", "x**2", ["x"], True, "ratio is constant"),
    ("x**2 + 0.00001*x", "x**2", ["x"], True, "difference is 0"),  # tiny term dropped
    ("x + 0.01*x**2", "x", ["x"], False, "not equivalent"),
    ("2*x", "x**2", ["x"], False, "not equivalent"),
    ("0", "x", ["x"], False, "simplified model is 0"),
    ("cos(x)*cos(y)/sin(y)", "cot(y)*cos(x)", ["x", "y"], True, "difference is constant"),
    # pi in the formula becomes 3.1415926535; 0.0796 ~ 1/(4 pi) after rounding.
    ("0.0796*q/(epsilon*r**2)", "q/(4*pi*epsilon*r**2)", ["q", "epsilon", "r"], True,
     "ratio is constant"),
    ("I*gamma", "gamma*I", ["I", "gamma"], True, "difference is 0"),
])
def test_symbolic_solution_hand_worked_cases(model, formula, names, solved, reason):
  check = metrics.symbolic_solution(model, formula, names)
  assert check.solved == solved
  assert reason in check.reason


def test_symbolic_solution_gates_on_r2_like_srbench():
  check = metrics.symbolic_solution("2*x", "2*x", ["x"], r2_test=0.4)
  assert not check.solved and "not checked" in check.reason
  assert metrics.symbolic_solution("2*x", "2*x", ["x"], r2_test=0.9).solved


def test_symbolic_solution_skips_huge_models_quickly():
  model = " + ".join(f"{i + 1.5}*sin({i + 0.5}*x*exp(x/{i + 2.5}))" for i in range(30))
  start = time.perf_counter()
  check = metrics.symbolic_solution(model, "x", ["x"], max_nodes=100)
  assert time.perf_counter() - start < 2
  assert not check.solved and "max_nodes=100" in check.reason


def test_symbolic_solution_reports_unparsable_models():
  check = metrics.symbolic_solution("x +* 2", "x", ["x"])
  assert not check.solved and "cannot parse" in check.reason
