"""The evolutionary search: every offspring is a valid formula over the dataset's
features (property test), a planted formula one mutation away is found, the search
never returns worse than its seeds, and a seed gives the same result every time."""

import random
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sr_jax import compile_cache, expressions, inference, metrics, search, variation
from standardise import standardised


def _check(prefix, dim, max_length):
  expressions.validate(prefix)
  used = expressions.variables_used(prefix)
  assert not used or max(used) < dim
  assert len(prefix) <= max_length


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 31), dim=st.integers(1, 10),
       max_length=st.integers(12, 60))
def test_offspring_are_valid_formulas_over_the_features(seed, dim, max_length):
  config = variation.VariationConfig(max_length=max_length)
  v = variation.Variation(config, dim, random.Random(seed))
  parents = [v.random_formula() for _ in range(6)]
  parents = [p if len(p) <= max_length else ["add", 1.0, "mul", 2.0, "x_0"] for p in parents]
  for parent in parents:
    _check(parent, dim, max_length)
  for k in range(60):
    child = v.offspring(parents[k % 6], parents[(k + 1) % 6])
    _check(child, dim, max_length)


def test_each_mutation_changes_what_it_says():
  v = variation.Variation(variation.VariationConfig(), 3, random.Random(0))
  parent = ["add", 1.0, "mul", 2.0, "sin", "add", 0.5, "mul", 1.5, "x_0"]
  removed = v._remove_unary(parent)
  assert removed == ["add", 1.0, "mul", 2.0, "add", 0.5, "mul", 1.5, "x_0"]
  hoisted = v._hoist(parent)
  assert hoisted[:4:2] == ["add", "mul"] and hoisted[4] in ("mul", "sin", "add")
  inserted = v._insert_unary(parent)
  assert len(inserted) > len(parent)
  assert [t for t in v._constants(parent) if isinstance(t, str)] == [
      t for t in parent if isinstance(t, str)]
  assert v._remove_unary(["add", 1.0, "x_0"]) is None  # nothing to remove
  assert variation.subtree_end(parent, 0) == len(parent)
  assert variation.subtree_end(parent, 4) == len(parent)
  assert variation.subtree_end(parent, 1) == 2 and variation.subtree_end(parent, 3) == 4
  with pytest.raises(ValueError, match="ends inside"):
    variation.subtree_end(["add", "x_0"], 0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31), dim=st.integers(1, 4))
def test_reweighted_formulas_read_scaled_features(seed, dim):
  """f reweighted by factors, on x, equals f on x * factors (numpy evaluation), and the
  complexity the search prices is the length of the formula the user gets."""
  v = variation.Variation(variation.VariationConfig(), dim, random.Random(seed))
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.5, 2.0, (16, dim))
  factors = 2.0 ** rng.integers(-3, 4, dim)  # exact products: any difference is a bug
  for _ in range(5):
    prefix = v.offspring(v.random_formula(), v.random_formula())
    rescaled = search.reweighted(prefix, factors)
    expressions.validate(rescaled)
    with np.errstate(all="ignore"):
      np.testing.assert_allclose(expressions.evaluate(rescaled, x),
                                 expressions.evaluate(prefix, x * factors), rtol=1e-12)
    assert search.returned_complexity(prefix) == len(search.reweighted(prefix, factors))
  assert search.reweighted(["mul", 2.0, "x_0"], [3.0]) == ["mul", 6.0, "x_0"]
  assert search.reweighted(["sin", "x_0"], [3.0]) == ["sin", "mul", 3.0, "x_0"]
  # A product of powers under a coefficient folds into it: 2 * 3^2 / 4 = 4.5.
  monomial = ["mul", 2.0, "mul", "pow2", "x_0", "inv", "x_1"]
  assert search.reweighted(monomial, [3.0, 4.0]) == ["mul", 4.5] + monomial[2:]
  assert search.returned_complexity(monomial) == len(monomial)


@pytest.fixture(scope="module")
def planted():
  """y = x0*x1 + exp(x2), and a seed one mutation (exp -> sin) away, on the features as
  given (x0 near 3: standardised or not makes a difference). Refining the seed's
  constants alone does not get there (sin cannot become exp)."""
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (300, 3)) + [3.0, 0.0, 0.0]
  y = x[:, 0] * x[:, 1] + np.exp(x[:, 2])
  return x, y, PROPOSAL


PROPOSAL = ["add", 0.1, "add", "mul", "x_0", "x_1", "sin", "x_2"]


@pytest.mark.parametrize("islands", [1, pytest.param(2, marks=pytest.mark.xfail(
    strict=False, reason="machine-dependent: on an AMD EPYC (2026-12-02) two islands end "
    "at nmse 2.6e-4 (a polynomial stand-in for exp) at search seeds 0, 1 and 2"))])
def test_planted_formula_one_mutation_away_is_found(planted, islands):
  x, y, seed = planted
  dataset = search._Island(search._Points(x[:128], y[:128]), [seed], random.Random(3),
                           search.SearchConfig())
  refined_seed = search._evaluate([dataset], [dataset.start[:1]],
                                  search.SearchConfig(lm_iters=100))[0][0]
  assert refined_seed.nmse > 1e-6  # refinement alone cannot turn sin into exp
  # The regression seeds would hold y exactly (x0 * x1 and exp(x2) are library terms):
  # off, so that mutation has to find it.
  # One search seed is one trajectory: at 150 generations about half of them find it
  # (seeds 0-9: 5 with LAPACK's Cholesky in LM, 6 with refine.cholesky_solve; the
  # others stall at nmse 2.7e-4 or 5.6e-5, a polynomial stand-in for exp), so the
  # first of six seeds that finds it is checked. Which ones do depends on the CPU: on
  # an Intel Xeon with AMX (2026-12-05) seeds 3, 4 and 6 of 0-9, none of 0-2.
  for search_seed in range(6):
    config = search.SearchConfig(generations=150, seed=search_seed, islands=islands,
                                 regression_seeds=None)
    (result,) = search.run([[seed]], [x], [y], [7], config, None)
    if result.best.nmse < 1e-9:
      break
  assert result.best.nmse < 1e-9
  assert result.generations == 150
  prediction = expressions.evaluate(list(result.best.prefix), x)  # on the given features
  assert np.max(np.abs(prediction - y)) < 1e-3 * np.std(y)
  front = result.front
  assert [f.complexity for f in front] == sorted(f.complexity for f in front)
  assert all(a.nmse > b.nmse for a, b in zip(front, front[1:]))


@pytest.mark.parametrize("offspring,refined,screened", [(32, 32, False), (64, 16, True)])
def test_offspring_are_screened_only_when_some_are_left_out(planted, monkeypatch, offspring,
                                                            refined, screened):
  """Scoring every offspring before refining every one of them would be wasted work."""
  x, y, seed = planted
  calls = []
  score = search.selection.score
  monkeypatch.setattr(search.selection, "score",
                      lambda *args, **kwargs: calls.append(1) or score(*args, **kwargs))
  config = search.SearchConfig(generations=2, offspring=offspring, refined=refined)
  (result,) = search.run([[seed]], [x], [y], [3], config, None)
  assert bool(calls) == screened
  assert result.generations == 2 and np.isfinite(result.best.nmse)


@pytest.mark.parametrize("islands", [1, 2])
def test_search_is_never_worse_than_its_seeds_and_is_reproducible(planted, islands):
  x, y, seed = planted
  dataset = search._Island(search._Points(x[:128], y[:128]), [seed], random.Random(3),
                           search.SearchConfig())
  refined_seed = search._evaluate([dataset], [dataset.start[:1]], search.SearchConfig())[0][0]
  config = search.SearchConfig(generations=3, seed=2, islands=islands)
  first = search.run([[seed]], [x], [y], [3], config, None)[0]
  again = search.run([[seed]], [x], [y], [3], config, None)[0]
  assert first == again  # the same individuals, constants bit for bit
  assert first.best.nmse <= refined_seed.nmse
  assert min(f.nmse for f in first.front) <= refined_seed.nmse


def test_only_island_0_starts_from_the_seeds(planted, monkeypatch):
  """The other islands start from random formulas only, so the seeds cannot crowd out
  a search for another form there; population and offspring are split between the
  islands (equal work per dataset)."""
  x, y, seed = planted
  made = []
  island = search._Island
  monkeypatch.setattr(search, "_Island", lambda *args: made.append(island(*args)) or made[-1])
  config = search.SearchConfig(generations=2, islands=2)
  (result,) = search.run([[seed]], [x], [y], [3], config, None)
  first, second = made
  assert first.points is second.points  # one copy of the data, shared
  seeded = first.points.standardise(search.reweighted(seed, first.points.x_scale))
  assert first.start[0] == seeded and seeded not in second.start
  assert len(first.start) == len(second.start) == config.population // 2
  assert result.evaluated == config.population + 2 * config.offspring
  with pytest.raises(ValueError, match="islands"):
    search.SearchConfig(population=8, elite=4, islands=4)
  search.SearchConfig(islands=4)  # 16 per island: fine


def test_a_time_budget_stops_the_search(planted):
  x, y, seed = planted
  search.run([[seed]], [x], [y], [3], search.SearchConfig(generations=1), None)  # compile
  clock = compile_cache.Stopwatch()
  result = search.run([[seed]] * 2, [x] * 2, [y] * 2, [3, 4], search.SearchConfig(), 1.5)
  assert clock.seconds() < 3.0
  assert all(r.generations >= 1 for r in result)


def test_a_dataset_beyond_float32_range_is_searched_and_unscaled(planted):
  """y of order 1e60 overflows float32; the search fits standardised y, so it finds the
  planted formula there too and hands it back in the dataset's own units."""
  x, y, seed = planted
  # The regression seeds hold the law (x0 * x1 and exp(x2) are library terms): what
  # is tested is that its constants survive the scaling both ways.
  results = search.run([[seed], [seed]], [x, x], [y, y * 1e60], [0, 0],  # same stream
                       search.SearchConfig(generations=3), None)
  for result, target in zip(results, (y, y * 1e60)):
    assert result.best.nmse < 1e-9
    with np.errstate(all="ignore"):
      prediction = expressions.evaluate(list(result.best.prefix), x[:128])
    assert np.max(np.abs(prediction - target[:128])) < 1e-3 * np.std(target)


def test_a_dataset_with_nothing_finite_sits_the_search_out(planted, monkeypatch):
  """A dataset none of whose formulas evaluates finitely has no parents; it must not stop
  the search of the dataset beside it."""
  x, y, seed = planted
  monkeypatch.setattr(variation.Variation, "random_formula",
                      lambda self: ["add", 1.0, "mul", 1.0, "x_0"])
  broken = np.full_like(x, np.nan)
  results = search.run([[seed], [seed]], [x, broken], [y, y], [3, 4],
                       search.SearchConfig(generations=2), None)
  assert results[0].best is not None and results[0].generations == 2
  assert results[1].best is None and results[1].front == ()
  # Each dataset counts its own formulas: its start, then `offspring` per generation
  # while it has parents.
  config = search.SearchConfig()
  assert results[0].evaluated == config.population + 2 * config.offspring
  assert results[1].evaluated == config.population


def test_compilation_is_left_out_of_the_time_budget(planted, monkeypatch):
  """A generation that spends 0.4 s compiling still fits a 0.3 s budget: compilation is
  a one-time cost, and counting it would starve the first fit of every process."""
  x, y, seed = planted
  compiling = [0.0]
  evaluate = search._evaluate

  def evaluate_after_compiling(*args):
    time.sleep(0.4)
    compiling[0] += 0.4
    return evaluate(*args)

  monkeypatch.setattr(search, "_evaluate", evaluate_after_compiling)
  monkeypatch.setattr(compile_cache, "compile_seconds", lambda: compiling[0])
  # Without regression seeds: their one-time cost is not what is tested here.
  result = search.run([[seed]], [x], [y], [3], search.SearchConfig(regression_seeds=None),
                      0.3)[0]
  assert result.generations >= 1


def test_compile_seconds_counts_new_programs():
  before = compile_cache.compile_seconds()
  jax.jit(lambda v: jnp.cos(v) * 3.25 + 0.5)(jnp.arange(7.0)).block_until_ready()
  assert compile_cache.compile_seconds() > before


def test_pipeline_search_adds_a_pareto_front(planted):
  """Through inference.run: the search's formulas enter the pool refined, the front is
  complexity-sorted with falling error, and the best is on it."""
  x, y, _ = planted
  config = inference.InferenceConfig(search=search.SearchConfig(generations=150, seed=0))
  output = inference.run(None, [(x, y)], config, propose=lambda bags: [
      [standardised(PROPOSAL, x.mean(0), x.std(0))] for _ in bags])
  result = output.results[0]
  assert result.best.r2 > 0.999999 and result.best.source == "search"
  assert output.seconds["search"] > 0
  complexities = [c.complexity for c in result.front]
  assert complexities == sorted(complexities)
  assert all(a.mse > b.mse for a, b in zip(result.front, result.front[1:]))
  assert result.best in result.front
  assert any("search: 150 generations" in n for n in result.notes)
  for candidate in result.candidates:
    assert candidate.complexity == len(candidate.prefix)
  assert metrics.r2(y, result.predict(x)) > 0.999999
