"""The inference pipeline: a known formula proposed with perturbed constants is recovered
through the real scaling, scoring, de-duplication, refinement and selection; the scaling
round trip is exact; bad inputs and bad candidates are named, never hang."""

import dataclasses
import threading

import jax
import numpy as np
import pytest
from flax import nnx

from sr_jax import expressions, generator, inference, refine, selection, tidy
from sr_jax.model import Transformer, model_config
from standardise import standardised


def _perturb(prefix, rng):
  return [t if isinstance(t, str) else float(t * np.exp(0.3 * rng.normal()) + 0.1 * rng.normal())
          for t in prefix]


def _view(x, view):
  """(centre, scale, columns, y_sign) of a view, written out with numpy: view column k
  shows (x[:, columns[k]] - centre[k]) / scale[k], and y is shown times y_sign."""
  zeros, order = np.zeros(x.shape[1]), np.arange(x.shape[1])
  backwards = order[::-1]
  return {"standardised": (x.mean(0), x.std(0), order, 1),
          "scaled": (zeros, np.sqrt(np.mean(x ** 2, axis=0)), order, 1),
          "raw": (zeros, zeros + 1, order, 1),
          "mirrored": (x.mean(0), -x.std(0), order, 1),
          "reversed": (x.mean(0)[backwards], x.std(0)[backwards], backwards, 1),
          "negated": (x.mean(0), x.std(0), order, -1)}[view]


def _oracle_proposer(truths, datasets, seed=0):
  """A stand-in for the model: for each bag, the true formula (rewritten for the X the
  pipeline gives it, in the bag's view) with perturbed constants, plus junk."""
  rng = np.random.default_rng(seed)

  def propose(bags):
    out = []
    for i, u, _, view in bags:
      x = datasets[i][0]
      centre, scale, columns, y_sign = _view(x, view)
      true_u = standardised(truths[i], centre, scale, columns)
      true_u = true_u if y_sign > 0 else ["mul", -1.0, *true_u]  # a formula for -y
      out.append([_perturb(true_u, rng), None, ["x_0"], ["mul", 2.0, "x_0"]])
    return out
  return propose


def test_known_formulas_are_recovered_through_the_whole_pipeline():
  config = generator.GeneratorConfig(max_input_dimension=3)
  truths, datasets, fresh = [], [], []
  index = 0
  while len(truths) < 6:
    sample = generator.generate(config, 7, index, test=True)
    index += 1
    if sample.num_constants > 8:
      continue
    truths.append(list(sample.prefix))
    datasets.append((sample.x, sample.y))
    fresh.append(sample.predictions[0])  # sigma = 1: new points from the same law
  output = inference.run(None, datasets, inference.InferenceConfig(seed=1),
                         propose=_oracle_proposer(truths, datasets))
  assert set(output.seconds) == set(inference.STAGES)
  recovered = 0
  for result, (x, y), (_, x_new, y_new) in zip(output.results, datasets, fresh):
    best = result.best
    assert best.refined
    assert result.num_invalid == result.num_decoded // 4  # the None candidates
    np.testing.assert_allclose(best.r2, 1 - np.mean((result.predict(x) - y)**2) / np.var(y),
                               rtol=1e-6, atol=1e-9)
    recovered += best.r2 > 0.999 and 1 - np.mean((result.predict(x_new) - y_new)**2) / np.var(
        y_new) > 0.99
    scores = [c.score for c in result.candidates]
    assert scores == sorted(scores, reverse=True)
  assert recovered >= 5


def test_every_bag_is_shown_in_every_view():
  """Each bag of rows is shown in each view, view column k written (x[:, columns[k]] -
  centre[k]) / scale[k] over the whole dataset (reversed: the features backwards), and
  y as is or negated."""
  rng = np.random.default_rng(6)
  datasets = [(rng.uniform(1, 5, size=(n, 2)), rng.normal(size=n)) for n in (150, 900)]
  seen = []

  def propose(bags):
    seen.extend(bags)
    return [[] for _ in bags]
  # No residual round: the constant left in the pool would send every bag again.
  config = inference.InferenceConfig(views=inference.VIEWS, max_bags=4, residual_rounds=0)
  output = inference.run(None, datasets, config, propose=propose)
  assert [(i, view) for i, _, _, view in seen] == [
      (i, view) for i, bags in ((0, 1), (1, 4)) for _ in range(bags) for view in config.views]
  per_bag = len(config.views)
  for k, (i, u, y, view) in enumerate(seen):
    x, y_all = datasets[i]
    centre, scale, columns, y_sign = _view(x, view)
    rows = [np.flatnonzero(y_all == y_sign * value)[0] for value in y]  # the bag's rows
    np.testing.assert_allclose(u, (x[rows][:, columns] - centre) / scale, rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_array_equal(y_sign * y, seen[k - k % per_bag][2])  # the same rows
  assert len(seen[per_bag][2]) == 200
  assert len({tuple(b[2]) for b in seen[per_bag:] if b[3] != "negated"}) == 4
  assert [r.num_decoded for r in output.results] == [0, 0]
  with pytest.raises(ValueError, match="views must be distinct"):
    inference.InferenceConfig(views=("raw", "raw"))
  with pytest.raises(ValueError, match="views must be distinct"):
    inference.InferenceConfig(views=("whitened",))


def test_a_formula_is_scored_refined_and_unscaled_in_its_own_view():
  """y = 2 x on x in [1, 5]: mul(c, x_0) fits exactly as given and divided by the
  RMS, not standardised (c z misses the offset). The same skeleton from two views is
  two functions: both are kept, and the one picked predicts y from the raw X."""
  x = np.linspace(1, 5, 120)[:, None]
  y = 2 * x[:, 0]
  propose = lambda bags: [[["mul", 1.0, "x_0"]] for _ in bags]
  # Without residual rounds: one would add the offset c z misses.
  alone = inference.run(None, [(x, y)], inference.InferenceConfig(views=("standardised",),
                                                                  residual_rounds=0),
                        propose=propose).results[0]
  assert alone.best.r2 < 0.99
  for view in ("scaled", "raw"):
    both = inference.run(None, [(x, y)],
                         inference.InferenceConfig(views=("standardised", view)),
                         propose=propose).results[0]
    assert both.best.r2 > 1 - 1e-9 and both.num_duplicates == 0
    np.testing.assert_allclose(both.predict(x), y, rtol=1e-6)
    assert any(c.r2 == pytest.approx(alone.best.r2) for c in both.candidates)


def test_a_mirrored_formula_is_unscaled_with_its_signs():
  """y = exp(-z), z the standardised x: the constant-free exp(x_0) is exact only in the
  mirrored view (x_0 = -z), and its unscaled form predicts y from the raw X."""
  x = np.linspace(-2, 7, 90)[:, None]
  y = np.exp(-(x[:, 0] - x.mean()) / x.std())
  propose = lambda bags: [[["exp", "x_0"]] for _ in bags]
  for views, fits in ((("standardised", "scaled"), False), (("standardised", "mirrored"), True)):
    result = inference.run(None, [(x, y)], inference.InferenceConfig(views=views),
                           propose=propose).results[0]
    assert (result.best.r2 > 1 - 1e-9) == fits
  np.testing.assert_allclose(result.predict(x), y, rtol=1e-9)


def test_a_reversed_formula_reads_the_features_backwards():
  """y = z_0 - 3 z_1 ** 2 on three features (z standardised): in the reversed view, where
  x_0 shows the last feature, the constant-free x_2 - 3 x_1 ** 2 is wrong, and the
  formula that reads z_0 as x_2 and z_1 as x_1 is exact; unscaled, it predicts y from
  the raw X. A law of the last feature alone becomes one of x_0."""
  rng = np.random.default_rng(4)
  x = rng.uniform(-1, 3, size=(150, 3)) * [1.0, 2.0, 0.5]
  z = (x - x.mean(0)) / x.std(0)
  y = z[:, 0] - 3 * z[:, 1] ** 2
  as_given = ["add", "x_0", "mul", -3.0, "pow2", "x_1"]
  backwards = ["add", "x_2", "mul", -3.0, "pow2", "x_1"]
  for formula, view, fits in ((as_given, "standardised", True), (as_given, "reversed", False),
                              (backwards, "reversed", True), (backwards, "standardised", False)):
    config = inference.InferenceConfig(views=(view,), num_refine=0, tidy=None,
                                       selection="r2")
    result = inference.run(None, [(x, y)], config,
                           propose=lambda bags: [[formula] for _ in bags]).results[0]
    assert (result.best.r2 > 1 - 1e-9) == fits, (formula, view)
    if fits:
      np.testing.assert_allclose(result.predict(x), y, rtol=1e-9, atol=1e-9)
  last = inference.run(None, [(x, np.sin(z[:, 2]))],
                       inference.InferenceConfig(views=("reversed",), tidy=None),
                       propose=lambda bags: [[["sin", "x_0"]] for _ in bags]).results[0]
  assert last.best.r2 > 1 - 1e-9


def test_a_negated_formula_is_read_as_minus_itself():
  """The negated view shows -y: exp(x_0) written there is y = -exp(z), exact with no
  constant to refine, and predicts y from the raw X; in the standardised view it is
  the wrong sign."""
  x = np.linspace(-2, 7, 90)[:, None]
  y = -np.exp((x[:, 0] - x.mean()) / x.std())
  seen_y = []

  def propose(bags):
    seen_y.extend(b[2] for b in bags)
    return [[["exp", "x_0"]] for _ in bags]
  for view, fits in (("standardised", False), ("negated", True)):
    config = inference.InferenceConfig(views=(view,), num_refine=0, selection="r2",
                                       residual_rounds=0)
    result = inference.run(None, [(x, y)], config, propose=propose).results[0]
    assert (result.best.r2 > 1 - 1e-9) == fits
  np.testing.assert_allclose(result.predict(x), y, rtol=1e-9)
  np.testing.assert_array_equal(np.sort(seen_y[1]), np.sort(-y))


def test_candidates_are_scored_only_in_the_views_decoded_and_raw(monkeypatch):
  """The scoring frames of one decoded view are that view's and the raw X of each
  dataset (the search and tidying read raw X): no frame is padded and uploaded for a
  view nobody decoded in."""
  rng = np.random.default_rng(3)
  datasets = [(rng.uniform(1, 5, size=(n, 2)), rng.normal(size=n)) for n in (60, 90)]
  laid_out, score = [], selection.score

  def recording_score(prefixes, frame_of, xs, ys, **kwargs):
    laid_out.append(xs)
    return score(prefixes, frame_of, xs, ys, **kwargs)
  monkeypatch.setattr(selection, "score", recording_score)
  propose = lambda bags: [[["mul", 1.0, "x_0"]] for _ in bags]
  config = inference.InferenceConfig(views=("mirrored",), tidy=None)
  inference.run(None, datasets, config, propose=propose)
  xs = laid_out[0]
  assert len(xs) == 4
  for k, view in enumerate(("mirrored", "raw")):
    for i, (x, _) in enumerate(datasets):
      centre, scale, _, _ = _view(x, view)
      u = xs[k * 2 + i]
      rows = [np.flatnonzero(np.isclose(x[:, 0], value))[0] for value in u[:, 0] * scale[0]
              + centre[0]]
      np.testing.assert_allclose(u, (x[rows] - centre) / scale, rtol=1e-10)
      assert len(rows) == len(x)


def test_screening_ranks_the_best_per_view_on_all_points():
  """On 3,000 points, 31 distinct proposals are screened on 500: the best 4 go on, and
  every candidate reported is scored on all 3,000 (numpy's MSE of its prediction). The
  truth is found as without screening."""
  rng = np.random.default_rng(8)
  x = rng.uniform(-2, 2, size=(3_000, 1))
  y = 1.5 * np.sin(x[:, 0]) + 0.3 * x[:, 0] + 0.01 * rng.normal(size=3_000)
  unary = ("abs", "exp", "cos", "tan", "arctan", "pow2", "pow3", "inv", "sqrt", "log")
  proposals = [[outer, 0.7, inner, "x_0"] for outer in ("add", "mul", "sub")
               for inner in unary]  # 30 skeletons, all wrong
  proposals.append(["add", "mul", 1.2, "sin", "x_0", "mul", 0.5, "x_0"])  # the truth's
  propose = lambda bags: [proposals for _ in bags]
  base = dict(views=("raw",), max_bags=1, num_refine=2, tidy=None, simplify=False)
  screened = inference.run(None, [(x, y)], inference.InferenceConfig(
      screen_points=500, screen_keep=4, **base), propose=propose).results[0]
  unscreened = inference.run(None, [(x, y)], inference.InferenceConfig(
      screen_points=0, **base), propose=propose).results[0]
  for k, c in enumerate(screened.candidates):
    mse = np.mean((screened.predict(x, k) - y) ** 2)
    assert c.mse == pytest.approx(mse, rel=1e-9), c
  unrefined = [c for c in screened.candidates if c.source == "model" and not c.refined]
  assert len(unrefined) == 4
  assert len([c for c in unscreened.candidates if c.source == "model" and not c.refined]) > 20
  assert any("screened on a random 500 points" in note for note in screened.notes)
  assert screened.best.r2 > 0.999
  np.testing.assert_allclose(screened.predict(x), unscreened.predict(x), rtol=1e-9)
  for bad in (dict(screen_keep=0), dict(screen_points=-1), dict(decode_batch=-1)):
    with pytest.raises(ValueError, match="sizes must be positive"):
      inference.InferenceConfig(**bad)


def test_decoding_calls_are_small_on_a_cpu_and_full_on_an_accelerator(monkeypatch):
  """decode_batch 0 (the default) picks by the backend JAX runs on."""
  assert inference.InferenceConfig().decode_batch == 0
  assert jax.default_backend() == "cpu" and inference.default_decode_batch() == 8
  monkeypatch.setattr(inference.jax, "default_backend", lambda: "gpu")
  assert inference.default_decode_batch() == 64


def test_adding_a_view_only_adds_candidates(monkeypatch):
  """A bag's samples in a view do not depend on the other views decoded: the
  standardised view decodes the same candidates alone and beside the scaled one."""
  model = Transformer(model_config("debug", max_target_len=32), rngs=nnx.Rngs(2))
  rng = np.random.default_rng(8)
  datasets = [(rng.uniform(1, 3, size=(n, 2)), rng.normal(size=n)) for n in (60, 300)]
  decoded = []
  finish = inference._finish_group
  monkeypatch.setattr(inference, "_finish_group", lambda prepared, owners, proposals, *a:
                      decoded.append(list(zip(owners, proposals))) or
                      finish(prepared, owners, proposals, *a))
  for views in (("standardised",), ("standardised", "scaled")):
    inference.run(model, datasets, inference.InferenceConfig(
        num_candidates=4, max_len=16, num_refine=1, max_bags=2, decode_batch=4, views=views,
        residual_rounds=0))
  alone, both = decoded
  assert len(both) == 2 * len(alone)
  assert [p for (_, view), p in both if view == "standardised"] == [p for _, p in alone]
  assert [p for (_, view), p in both if view == "scaled"] != [p for _, p in alone]


def test_each_view_gets_its_own_refinements():
  """K = 1 refinement per view: the standardised view's candidates, closer before
  refinement, do not take the scaled view's slot, whose monomial then fits x0 * x1."""
  rng = np.random.default_rng(7)
  x = rng.uniform(1, 5, size=(150, 2))
  y = x[:, 0] * x[:, 1]
  z = (x - x.mean(0)) / x.std(0)
  fit = np.linalg.lstsq(np.column_stack([np.ones(150), z]), y, rcond=None)[0]
  linear = ["add", fit[0], "add", "mul", fit[1], "x_0", "mul", fit[2], "x_1"]

  def propose(bags):
    return [[linear] if view == "standardised" else [["mul", 0.1, "mul", "x_0", "x_1"]]
            for _, _, _, view in bags]
  config = inference.InferenceConfig(num_refine=1, selection="r2")
  result = inference.run(None, [(x, y)], config, propose=propose).results[0]
  assert result.best.r2 > 1 - 1e-9 and result.best.refined
  np.testing.assert_allclose(result.predict(x), y, rtol=1e-6)


def test_scaling_round_trip_is_exact():
  rng = np.random.default_rng(0)
  x = rng.normal([100.0, -3.0], [20.0, 0.01], size=(50, 2))
  mean, scale = x.mean(0), x.std(0)
  prefix = ["add", 0.5, "mul", 1.3, "sin", "add", "x_0", "mul", -0.7, "x_1"]
  raw = inference.unscale(prefix, mean, scale)
  np.testing.assert_allclose(expressions.evaluate(raw, x),
                             expressions.evaluate(prefix, (x - mean) / scale), rtol=1e-12)
  with pytest.raises(expressions.ExpressionError, match="reads x_2 but the data has 2"):
    inference.unscale(["x_2"], mean, scale)
  # A zero centre and a unit scale add nothing to the formula.
  assert inference.unscale(["sin", "x_0"], np.zeros(1), np.full(1, 0.5)) == [
      "sin", "mul", 2.0, "x_0"]
  assert inference.unscale(["sin", "x_0"], np.zeros(1), np.ones(1)) == ["sin", "x_0"]
  # With a column order, view column k shows feature columns[k].
  columns = np.array([1, 0])
  backwards = inference.unscale(prefix, mean[columns], scale[columns], columns)
  np.testing.assert_allclose(expressions.evaluate(backwards, x), expressions.evaluate(
      prefix, (x[:, columns] - mean[columns]) / scale[columns]), rtol=1e-12)
  assert inference.unscale(["x_0"], np.zeros(2), np.ones(2), columns) == ["x_1"]


def test_more_than_ten_features_keeps_the_most_correlated():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(300, 14))
  y = 3 * x[:, 12] - 2 * x[:, 3] + 0.1 * x[:, 0]
  kept = list(inference.top_features(x, y))
  assert len(kept) == 10 and set(kept) >= {3, 12} and kept == sorted(kept)

  def propose(bags):
    return [[["add", 0.1, "add", "mul", 2.0, f"x_{kept.index(12)}", "mul", -1.0,
              f"x_{kept.index(3)}"]] for _ in bags]
  result = inference.run(None, [(x, y)], propose=propose).results[0]
  assert result.features == tuple(kept)
  assert any("kept the 10 most correlated" in note for note in result.notes)
  assert result.best.r2 > 0.99
  assert result.predict(x).shape == (300,)


def test_invalid_candidates_are_dropped_and_a_constant_remains():
  x = np.linspace(0, 1, 30)[:, None]
  y = np.exp(x[:, 0])

  def propose(bags):
    return [[None, ["x_5"], ["log", "mul", -1.0, "add", 2.0, "x_0"]] for _ in bags]
  result = inference.run(None, [(x, y)], propose=propose).results[0]
  views = len(inference.InferenceConfig().views)  # one bag, shown in every view
  assert (result.num_decoded, result.num_invalid) == (3 * views, 2 * views)
  # log of a negative number is NaN: scored as infinitely bad, never picked. The
  # constant is the mean, or a round number as good within tidy's noise allowance
  # (4 / n of the error: the mean's own uncertainty).
  (constant,) = result.best.prefix
  assert (constant - np.mean(y)) ** 2 <= tidy.TidyConfig().noise_allowance / len(y) * np.var(y)
  assert -tidy.TidyConfig().noise_allowance / len(y) - 1e-12 <= result.best.r2 <= 1e-12


def test_constant_column_and_time_budget():
  rng = np.random.default_rng(2)
  x = np.column_stack([rng.normal(size=40), np.full(40, 5.0)])
  y = 2 * x[:, 0]

  def propose(bags):
    return [[["mul", 1.0, "x_0"]] for _ in bags]
  result = inference.run(None, [(x, y)], propose=propose).results[0]
  assert any("constant feature column(s) [1]" in n for n in result.notes)
  assert result.best.r2 > 0.9999
  cut = inference.run(None, [(x, y)], inference.InferenceConfig(max_time=0.0),
                      propose=propose).results[0]
  assert any("not refined" in n for n in cut.notes)
  assert not any(c.refined for c in cut.candidates)


@pytest.mark.parametrize("x, y, message", [
    (np.ones((5, 2)), np.ones(4), "5 rows but y has 4"),
    (np.ones((1, 2)), np.ones(1), "n_samples = 1"),
    (np.array([[1.0], [np.nan]]), np.ones(2), "X contains NaN"),
    (np.ones((3, 1)), np.array([1.0, np.inf, 2.0]), "y contains inf"),
    (np.array([["a"], ["b"]]), np.ones(2), "must be numeric"),
    (np.ones(4), np.ones(4), "must be 2-D"),
    (np.ones((3, 1)), np.array([1.0, 2.0, 1e102]), "beyond"),
    (np.ones((3, 1)), np.array([1e-200, 2e-200, 3e-200]), "varies by only 2e-200"),
    (np.ones((3, 1)), np.array([3e-150, 0.0, -2e-150]), "varies by only 5e-150"),
])
def test_bad_inputs_are_named(x, y, message):
  with pytest.raises(ValueError, match=message):
    inference.run(None, [(np.ones((3, 1)), np.ones(3)), (x, y)], propose=lambda b: [])
  with pytest.raises(ValueError, match="dataset 1"):
    inference.run(None, [(np.ones((3, 1)), np.ones(3)), (x, y)], propose=lambda b: [])


def test_a_tiny_but_measurable_y_is_accepted():
  """The spread limit sits where float64 stops measuring errors: a y that varies by
  1e-200 has a variance below the normal range (numpy's own), one that varies by 1e-120
  keeps it and passes the checks; so does a constant y (spread 0)."""
  tiny, small = 1e-200 * np.arange(3.0), 1e-120 * np.arange(3.0)
  assert np.var(tiny) < np.finfo(np.float64).tiny <= np.var(small)
  for y in (small, np.full(3, 7.0)):
    np.testing.assert_array_equal(inference.check_dataset(np.ones((3, 1)), y)[1], y)


def test_model_decoding_path_is_deterministic_and_batched():
  """A tiny random model through real decoding: every dataset gets a ranked table, bags
  are counted, and the same seed gives the same tables."""
  model = Transformer(model_config("debug", max_target_len=32), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(3)
  datasets = [(rng.normal(size=(n, d)), rng.normal(size=n)) for n, d in ((30, 1), (450, 2))]
  config = inference.InferenceConfig(num_candidates=3, max_len=16, num_refine=2,
                                     max_bags=2, decode_batch=4, views=("standardised", "raw"))
  first = inference.run(model, datasets, config)
  again = inference.run(model, datasets, config)
  # 1 bag and 2 bags (of 450 points only 400 are read), each in 2 views, C samples +
  # greedy each.
  assert [r.num_decoded for r in first.results] == [8, 16]
  assert "read 400 of them" in " ".join(first.results[1].notes)
  for a, b in zip(first.results, again.results):
    assert a.candidates == b.candidates
    scores = [c.score for c in a.candidates]
    assert scores == sorted(scores, reverse=True) and a.best.score == max(scores)


def test_groups_and_the_decoding_thread_do_not_change_results(monkeypatch):
  """Ranking and refinement run per group of datasets while the next bags decode in a
  worker thread: one dataset per group gives the same tables as all in one group (up
  to rounding: a group's shapes are padded to its own largest dataset), and an error
  raised while decoding reaches the caller."""
  model = Transformer(model_config("debug", max_target_len=32), rngs=nnx.Rngs(1))
  rng = np.random.default_rng(4)
  datasets = [(rng.normal(size=(n, 2)), rng.normal(size=n)) for n in (40, 250, 60, 90)]
  config = inference.InferenceConfig(num_candidates=3, max_len=16, num_refine=2,
                                     max_bags=2, decode_batch=2)
  together = inference.run(model, datasets, config)
  monkeypatch.setattr(inference, "_GROUP", 1)
  apart = inference.run(model, datasets, config)
  def table(result):
    return sorted((str(expressions.skeleton(list(c.prefix))), c.refined, c.r2)
                  for c in result.candidates)
  for a, b in zip(apart.results, together.results):
    assert [row[:2] for row in table(a)] == [row[:2] for row in table(b)]
    np.testing.assert_allclose([row[2] for row in table(a)], [row[2] for row in table(b)],
                               rtol=1e-6, atol=1e-9)
  assert apart.seconds["decode"] > 0 and apart.seconds["refine"] > 0
  small_vocabulary = Transformer(model_config("debug", decoder_vocab_size=64, output_layer="full"),
                                 rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="decoder vocabulary"):
    inference.run(small_vocabulary, datasets, config)


def test_refined_scores_equal_rescoring():
  """Refinement's own float64 loss and R2 stand in for rescoring when it saw all the
  scoring points; datasets larger than max_points are rescored."""
  rng = np.random.default_rng(5)
  truths = [["add", 1.5, "mul", 2.0, "sin", "x_0"], ["mul", 0.7, "exp", "mul", 0.3, "x_1"],
            ["add", "mul", 3.0, "x_0", "div", 1.0, "add", 2.0, "x_1"]]
  xs = [rng.uniform(-2, 2, size=(n, 2)) for n in (50, 80, 300)]
  ys = [expressions.evaluate(t, x) + 0.01 * rng.normal(size=len(x)) for t, x in zip(truths, xs)]
  to_refine = [(i, _perturb(t, rng)) for i, t in enumerate(truths)]
  config = inference.InferenceConfig(refine=refine.RefineConfig(max_points=100))
  with jax.enable_x64(True):
    refined = refine.refine([c for _, c in to_refine],
                            [xs[i][:100] for i, _ in to_refine],
                            [ys[i][:100] for i, _ in to_refine], config.refine)
    frames = inference._Frames(("raw",), xs, ys)
    mse, r2 = inference._refined_scores(refined, to_refine, frames, config)
    rescored = selection.score(refined.prefixes, [i for i, _ in to_refine], xs, ys)
  np.testing.assert_allclose(mse, rescored.mse, rtol=1e-12)
  np.testing.assert_allclose(r2, rescored.r2, rtol=1e-12)
  assert mse[2] != refined.loss[2]  # 300 points: scored on all of them, not 100


def test_sorted_data_is_scored_and_refined_on_random_rows(monkeypatch):
  """On rows sorted by x, refinement's points and the scoring points are a random
  subset spread over the whole range, not the first rows (E2E's bias)."""
  n = 30_000
  x = np.linspace(-3, 3, n)[:, None]
  y = 2 * np.sin(1.3 * x[:, 0]) + 0.5
  seen = []
  real_refine = refine.refine

  def spy(prefixes, xs, ys, config, **options):  # the refinement's and tidy's refits
    seen.extend((x, config.max_points) for x in xs)
    return real_refine(prefixes, xs, ys, config, **options)

  monkeypatch.setattr(refine, "refine", spy)
  proposal = ["add", 0.3, "mul", 1.5, "sin", "mul", 1.0, "x_0"]
  output = inference.run(None, [(x, y)], inference.InferenceConfig(seed=3),
                         propose=lambda bags: [[proposal] for _ in bags])
  z = (x[:, 0] - x.mean()) / x.std()
  assert seen
  for points, max_points in seen:  # the proposal and the constant fallback
    assert len(points) == max_points
    assert points.min() < z.min() + 0.05 and points.max() > z.max() - 0.05
    assert abs(np.mean(points)) < 0.1  # not the first (most negative) rows
  assert output.results[0].best.r2 > 0.999
  assert any("ranked on a random 10000" in note for note in output.results[0].notes)


def test_complexity_counts_the_returned_formula():
  rng = np.random.default_rng(4)
  x = rng.uniform(1, 3, size=(80, 2))
  y = 1.5 * x[:, 0] - 0.5 * x[:, 1] + 2.0
  output = inference.run(None, [(x, y)], inference.InferenceConfig(),
                         propose=lambda bags: [[["add", 1.0, "add", "mul", 1.0, "x_0", "mul",
                                                 1.0, "x_1"], ["x_0"]] for _ in bags])
  for candidate in output.results[0].candidates:
    assert candidate.complexity == len(candidate.prefix)


def test_the_search_waits_until_every_bag_is_decoded(monkeypatch):
  """The search's budget is wall clock: decoding beside it would take its CPU. Every
  group's search starts only once all decoding is done."""
  model = Transformer(model_config("debug", max_target_len=32), rngs=nnx.Rngs(1))
  rng = np.random.default_rng(5)
  datasets = [(rng.normal(size=(30, 1)), rng.normal(size=30)) for _ in range(20)]
  decoders, undecoded_at_search = [], []
  init = inference._Decoder.__init__
  monkeypatch.setattr(inference._Decoder, "__init__",
                      lambda self, *a, **k: decoders.append(self) or init(self, *a, **k))
  run_search = inference.search.run
  def search_run(*args, **kwargs):
    undecoded_at_search.append(sum(not c.done() for c in decoders[-1].chunks))
    searched.set()
    return run_search(*args, **kwargs)
  monkeypatch.setattr(inference.search, "run", search_run)
  searched = threading.Event()
  decode_chunk = inference._Decoder._decode_chunk
  def slow_decode_chunk(self, index, begin):
    # The last chunk waits for a search to start (5 s at most): without the wait
    # before searching, the first group's search starts while it is undecoded.
    if index == (len(self.bags) - 1) // self.batch:
      searched.wait(5.0)
    return decode_chunk(self, index, begin)
  monkeypatch.setattr(inference._Decoder, "_decode_chunk", slow_decode_chunk)
  monkeypatch.setattr(inference, "_GROUP", 8)
  config = inference.InferenceConfig(
      num_candidates=2, max_len=16, num_refine=1, max_bags=1, decode_batch=1,
      views=("standardised",),  # one decoding call per dataset
      residual_rounds=0,  # its own decoder would be decoders[-1]
      search=inference.search.SearchConfig(generations=1, population=8, offspring=4,
                                           refined=4))
  output = inference.run(model, datasets, config)
  # Chunks of at most 8 bags (a multiple of the device count), 3 groups of <= 8
  # datasets: without the wait, later chunks would still be decoding.
  assert len(decoders[-1].chunks) >= 3
  assert undecoded_at_search == [0, 0, 0]
  assert all(any(c.source == "search" for c in r.candidates) or r.front
             for r in output.results)


def test_a_formula_that_fails_just_outside_the_data_loses_to_one_as_good():
  """sqrt(5.05 - x) is real on the training x <= 5 and NaN just past it; at equal
  accuracy (within extrapolation_price of R2) the pipeline picks the formula that
  stays finite near the data."""
  x = np.linspace(0, 5, 200)[:, None]
  y = 1 + x[:, 0] + 1e-4 * np.sqrt(5.05 - x[:, 0])
  mean, scale = x.mean(0), x.std(0)
  unsafe = standardised(["add", 1.0, "add", "x_0", "mul", 1e-4, "sqrt", "add", 5.05, "mul",
                         -1.0, "x_0"], mean, scale)
  # Longer than the sqrt formula, which dominates it on the Pareto front.
  safe = standardised(["add", 1.0, "add", "x_0", "mul", 1e-4, "add", 2.2, "add", "mul",
                       -0.2, "x_0", "mul", -0.01, "pow2", "x_0"], mean, scale)
  propose = lambda bags: [[unsafe, safe] for _ in bags]
  config = inference.InferenceConfig(selection="r2", tidy=None)
  picked = inference.run(None, [(x, y)], config, propose=propose).results[0]
  assert "sqrt" not in picked.best.prefix and picked.best.r2 > 1 - 1e-6
  assert any("sqrt" in c.prefix and c.r2 > picked.best.r2 for c in picked.candidates)
  assert picked.best in picked.front  # though the sqrt formula dominates it
  unguarded = inference.run(None, [(x, y)], dataclasses.replace(config, extrapolation_margin=0),
                            propose=propose).results[0]
  assert "sqrt" in unguarded.best.prefix


def _one_term_proposer(terms, x):
  """A stand-in for a model that writes single terms only: every bag gets each of
  `terms` (formulas over the raw x) rewritten for the bag's view, constants perturbed
  by a stream of the bag's own points (as the model's samples are). Counts its calls."""
  calls = []

  def propose(bags):
    calls.append(len(bags))
    out = []
    for _, u, v, view in bags:
      rng = np.random.default_rng(np.frombuffer(np.concatenate([u.ravel(), v]).tobytes(),
                                                np.uint32))
      centre, scale, columns, y_sign = _view(x, view)
      written = [standardised(term, centre, scale, columns) for term in terms]
      out.append([_perturb(w if y_sign > 0 else ["mul", -1.0, *w], rng) for w in written])
    return out
  return propose, calls


def test_a_residual_round_adds_the_term_the_first_pass_missed():
  """y = 3 x0 x1 + 2 sin(1.5 x1): no single term fits (R2 < 0.99); the residual round
  decodes y - f for the best single term f, finds the other term, and f + g refitted on y
  is the law on fresh points (numpy oracle). Without the round, the best stays one term."""
  rng = np.random.default_rng(11)
  x, fresh = rng.uniform(-2, 2, size=(300, 2)), rng.uniform(-2, 2, size=(100, 2))
  law = lambda x: 3 * x[:, 0] * x[:, 1] + 2 * np.sin(1.5 * x[:, 1])
  terms = [["mul", 3.0, "mul", "x_0", "x_1"], ["mul", 2.0, "sin", "mul", 1.5, "x_1"]]
  propose, calls = _one_term_proposer(terms, x)
  without = inference.run(None, [(x, law(x))], inference.InferenceConfig(residual_rounds=0),
                          propose=propose).results[0]
  assert without.best.r2 < 0.99 and len(calls) == 1
  result = inference.run(None, [(x, law(x))], inference.InferenceConfig(),
                         propose=propose).results[0]
  assert len(calls) == 3  # the first pass, then one residual round
  assert result.best.source == "residual" and result.best.refined
  np.testing.assert_allclose(result.predict(fresh), law(fresh), rtol=1e-6, atol=1e-9)


def test_a_small_term_missed_under_a_large_one_gets_a_residual_round():
  """y = 300 x0^2 + 0.5 x1: the large term alone fits to R2 > 0.999999, yet is off by
  more than 0.1% on most points near x0 = 0 (the relative accuracy E2E's Acc_tau
  measures). The round runs for it and finds the small term (numpy oracle on fresh
  points); with a relative tolerance that accepts the large term, no round runs."""
  rng = np.random.default_rng(13)
  x, fresh = rng.uniform(-2, 2, size=(300, 2)), rng.uniform(-2, 2, size=(100, 2))
  law = lambda x: 300 * x[:, 0] ** 2 + 0.5 * x[:, 1]
  terms = [["mul", 300.0, "pow2", "x_0"], ["mul", 0.5, "x_1"]]
  propose, calls = _one_term_proposer(terms, x)
  lenient = inference.InferenceConfig(residual_rtol=100.0)
  without = inference.run(None, [(x, law(x))], lenient, propose=propose).results[0]
  assert len(calls) == 1 and 0.99999 < without.best.r2 < 1 - 1e-9
  result = inference.run(None, [(x, law(x))], propose=propose).results[0]
  assert len(calls) == 3 and result.best.source == "residual"
  np.testing.assert_allclose(result.predict(fresh), law(fresh), rtol=1e-6, atol=1e-9)


def test_a_dataset_already_fitted_gets_no_residual_round():
  """A formula at R2 >= residual_below is not decoded again; one below it is, and each
  dataset's table is the same alone as beside the other."""
  rng = np.random.default_rng(12)
  x = rng.uniform(-2, 2, size=(200, 2))
  exact = 3 * x[:, 0] * x[:, 1]
  two_terms = exact + 2 * np.sin(1.5 * x[:, 1])
  terms = [["mul", 3.0, "mul", "x_0", "x_1"], ["mul", 2.0, "sin", "mul", 1.5, "x_1"]]
  propose, calls = _one_term_proposer(terms, x)
  alone = inference.run(None, [(x, exact)], propose=propose).results[0]
  assert len(calls) == 1 and alone.best.source == "model" and alone.best.r2 > 1 - 1e-12
  both = inference.run(None, [(x, exact), (x, two_terms)], propose=propose).results
  # The residual round decodes only the second dataset: 3 views x 1 bag.
  assert calls[1:] == [6, 3]
  for a, b in zip(both[0].candidates, alone.candidates, strict=True):
    assert a.prefix == b.prefix and a.r2 == pytest.approx(b.r2, abs=1e-12)
  assert both[1].best.source == "residual" and both[1].best.r2 > 1 - 1e-12


@pytest.mark.parametrize("field, value", [("residual_rounds", -1), ("residual_terms", 0),
                                          ("residual_bags", -1), ("residual_rtol", -0.1),
                                          ("residual_below", 1.5),
                                          ("residual_below", float("nan"))])
def test_bad_residual_settings_are_refused(field, value):
  with pytest.raises(ValueError, match="must be positive|must be >= 0|must be in"):
    inference.InferenceConfig(**{field: value})
