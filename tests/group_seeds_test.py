"""Group seeds: planted laws c prod x^a g(s m)^p come back in their own form (numpy
evaluation of the returned formula on points it was not fitted on is the oracle),
monomials and powers are the formulas they claim to be, bad data gives no seeds."""

import itertools

import numpy as np
import pytest

from sr_jax import expressions, group_seeds, refine, search, sparse_seeds


def _best(found, x, y):
  """(relative max error, prefix) of the found formula closest to y on fresh points,
  after the best affine map (the search fits one at the top of every formula)."""
  best = (np.inf, None)
  for prefix in found:
    expressions.validate(prefix)
    with np.errstate(all="ignore"):
      prediction = expressions.evaluate(prefix, x)
    if not np.all(np.isfinite(prediction)):
      continue
    design = np.column_stack([np.ones(len(y)), prediction])
    fitted = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    best = min(best, (np.max(np.abs(fitted - y)) / np.max(np.abs(y - np.median(y))),
                      prefix), key=lambda b: b[0])
  return best


@pytest.mark.parametrize("law, function", [
    # n0 exp(-m g x / (k T)) (Feynman I.40.1): exp needs no grid
    (lambda x: x[:, 0] * np.exp(-x[:, 1] * x[:, 2] / (x[:, 3] * x[:, 4])), "exp"),
    # a Gaussian over sigma (I.6.2)
    (lambda x: np.exp(-0.5 * (x[:, 0] / x[:, 1]) ** 2) / x[:, 1], "exp"),
    # m0 / sqrt(1 - v^2 / c^2) (I.10.7), v < c
    (lambda x: x[:, 0] / np.sqrt(1 - (x[:, 1] / (3 * x[:, 2])) ** 2), "sqrt"),
    # h w / (exp(h w / (k T)) - 1) / (2 pi) (III.4.33)
    (lambda x: x[:, 0] * x[:, 1] / (np.exp(x[:, 0] * x[:, 1] / (2 * np.pi * x[:, 2]
                                                                * x[:, 3])) - 1),
     "exp"),
    # n0 / (exp(u) + exp(-u)) (II.35.18)
    (lambda x: x[:, 0] / (np.exp(x[:, 1] / x[:, 2]) + np.exp(-x[:, 1] / x[:, 2])), "exp"),
    # p cos(theta) / r^2 (II.6.11): sin and cos at a scale off the grid
    (lambda x: x[:, 0] * np.cos(1.3 * x[:, 1]) / x[:, 2] ** 2, "cos"),
    # sigma / (1 + chi) (II.10.9)
    (lambda x: x[:, 0] / (1 + 0.7 * x[:, 1]), "inv"),
])
def test_planted_laws_come_back_in_their_form(law, function):
  rng = np.random.default_rng(0)
  x = rng.uniform(1.0, 3.0, (128, 5))
  fresh = rng.uniform(1.0, 3.0, (300, 5))
  found = group_seeds.seeds(x, law(x))
  assert 0 < len(found) <= 4
  error, prefix = _best(found, fresh, law(fresh))
  assert error < 1e-5, (error, prefix)
  assert function in prefix
  # No more than the law's own features: the power law reads none it does not need.
  assert len(expressions.variables_used(prefix)) <= 5


@pytest.mark.parametrize("y", [
    np.array([1.0, 0.0, 2.0, 3.0]),  # a zero: no logs
    np.array([1.0, np.nan, 2.0, 3.0]),
    np.array([2.0, 2.0, 2.0, 2.0]),  # constant
])
def test_data_without_logs_gives_no_seeds(y):
  x = np.arange(1.0, 5.0)[:, None] * np.ones((1, 2))
  assert group_seeds.seeds(x, y) == []


def test_count_limits_the_seeds():
  rng = np.random.default_rng(0)
  x = rng.uniform(1.0, 3.0, (64, 2))
  y = x[:, 0] * np.exp(-x[:, 1])
  assert len(group_seeds.seeds(x, y, count=2)) == 2
  assert group_seeds.seeds(x, y, count=0) == []


@pytest.mark.parametrize("exponent", [1, 2, 3, 0.5, -1, -2, -3, -0.5, 1.5, -2.5])
def test_power_of_is_the_power(exponent):
  x = np.linspace(0.5, 3.0, 11)[:, None]
  prefix = group_seeds.power_of(["add", 1.0, "x_0"], exponent)
  np.testing.assert_allclose(expressions.evaluate(prefix, x), (1 + x[:, 0]) ** exponent,
                             rtol=1e-12)


def test_monomials_are_their_products_and_skip_what_is_not_finite():
  rng = np.random.default_rng(0)
  x = rng.uniform(0.5, 2.0, (40, 4))
  x[3, 2] = 0.0  # 1 / x_2 is not finite
  terms, values = group_seeds.monomials(x, [0, 1, 2, 3], max_count=10_000, wide_factors=2)
  for k, term in enumerate(terms):
    np.testing.assert_allclose(expressions.evaluate(term, x), values[:, k], rtol=1e-12)
  # Every product of 1-2 features to -2, -1, 1, 2 and of 3-4 to -1, 1, less those
  # that divide by x_2.
  expected = 0
  for k in range(1, 5):
    powers = (-2, -1, 1, 2) if k <= 2 else (-1, 1)
    for chosen in itertools.combinations(range(4), k):
      for exponents in itertools.product(powers, repeat=k):
        expected += not (2 in chosen and exponents[chosen.index(2)] < 0)
  assert len(terms) == expected
  assert len(group_seeds.monomials(x, [0, 1, 2, 3], max_count=7)[0]) <= 7
  assert all(len(expressions.variables_used(t)) <= 2
             for t in group_seeds.monomials(x, [0, 1, 2, 3], 10_000, max_factors=2)[0])


def test_sparse_seeds_take_group_seeds_as_a_kind():
  rng = np.random.default_rng(0)
  x = rng.uniform(1.0, 3.0, (128, 3))
  y = x[:, 0] * np.exp(-x[:, 1] * x[:, 2])
  with_groups = sparse_seeds.seeds(x, y)
  without = sparse_seeds.seeds(x, y, sparse_seeds.SparseSeedConfig(group_seeds=0))
  assert len(with_groups) > len(without)
  fresh = rng.uniform(1.0, 3.0, (100, 3))
  fresh_y = fresh[:, 0] * np.exp(-fresh[:, 1] * fresh[:, 2])
  assert _best(with_groups, fresh, fresh_y)[0] < 1e-6
  assert _best(without, fresh, fresh_y)[0] > 1e-3  # no other kind writes this law


def test_the_search_starts_from_the_law():
  """Through the search (features rescaled, y standardised, a 4-iteration LM per
  formula): n0 exp(-m g x / (k T)) is held after the start's evaluation, where
  without group seeds it is not."""
  rng = np.random.default_rng(0)
  x = rng.uniform(1.0, 5.0, (200, 5))
  y = x[:, 0] * np.exp(-x[:, 1] * x[:, 2] / (x[:, 3] * x[:, 4]))
  results = {}
  for count in (4, 0):
    config = search.SearchConfig(generations=1, regression_seeds=sparse_seeds.SparseSeedConfig(
        group_seeds=count))
    results[count] = search.run([[]], [x], [y], [0], config, None)[0]
  assert results[4].best.nmse < 1e-12
  fresh = rng.uniform(1.0, 5.0, (100, 5))
  fresh_y = fresh[:, 0] * np.exp(-fresh[:, 1] * fresh[:, 2] / (fresh[:, 3] * fresh[:, 4]))
  prediction = expressions.evaluate(list(results[4].best.prefix), fresh)
  np.testing.assert_allclose(prediction, fresh_y, atol=1e-6 * np.max(np.abs(fresh_y)))
  assert results[0].best.nmse > 1e-6


def test_a_law_that_does_not_fit_is_not_a_seed():
  """y without any such law (noise, positive so that logs apply) gives no seed: one
  that fits it only roughly would take a place in the search's start."""
  rng = np.random.default_rng(0)
  x = rng.uniform(1.0, 3.0, (128, 3))
  assert group_seeds.seeds(x, rng.uniform(1.0, 2.0, 128)) == []


def test_noise_in_y_still_gives_the_law():
  """SRBench's noise 0.1 (N(0, 0.1 RMS(y)) added to y): the fit on logs, weighted by
  y^2, still writes x0 cos(s x1) / x2^2 (unweighted, the points near y = 0, where the
  noise decides log|y|, pull it elsewhere), with constants the search's refinement
  then fits: refined on clean points, R2 > 0.9999 there."""
  rng = np.random.default_rng(0)
  law = lambda x: x[:, 0] * np.cos(1.3 * x[:, 1]) / x[:, 2] ** 2
  x = rng.uniform(1.0, 3.0, (128, 3))
  y = law(x) + rng.normal(0, 0.1 * np.sqrt(np.mean(law(x) ** 2)), 128)
  found = group_seeds.seeds(x, y)
  fresh = rng.uniform(1.0, 3.0, (300, 3))
  refined = refine.refine([["add", 0.0] + prefix for prefix in found],
                          [fresh] * len(found), [law(fresh)] * len(found))
  assert np.nanmax(refined.r2) > 0.9999


@pytest.mark.parametrize("scale", [1e-300, 1e300])
def test_y_of_any_finite_size(scale):
  """Fitted to y / max|y|: squares of y near float64's limits do not overflow."""
  rng = np.random.default_rng(0)
  x = rng.uniform(1.0, 3.0, (64, 2))
  y = scale * x[:, 0] * np.exp(-x[:, 1])
  with np.errstate(all="raise"):
    found = group_seeds.seeds(x, y)
  np.testing.assert_allclose(expressions.evaluate(found[0], x), y, rtol=1e-9)
