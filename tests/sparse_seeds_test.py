"""Regression seeds: the library's terms are the formulas they claim to be, and planted
sums, ratios and power laws come back exact (numpy evaluation of the returned formulas
on points they were not fitted on is the oracle); bad data gives no seeds."""

import numpy as np
import pytest

from sr_jax import expressions, search, sparse_seeds


def _best_error(found, x, y):
  """The smallest relative max error of the found formulas on (x, y)."""
  errors = []
  for prefix in found:
    expressions.validate(prefix)
    with np.errstate(all="ignore"):
      prediction = expressions.evaluate(prefix, x)
    errors.append(np.max(np.abs(prediction - y)) / np.max(np.abs(y - np.median(y))))
  return np.nanmin(errors)


@pytest.mark.parametrize("make_library", [sparse_seeds.library,
                                          sparse_seeds.polynomial_library])
def test_library_terms_evaluate_to_their_columns(make_library):
  rng = np.random.default_rng(0)
  x = rng.uniform(0.5, 2.0, (50, 3))
  terms, columns = make_library(x)
  assert len(terms) == columns.shape[1] >= 19  # 3 + 6 + 10 monomials up to degree 3
  for k, term in enumerate(terms):
    np.testing.assert_allclose(expressions.evaluate(term, x), columns[:, k], rtol=1e-12)


def test_terms_that_do_not_apply_are_left_out():
  """log and sqrt of a feature that goes negative, 1/x of one that is 0, exp where it
  overflows, anything of a constant feature."""
  rng = np.random.default_rng(0)
  x = rng.uniform(0.5, 2.0, (50, 4))
  x[0, 0], x[1, 1], x[2, 2], x[:, 3] = -1.0, 0.0, 1000.0, 2.0
  terms, _ = sparse_seeds.library(x)
  assert ["log", "x_0"] not in terms and ["sqrt", "x_0"] not in terms
  assert ["inv", "x_1"] not in terms and ["exp", "x_2"] not in terms
  assert ["x_0"] in terms and ["inv", "x_0"] in terms
  assert not any("x_3" in term for term in terms)


@pytest.mark.parametrize("law", [
    lambda x: 3 * x[:, 0] - 2 * x[:, 0] * x[:, 1] - x[:, 0] ** 2,  # Lotka-Volterra
    lambda x: 0.5 * np.sin(x[:, 0] - x[:, 1]) - np.sin(x[:, 0]),  # bar magnets
    lambda x: x[:, 0] - np.cos(x[:, 1]) / x[:, 0],  # glider
    lambda x: 20 - x[:, 0] - x[:, 0] * x[:, 1] / (1 + 0.5 * x[:, 0] ** 2),  # ratio
    lambda x: 2.5 * x[:, 0] ** 2 * x[:, 2] / np.sqrt(x[:, 1]),  # power law
])
def test_planted_laws_come_back_exact(law):
  rng = np.random.default_rng(1)
  x = rng.uniform(0.5, 3.0, (128, 3))
  fresh = rng.uniform(0.5, 3.0, (200, 3))
  found = sparse_seeds.seeds(x, law(x))
  assert found
  assert _best_error(found, fresh, law(fresh)) < 1e-6
  for prefix in found:
    assert max(expressions.variables_used(prefix)) < 3


def test_y_of_any_finite_size_is_regressed():
  """y * term overflows float64 for |y| near 1e200 unless y is standardised first."""
  rng = np.random.default_rng(2)
  x = rng.uniform(0.5, 3.0, (128, 2))
  law = lambda x: 1e200 * (3 * x[:, 0] - 2 * x[:, 0] * x[:, 1] - x[:, 0] ** 2)
  fresh = rng.uniform(0.5, 3.0, (200, 2))
  assert _best_error(sparse_seeds.seeds(x, law(x)), fresh, law(fresh)) < 1e-6


def test_bad_data_gives_no_seeds():
  x = np.ones((20, 2)) * np.arange(20)[:, None]
  assert sparse_seeds.seeds(x, np.full(20, 3.0)) == []  # constant y
  y = x[:, 0].copy()
  y[3] = np.nan
  assert sparse_seeds.seeds(x, y) == []
  assert sparse_seeds.seeds(x[:1], y[:1]) == []
  assert sparse_seeds.seeds(x, y[:5]) == []  # lengths differ
  with pytest.raises(ValueError, match="positive"):
    sparse_seeds.SparseSeedConfig(beam=0)


def test_the_search_starts_island_1_from_the_regression_seeds():
  """y = x0 * x1 + exp(x2) is a sum of two library terms: the search holds it after
  its start alone, where without these seeds it does not."""
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (300, 3)) + [3.0, 0.0, 0.0]
  y = x[:, 0] * x[:, 1] + np.exp(x[:, 2])
  proposal = ["add", 0.1, "add", "mul", "x_0", "x_1", "sin", "x_2"]
  found = search.run([[proposal]], [x], [y], [0], search.SearchConfig(generations=1),
                     None)[0]
  assert found.best.nmse < 1e-12
  without = search.run([[proposal]], [x], [y], [0],
                       search.SearchConfig(generations=1, regression_seeds=None), None)[0]
  assert without.best.nmse > 1e-6
