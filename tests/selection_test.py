"""Batched scoring against numpy: every candidate's MSE and R2 on its own dataset."""

import jax
import numpy as np
import pytest
import sklearn.metrics

from sr_jax import expressions
from sr_jax import generator
from sr_jax import inference
from sr_jax import selection


@pytest.mark.parametrize("float64, rtol", [(False, 1e-4), (True, 1e-10)])
def test_scores_equal_numpy_for_mixed_lengths_and_datasets(float64, rtol):
  config = generator.GeneratorConfig()
  samples = [generator.generate(config, 7, i) for i in range(40)]
  xs = [s.x for s in samples]
  ys = [s.y for s in samples]
  # Each dataset scored with its own formula, a short one and one that overflows;
  # lengths and datasets interleave, so order and padding are exercised.
  prefixes, ids = [], []
  for j, s in enumerate(samples):
    prefixes += [list(s.prefix), ["mul", 2.0, "x_0"], ["exp", "mul", 1e5, "x_0"]]
    ids += [j, (j + 1) % len(samples), j]
  with jax.enable_x64(float64):
    got = selection.score(prefixes, ids, xs, ys)
  for i, (prefix, j) in enumerate(zip(prefixes, ids)):
    with np.errstate(all="ignore"):
      prediction = expressions.evaluate(prefix, xs[j])
    if not np.all(np.isfinite(prediction)):
      assert got.mse[i] == np.inf and got.r2[i] == -np.inf
      continue
    if not float64 and max(np.max(np.abs(prediction)), np.max(np.abs(ys[j]))) > 1e18:
      continue  # their squares overflow float32
    mse = np.mean((prediction - ys[j]) ** 2)
    scale = np.mean(ys[j] ** 2) + np.mean(prediction ** 2)
    np.testing.assert_allclose(got.mse[i], mse, rtol=rtol, atol=rtol * scale)
    if np.var(ys[j]) > 0 and got.r2[i] > -1e3:
      np.testing.assert_allclose(got.r2[i], sklearn.metrics.r2_score(ys[j], prediction),
                                 rtol=rtol, atol=rtol * scale / np.var(ys[j]))
  assert np.sum(np.isinf(got.mse)) >= 20  # the overflowing ones


def test_constant_target_follows_sklearn():
  x = np.linspace(0, 1, 10)[:, None]
  y = np.full(10, 3.0)
  got = selection.score([[3.0], ["add", 3.0, "x_0"]], [0, 0], [x], [y])
  np.testing.assert_allclose(got.r2, [1.0, 0.0])


@pytest.mark.parametrize("best", [1.0, 1 - 1e-12, 1 - 1e-6, 0.999, 0.9])
def test_r2_slack_is_the_room_the_simplest_rule_gives(best):
  """A shorter formula just inside r2_slack is picked, one just outside is not; the
  inference config's slack is the same function of its own tolerances."""
  slack = selection.r2_slack(best)
  inside, outside = best - slack * (1 - 1e-6), best - slack * (1 + 1e-3)
  score = selection.selection_score([best, inside, outside], [20, 10, 5], "simplest")
  assert np.argmax(score) == 1 and score[2] < 1 < score[1]
  tolerances = dict(r2_tolerance=1e-3, relative_tolerance=0.5, max_tolerance=1e-2,
                    error_ratio=10.0)
  assert inference.InferenceConfig(**tolerances).r2_slack(best) == selection.r2_slack(
      best, **tolerances)
  assert inference.InferenceConfig().r2_slack(best) == slack
