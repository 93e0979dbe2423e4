"""Batched constant refinement: recovery, batch invariance, bad inputs."""

import jax
import numpy as np
import pytest

from sr_jax import expressions
from sr_jax import refine


def _perturbed_problems(count, seed=0, num_points=64):
  """c0 + c1*sin(c2 + c3*x_0) + c4*exp(c5*x_1)-style targets, starts perturbed as
  in the benchmark: c * exp(0.3 N(0,1)) + 0.1 N(0,1)."""
  rng = np.random.default_rng(seed)
  prefixes, xs, ys, truths = [], [], [], []
  for _ in range(count):
    a, b, c, d, e = rng.uniform(0.5, 2, 5) * rng.choice([-1, 1], 5)
    unary = ["sin", "cos", "arctan"][rng.integers(3)]
    true = ["add", a, "add", "mul", b, unary, "add", c, "mul", d, "x_0",
            "mul", e, "x_1"]
    x = rng.uniform(-2, 2, size=(num_points, 2))
    start = [t if isinstance(t, str) else
             float(t * np.exp(0.3 * rng.normal()) + 0.1 * rng.normal()) for t in true]
    prefixes.append(start)
    xs.append(x)
    ys.append(expressions.evaluate(true, x))
    truths.append(true)
  return prefixes, xs, ys, truths


def test_lm_recovers_true_constants_from_perturbed_starts():
  prefixes, xs, ys, _ = _perturbed_problems(48)
  result = refine.refine(prefixes, xs, ys, refine.RefineConfig(max_iters=60))
  assert np.mean(result.r2 > 0.999) >= 0.8
  for prefix, x, y, loss in zip(result.prefixes, xs, ys, result.loss):
    np.testing.assert_allclose(np.mean((expressions.evaluate(prefix, x) - y)**2),
                               loss, rtol=1e-3, atol=1e-6)
  starting = [np.mean((expressions.evaluate(p, x) - y)**2)
              for p, x, y in zip(prefixes, xs, ys)]
  assert np.all(result.loss <= np.array(starting) * (1 + 1e-5))


def test_batch_equals_one_at_a_time():
  prefixes, xs, ys, _ = _perturbed_problems(6, seed=1)
  config = refine.RefineConfig(max_iters=30)
  batch = refine.refine(prefixes, xs, ys, config)
  for i in range(3):
    alone = refine.refine(prefixes[i:i + 1], xs[i:i + 1], ys[i:i + 1], config)
    np.testing.assert_allclose(alone.constants[0], batch.constants[i], rtol=1e-4,
                               atol=1e-5)
    assert alone.status[0] == batch.status[i]


def test_streams_and_queues_do_not_change_results():
  """Slots never interact, so splitting a call over host threads, or handing the
  expressions to the device loop in queues of any size, changes nothing, bit for bit;
  each thread runs in the caller's precision (x64 is thread-local)."""
  prefixes, xs, ys, _ = _perturbed_problems(20, seed=7)
  with jax.enable_x64(True):
    results = [refine.refine(prefixes, xs, ys, refine.RefineConfig(
        max_iters=40, num_streams=streams, queue_size=queue))
               for streams, queue in ((1, 32), (2, 32), (3, 32), (1, 3), (2, 1))]
  assert results[0].constants[0].dtype == np.float64
  for result in results[1:]:
    for field in ("loss", "r2", "status", "iterations"):
      np.testing.assert_array_equal(getattr(result, field), getattr(results[0], field))
    for mine, theirs in zip(result.constants, results[0].constants):
      np.testing.assert_array_equal(mine, theirs)
  assert np.mean(results[0].r2 > 0.999) >= 0.8


@pytest.mark.parametrize("cores,streams", [({3}, 1), ({0, 1}, 2), (set(range(16)), 2)])
def test_one_stream_per_usable_core_up_to_two(monkeypatch, cores, streams):
  """Two host threads on one core (taskset) only get in each other's way."""
  monkeypatch.setattr(refine.os, "sched_getaffinity", lambda pid: cores, raising=False)
  assert refine.RefineConfig().num_streams == streams


def test_unchecked_refinement_equals_checked_and_checking_refuses_bad_input():
  prefixes, xs, ys, _ = _perturbed_problems(6, seed=3)
  config = refine.RefineConfig(max_iters=20)
  checked = refine.refine(prefixes, xs, ys, config)
  unchecked = refine.refine(prefixes, xs, ys, config, check=False)
  np.testing.assert_array_equal(checked.loss, unchecked.loss)
  with pytest.raises(expressions.ExpressionError, match="x_5"):
    refine.refine([["add", 1.0, "x_5"]], xs[:1], ys[:1], config)


def test_multi_start_is_never_worse():
  prefixes, xs, ys, _ = _perturbed_problems(8, seed=2)
  one = refine.refine(prefixes, xs, ys, refine.RefineConfig(max_iters=30))
  four = refine.refine(prefixes, xs, ys, refine.RefineConfig(max_iters=30, n_starts=4))
  assert np.all(four.loss <= one.loss * (1 + 1e-5) + 1e-12)


def test_lbfgs_recovers_perturbed_constants():
  """optax's L-BFGS on the same problems LM solves: every loss falls, and at least 14
  of 16 fits reach R2 > 0.999 (measured: all 16) with constants near the truth."""
  prefixes, xs, ys, truths = _perturbed_problems(16, seed=3, num_points=32)
  result = refine.refine(prefixes, xs, ys,
                         refine.RefineConfig(method="lbfgs", max_iters=30))
  starting = [np.mean((expressions.evaluate(p, x) - y)**2)
              for p, x, y in zip(prefixes, xs, ys)]
  assert np.all(result.loss <= np.array(starting) * (1 + 1e-5))
  assert np.sum(result.r2 > 0.999) >= 14
  close = [np.allclose(c, [t for t in true if not isinstance(t, str)], rtol=1e-2, atol=1e-2)
           for c, true in zip(result.constants, truths)]
  assert np.sum(close) >= 12


def test_bad_inputs_get_a_status_not_a_crash():
  x = np.linspace(0.1, 2, 20)[:, None]
  y = 2 * x[:, 0]
  cases = [(["mul", 3.0, "x_0"], x, y),  # fine
           (["x_0"], x, y),  # no constants
           (["mul", 3.0, "x_0"], np.zeros((0, 1)), np.zeros(0)),  # no data
           (["mul", 3.0, "x_0"], x, np.full(20, np.nan)),  # all-NaN y
           (["log", "mul", -1.0, "x_0"], x, y)]  # NaN everywhere
  result = refine.refine(*map(list, zip(*cases)))
  assert result.status_names() == ["CONVERGED", "NO_CONSTANTS", "NO_DATA", "NO_DATA",
                                   "NON_FINITE"]
  np.testing.assert_allclose(result.constants[0], [2.0], rtol=1e-4)
  np.testing.assert_allclose(result.constants[4], [-1.0])  # start kept
  assert result.prefixes[1] == ["x_0"]


def test_one_compiled_program_per_call_shape():
  # Expressions of varied lengths, constant counts, point counts and features share
  # one compiled refinement program: buckets are per call, not per expression.
  rng = np.random.default_rng(5)
  prefixes, xs, ys = [], [], []
  for i in range(40):
    depth = 1 + i % 5
    prefix = ["x_0"]
    for _ in range(depth):
      prefix = ["add", float(rng.uniform(0.5, 2)), "mul", float(rng.uniform(0.5, 2)),
                ["sin", "cos", "arctan"][i % 3]] + prefix
    num_points, num_features = 20 + 7 * i, 1 + i % 3
    x = rng.uniform(-1, 1, size=(num_points, num_features))
    prefixes.append(prefix)
    xs.append(x)
    ys.append(expressions.evaluate(prefix, x) + 0.1)
  config = refine.RefineConfig(max_iters=5)
  before = refine._advance._cache_size()
  result = refine.refine(prefixes, xs, ys, config)
  assert refine._advance._cache_size() - before <= 1
  assert set(result.status_names()) <= {"CONVERGED", "MAX_ITERS"}


def test_float64_under_enable_x64():
  prefixes, xs, ys, truths = _perturbed_problems(8, seed=4)
  with jax.enable_x64(True):
    result = refine.refine(prefixes, xs, ys, refine.RefineConfig(max_iters=60))
  assert result.constants[0].dtype == np.float64
  recovered = [np.allclose(c, [t for t in true if not isinstance(t, str)], rtol=1e-7)
               for c, true in zip(result.constants, truths)]
  assert np.mean(recovered) >= 0.75
  assert np.all(result.loss[recovered] < 1e-12)


def test_points_float32_cannot_hold_are_missing():
  x = np.linspace(0.1, 2, 20)[:, None]
  y = 2 * x[:, 0]
  y[3] = 1e300  # finite in float64, inf in float32
  result = refine.refine([["mul", 3.0, "x_0"]], [x], [y])
  assert result.status_names() == ["CONVERGED"]
  np.testing.assert_allclose(result.constants[0], [2.0], rtol=1e-4)
  assert result.r2[0] > 0.999  # the variance skips the point the loss skips


def test_float32_then_float64_polish_reaches_float64_accuracy():
  prefixes, xs, ys, truths = _perturbed_problems(8, seed=6)
  ys[0] = ys[0].copy()
  ys[0][5] = 1e39  # float32 cannot hold it: the polish still counts it
  with jax.enable_x64(True):
    mixed = refine.refine(prefixes, xs, ys, refine.RefineConfig(max_iters=60))
    pure = refine.refine(prefixes, xs, ys, refine.RefineConfig(max_iters=60,
                                                                polish_iters=0))
  finite = [i for i in range(1, 8) if pure.loss[i] < 1e-12]
  assert len(finite) >= 5
  assert np.all(mixed.loss[finite] < 1e-12)
  for i in finite:
    np.testing.assert_allclose(mixed.constants[i], pure.constants[i], rtol=1e-7)
  # Dataset 0's loss counts its 1e39 point, as pure float64's does, and is no worse.
  assert 1e70 < pure.loss[0] < np.inf and 1e70 < mixed.loss[0] <= pure.loss[0] * (1 + 1e-6)


def test_float32_overflow_gets_the_whole_float64_budget():
  """exp(x) near x = 90 overflows float32: that expression is refined in float64 with
  the whole budget (not just the polish), and is recovered as pure float64 does."""
  x = np.linspace(88, 92, 40)[:, None]
  y = 2.0 * np.exp(1.0 * x[:, 0])
  start = ["mul", 3.0, "exp", "mul", 1.02, "x_0"]
  with jax.enable_x64(True):
    result = refine.refine([start], [x], [y], refine.RefineConfig(max_iters=100))
  np.testing.assert_allclose(result.constants[0], [2.0, 1.0], rtol=1e-6)
  assert result.iterations[0] > refine.RefineConfig().polish_iters


def test_data_float32_cannot_hold_gets_the_whole_float64_budget():
  """Three points beyond float32's range: float32 would fit the other 57 and hand the
  polish its answer for them. Every point counts: the expression is refined in float64
  from the given constants, exactly as pure float64 refines it."""
  x = np.linspace(0.0, 1.0, 60)[:, None]
  y = 2.0 * np.exp(1.0 * x[:, 0])
  y[-3:] = [1e39, 1.1e39, 1.2e39]
  start = ["mul", 2.5, "exp", "mul", 1.2, "x_0"]
  with jax.enable_x64(True):
    mixed = refine.refine([start], [x], [y], refine.RefineConfig(max_iters=100))
    pure = refine.refine([start], [x], [y], refine.RefineConfig(max_iters=100,
                                                                 polish_iters=0))
  np.testing.assert_array_equal(mixed.constants[0], pure.constants[0])
  assert mixed.loss[0] == pure.loss[0] and mixed.iterations[0] == pure.iterations[0]


def test_mixed_precision_never_ends_worse_than_its_start():
  """In float64 terms, on starts near and far from the optimum (some of them where the
  float32 stage ends elsewhere than float64 would), no loss exceeds the start's."""
  prefixes, xs, ys, _ = _perturbed_problems(24, seed=8)
  rng = np.random.default_rng(9)
  far = [[t if isinstance(t, str) else float(t * rng.uniform(-20, 20)) for t in p]
         for p in prefixes[:12]]
  prefixes = far + prefixes[12:]
  for y in ys[::5]:
    y[:3] = 3e38 * np.array([2.0, -2.0, 5.0])  # beyond float32
  with jax.enable_x64(True):
    result = refine.refine(prefixes, xs, ys, refine.RefineConfig(max_iters=40))
    starting = np.array([np.mean((expressions.evaluate(p, x) - y) ** 2)
                         for p, x, y in zip(prefixes, xs, ys)])
  finite = np.isfinite(starting)
  assert finite.sum() >= 20
  assert np.all(result.loss[finite] <= starting[finite] * (1 + 1e-12))


@pytest.mark.parametrize("method,polish", [("lm", 0), ("lm", 5), ("lbfgs", 0)])
def test_held_constants_keep_their_values_and_the_rest_fit_around_them(method, polish):
  """y = 3 x + 0.5 fitted as c0 x + c1 with c1 held at 1/3: c0 is the least-squares
  slope of y - 1/3 on x (numpy's oracle), c1 stays exactly 1/3 even through float32."""
  rng = np.random.default_rng(0)
  x = rng.uniform(1, 2, size=(100, 1))
  y = 3 * x[:, 0] + 0.5
  prefix = ["add", "mul", 1.0, "x_0", 1 / 3]
  slope = np.linalg.lstsq(x, y - 1 / 3, rcond=None)[0][0]
  config = refine.RefineConfig(method=method, polish_iters=polish, max_iters=200,
                               n_starts=2)
  with jax.enable_x64(True):
    held = refine.refine([prefix, prefix], [x, x], [y, y], config,
                         held=[np.array([False, True]), np.array([True, True])])
  assert held.constants[0][1] == 1 / 3
  np.testing.assert_allclose(held.constants[0][0], slope, rtol=1e-6)
  assert list(held.constants[1]) == [1.0, 1 / 3]  # all held: evaluated as given
  np.testing.assert_allclose(held.loss[1], np.mean((x[:, 0] + 1 / 3 - y)**2), rtol=1e-9)
  with pytest.raises(ValueError, match="held mask 0 has 1 entries for 2 constants"):
    refine.refine([prefix], [x], [y], held=[np.array([True])])


@pytest.mark.parametrize("num", [1, 4, 8, 32])
def test_cholesky_solve_matches_numpy(num):
  """The LM step's solver against numpy's LU solve, on random positive definite
  systems as badly scaled as a Gram matrix of constants gets; NaN where a matrix is
  not positive definite (a rejected step, as LAPACK's factor gave)."""
  rng = np.random.default_rng(num)
  a = rng.normal(size=(16, num, num)) * np.exp(rng.normal(size=(16, 1, num)))
  matrix = a @ a.transpose(0, 2, 1) + 1e-3 * np.eye(num)
  rhs = rng.normal(size=(16, num))
  solved = np.asarray(refine.cholesky_solve(jax.numpy.asarray(matrix, np.float32),
                                            jax.numpy.asarray(rhs, np.float32)))
  residual = np.einsum("bij,bj->bi", matrix, solved) - rhs
  assert np.all(np.linalg.norm(residual, axis=1) <= 1e-3 * np.linalg.norm(rhs, axis=1)
                * np.linalg.cond(matrix))
  expected = np.linalg.solve(matrix, rhs[..., None])[..., 0]
  well_posed = np.linalg.cond(matrix) < 1e3
  np.testing.assert_allclose(solved[well_posed], expected[well_posed], rtol=1e-3, atol=1e-4)
  indefinite = -np.eye(num)[None]
  assert np.all(np.isnan(refine.cholesky_solve(jax.numpy.asarray(indefinite),
                                               jax.numpy.ones((1, num)))))


def test_refinement_program_calls_no_lapack_kernel(monkeypatch):
  """The compiled refinement is plain XLA: no custom call. LAPACK's batched Cholesky
  runs its batch on XLA's intra-op pool and waits for the parts; two refinement
  streams factorising at once held both threads of a 2-core machine, and eval.py hung
  for good (jaxlib 0.10.2, twice in a row on the same 30 in-domain problems)."""
  advance, texts = refine._advance, []

  def spy(*args, **kwargs):
    texts.append(advance.lower(*args, **kwargs).as_text())
    return advance(*args, **kwargs)

  monkeypatch.setattr(refine, "_advance", spy)
  prefixes, xs, ys, _ = _perturbed_problems(4)
  result = refine.refine(prefixes, xs, ys, refine.RefineConfig(max_iters=3))
  assert texts and len(result.prefixes) == 4
  assert not any("custom_call" in text for text in texts)


@pytest.mark.parametrize("method,polish", [("lm", 0), ("lm", 5), ("lbfgs", 0)])
def test_weighted_residuals_give_numpys_weighted_least_squares(method, polish):
  """exp(x) on [0, 4] fitted by a cubic with each residual weighted by 1 / y: the
  constants are numpy's weighted least squares (lstsq on rows scaled by the weights),
  loss and R2 the weighted ones; unit weights give the unweighted fit exactly."""
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 4, size=(300, 1))
  y = np.exp(x[:, 0])
  weights = 1 / y
  prefix = [1.0]
  for power in range(1, 4):
    prefix = ["add", *prefix, "mul", 1.0, *["mul", "x_0"] * (power - 1), "x_0"]
  design = np.stack([x[:, 0]**k for k in range(4)], axis=1)
  oracle = np.linalg.lstsq(design * weights[:, None], y * weights, rcond=None)[0]
  config = refine.RefineConfig(method=method, polish_iters=polish, max_iters=300,
                               ftol=1e-14)
  with jax.enable_x64(True):
    weighted = refine.refine([prefix, prefix], [x, x], [y, y], config,
                             weights=[weights, None])
  np.testing.assert_allclose(weighted.constants[0], oracle, rtol=1e-4, atol=1e-6)
  residual = (design @ weighted.constants[0] - y) * weights
  np.testing.assert_allclose(weighted.loss[0], np.mean(residual**2), rtol=1e-6)
  centre = np.sum(weights**2 * y) / np.sum(weights**2)
  np.testing.assert_allclose(
      weighted.r2[0], 1 - np.mean(residual**2) / np.mean(weights**2 * (y - centre)**2),
      rtol=1e-9)
  plain = np.linalg.lstsq(design, y, rcond=None)[0]
  np.testing.assert_allclose(weighted.constants[1], plain, rtol=1e-4, atol=1e-6)
  assert np.abs(weighted.constants[0] - weighted.constants[1]).max() > 1e-2
  with pytest.raises(ValueError, match="one value per point"):
    refine.refine([prefix], [x], [y], weights=[weights[:10]])
  with pytest.raises(ValueError, match="1 weight arrays for 2 prefixes"):
    refine.refine([prefix, prefix], [x, x], [y, y], weights=[weights])
