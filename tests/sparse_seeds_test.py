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
                                          sparse_seeds.polynomial_library,
                                          sparse_seeds.monomial_library])
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


def test_monomials_use_as_many_factors_as_the_column_budget_allows():
  """C(D, k) 4^k products of k features: 4 factors for 6 features (5,384 columns), 3
  for 9 (5,988), 2 for 10 (760), under the default budget of 6,000."""
  rng = np.random.default_rng(0)
  for features, count, factors in ((6, 5384, 4), (9, 5988, 3), (10, 760, 2)):
    terms, columns = sparse_seeds.monomial_library(rng.uniform(0.5, 2.0, (20, features)))
    assert len(terms) == columns.shape[1] == count
    assert max(term.count("mul") + 1 for term in terms) == factors
  x = rng.uniform(0.5, 2.0, (20, 3))
  x[4, 1] = 0.0  # 1 / x_1 is not finite there: no term divides by x_1
  terms, _ = sparse_seeds.monomial_library(x)
  assert ["x_1"] in terms and ["inv", "x_1"] not in terms
  # All 12 + 48 + 64 products but those with x_1 to -1 or -2: 2 alone, 2 x 8 in pairs,
  # 32 in the triple.
  assert len(terms) == 124 - (2 + 2 * 8 + 32)
  with np.errstate(all="ignore"):
    assert all(np.all(np.isfinite(expressions.evaluate(term, x))) for term in terms)


def test_each_gain_is_the_drop_in_residual_that_adding_the_column_gives():
  """The closed-form gains (no N x L orthogonalisation) against refitting with numpy's
  least squares for every column."""
  rng = np.random.default_rng(3)
  columns = rng.normal(size=(40, 12))
  columns[:, 5] = columns[:, 0] - 2 * columns[:, 1]  # in the span of a subset below
  target = rng.normal(size=40)
  regression = sparse_seeds._Regression(columns, target)
  subset = regression.fit((0, 1, 7))
  gains, _ = regression.gains(subset)

  def rss(chosen):
    design = np.column_stack([np.ones(40), columns[:, chosen]])
    residual = target - design @ np.linalg.lstsq(design, target, rcond=None)[0]
    return residual @ residual

  np.testing.assert_allclose(subset[0], rss([0, 1, 7]), rtol=1e-10)
  for j in range(12):
    if j in (0, 1, 7, 5):  # chosen, or adds nothing new
      assert gains[j] == -1.0
    else:
      np.testing.assert_allclose(gains[j], rss([0, 1, 7]) - rss([0, 1, 7, j]), rtol=1e-8)


def test_a_sum_of_physics_monomials_comes_back_exact():
  """Weinberg's 15.2.1 (Feynman test_18), rho = 3 / (8 pi G) (c^2 k / r^2 + H^2): two
  products of four and two features, out of reach of the other libraries."""
  rng = np.random.default_rng(4)
  law = lambda x: 3 / (8 * np.pi * x[:, 0]) * (x[:, 4]**2 * x[:, 1] / x[:, 2]**2 + x[:, 3]**2)
  x, fresh = rng.uniform(1.0, 5.0, (128, 5)), rng.uniform(1.0, 5.0, (200, 5))
  assert _best_error(sparse_seeds.seeds(x, law(x)), fresh, law(fresh)) < 1e-6
  no_monomials = sparse_seeds.SparseSeedConfig(max_factors=1)
  assert _best_error(sparse_seeds.seeds(x, law(x), no_monomials), fresh, law(fresh)) > 1e-3


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
