"""The JAX interpreter against the numpy evaluator, sympy and finite differences."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy

from sr_jax import compiler
from sr_jax import expressions
from sr_jax import interpreter
from sr_jax import operators

sys.path.insert(0, os.path.dirname(__file__))
from random_trees import random_prefix  # noqa: E402


def _random_batch(seed, count=200, num_points=40):
  rng = np.random.default_rng(seed)
  prefixes = [random_prefix(rng) for _ in range(count)]
  x_BxNxD = rng.normal(size=(count, num_points, 3)) * 2
  return prefixes, x_BxNxD


def _well_conditioned(prefix, x_NxD, relative, tolerance):
  """Points whose float64 value moves by < tolerance (relative) when x and the
  constants move by `relative` (a few ulps): there rounding cannot explain a
  mismatch."""
  reference = expressions.evaluate(prefix, x_NxD)
  rng = np.random.default_rng(0)
  keep = np.isfinite(reference) & (np.abs(reference) < 1e30)
  for draw in range(8):  # x alone or constants alone, so that x/c cannot cancel
    size = lambda v: relative * (draw % 2 == (not np.ndim(v))) * rng.uniform(1, 2)
    scale = lambda v: v * (1 + size(v) * rng.choice([-1, 1], size=np.shape(v)))
    moved = [t if isinstance(t, str) else float(scale(t)) for t in prefix]
    other = expressions.evaluate(moved, scale(x_NxD))
    with np.errstate(all="ignore"):
      keep &= np.abs(other - reference) <= tolerance * np.abs(reference) + 1e-30
  return keep


def _check_against_numpy(rtol, relative):
  """rtol on points stable to `relative` input noise within rtol / 10."""
  prefixes, x_BxNxD = _random_batch(seed=1)
  y_BxN = interpreter.evaluate(prefixes, x_BxNxD)
  kept = 0
  for prefix, x_NxD, y_N in zip(prefixes, x_BxNxD, y_BxN):
    reference = expressions.evaluate(prefix, x_NxD)
    keep = _well_conditioned(prefix, x_NxD, relative, rtol / 10)
    kept += keep.sum()
    np.testing.assert_allclose(y_N[keep], reference[keep], rtol=rtol, atol=1e-30,
                               err_msg=expressions.to_infix(prefix))
    if y_N.dtype == np.float64:  # IEEE specials match exactly in float64
      np.testing.assert_array_equal(np.isnan(y_N), np.isnan(reference))
      both = ~np.isfinite(reference) & ~np.isnan(reference)
      np.testing.assert_array_equal(y_N[both], reference[both])
  assert kept > 0.4 * x_BxNxD.shape[0] * x_BxNxD.shape[1]  # not vacuous


def test_float32_matches_numpy_on_well_conditioned_points():
  _check_against_numpy(rtol=1e-5, relative=2.4e-7)


def test_float64_matches_numpy_including_nan_and_inf():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_ENABLE_X64="1",
             PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
  done = subprocess.run([sys.executable, __file__], env=env, capture_output=True,
                        text=True, cwd=root)
  assert done.returncode == 0, done.stdout + done.stderr


def test_ieee_specials():
  x = np.array([[[0.0], [-1.0], [1000.0]]])
  cases = {("log", "x_0"): [-np.inf, np.nan, np.log(1000.0)],
           ("sqrt", "x_0"): [0.0, np.nan, np.sqrt(1000.0)],
           ("inv", "x_0"): [np.inf, -1.0, 1e-3],
           ("exp", "x_0"): [1.0, np.exp(-1.0), np.inf]}
  for prefix, expected in cases.items():
    np.testing.assert_allclose(interpreter.evaluate([list(prefix)], x)[0], expected,
                               rtol=1e-6)


def test_matches_sympy():
  prefixes, x_BxNxD = _random_batch(seed=2, count=30, num_points=10)
  y_BxN = interpreter.evaluate(prefixes, x_BxNxD)
  symbols = expressions.default_symbols(3)
  for prefix, x_NxD, y_N in zip(prefixes, x_BxNxD, y_BxN):
    fn = sympy.lambdify(symbols, expressions.to_sympy(prefix, symbols, evaluate=False),
                        "numpy")
    with np.errstate(all="ignore"):
      reference = np.broadcast_to(np.real_if_close(fn(*x_NxD.T)), y_N.shape)
    keep = _well_conditioned(prefix, x_NxD, 2.4e-7, 1e-6) & np.isreal(reference)
    np.testing.assert_allclose(y_N[keep], np.real(reference[keep]), rtol=1e-5,
                               atol=1e-30)


def _constants_gradient_case():
  prefix = ["add", 1.5, "mul", -0.25, "sin", "add", 0.3, "mul", 2.0, "x_0"]
  program = compiler.compile_batch([prefix])
  x = jnp.asarray(np.linspace(-2, 2, 7)[None, :, None], jnp.float32)
  loss = lambda c: jnp.sum(interpreter.evaluate_batch(*program.arrays, c, x)**2)
  return jnp.asarray(program.constants_BxK, jnp.float32), loss


def test_gradients_match_finite_differences():
  constants, loss = _constants_gradient_case()
  gradient = np.asarray(jax.grad(loss)(constants))[0]
  forward = np.asarray(jax.jacfwd(loss)(constants))[0]
  step = 1e-2
  for k in range(4):
    bump = np.zeros(constants.shape, np.float32)
    bump[0, k] = step
    numeric = (loss(constants + bump) - loss(constants - bump)) / (2 * step)
    np.testing.assert_allclose(gradient[k], numeric, rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(forward[k], numeric, rtol=2e-3, atol=1e-3)


def test_unselected_branches_do_not_poison_gradients():
  # x = 0 makes log, inv, sqrt and div singular and 1000 overflows exp: none is used.
  program = compiler.compile_batch([["mul", 2.0, "x_0"], ["sqrt", "mul", 2.0, "x_0"]])
  x = jnp.asarray([[[0.0], [1000.0]], [[0.0], [4.0]]], jnp.float32)
  constants = jnp.asarray(program.constants_BxK, jnp.float32)
  loss = lambda c: jnp.sum(interpreter.evaluate_batch(*program.arrays, c, x))
  assert np.all(np.isfinite(jax.grad(loss)(constants)))
  assert np.all(np.isfinite(jax.jacfwd(loss)(constants)))


def test_merged_partials_match_each_operator_alone():
  # Inside every operator's domain, _node's analytic partials agree with the jvp of
  # the table's own jnp_fn; outside it they are 0 (never NaN).
  rng = np.random.default_rng(4)
  a = jnp.asarray(rng.normal(size=500) * 2, jnp.float32)
  b = jnp.asarray(rng.normal(size=500) * 2, jnp.float32)
  for name, opcode in compiler.OPCODES.items():
    merged = interpreter._node(jnp.asarray(opcode), a, b)
    alone = interpreter.generic_node(name, a, b)
    domain = operators.OPERATORS[name].domain
    inside = (np.ones(500, bool) if domain is None else np.asarray(
        domain(a, b) if operators.OPERATORS[name].arity == 2 else domain(a)))
    for m, g in zip(merged, alone):
      np.testing.assert_allclose(np.asarray(m)[inside], np.asarray(g)[inside],
                                 rtol=2e-5, atol=1e-6, err_msg=name)
    for m in merged[1:]:
      assert np.all(np.asarray(m)[~inside] == 0), name


def test_jacobian_matches_forward_mode_per_point():
  prefixes, x_BxNxD = _random_batch(seed=5, count=100, num_points=6)
  program = compiler.compile_batch(prefixes)
  constants_BxK = jnp.asarray(program.constants_BxK, jnp.float32)
  x_BxNxD = jnp.asarray(x_BxNxD, jnp.float32)
  y_BxN, jacobian_BxKxN = jax.jit(interpreter.values_and_jacobian)(
      *program.arrays, program.edge_BxL, program.constant_edge_BxK, constants_BxK,
      x_BxNxD)
  forward_BxNxK = jax.vmap(jax.jacfwd(interpreter.evaluate_one, argnums=3))(
      *program.arrays, constants_BxK, x_BxNxD)
  np.testing.assert_array_equal(np.isnan(y_BxN), np.isnan(interpreter.evaluate(
      prefixes, np.asarray(x_BxNxD))))
  expected = np.swapaxes(np.asarray(forward_BxNxK), 1, 2)
  used = (np.arange(program.shape[2])[None, :, None]
          < program.num_constants_B[:, None, None])
  finite = np.isfinite(expected) & np.isfinite(np.asarray(y_BxN))[:, None, :] & used
  assert finite.sum() > 200  # not vacuous
  np.testing.assert_allclose(np.asarray(jacobian_BxKxN)[finite], expected[finite],
                             rtol=1e-4, atol=1e-5)


def test_arithmetic_steps_skip_the_transcendentals_without_changing_results():
  """A node step whose nodes are all arithmetic computes only those operators
  (interpreter._ARITHMETIC); values and Jacobians are bit-identical to the full
  table's, including at specials (0, inf, NaN, poles)."""
  specials = np.array([0.0, -0.0, 1.0, -2.5, 1e-30, 3e38, np.inf, -np.inf, np.nan])
  a = jnp.asarray(np.repeat(specials, len(specials)), jnp.float32)
  b = jnp.asarray(np.tile(specials, len(specials)), jnp.float32)
  for name in interpreter._ARITHMETIC:
    opcode = jnp.asarray(compiler.OPCODES[name])
    for full, subset in zip(interpreter._node(opcode, a, b),
                            interpreter._node(opcode, a, b, interpreter._ARITHMETIC)):
      np.testing.assert_array_equal(np.asarray(subset), np.asarray(full), err_msg=name)
  arithmetic = [["add", "mul", 1.5, "x_0", "inv", "sub", "x_1", -0.5],
                ["pow3", "add", "abs", "x_0", "div", 2.0, "pow2", "x_1"]]
  transcendental = ["exp", "mul", 0.3, "sin", "x_0"]
  x = np.random.default_rng(0).normal(size=(3, 16, 2))
  x[:, 0] = [0.0, -0.5]  # a pole of the first expression

  def jacobians(prefixes):
    program = compiler.compile_batch(prefixes, length=8, num_constant_slots=4)
    return [np.asarray(out) for out in jax.jit(interpreter.values_and_jacobian)(
        *program.arrays, program.edge_BxL, program.constant_edge_BxK,
        jnp.asarray(program.constants_BxK, jnp.float32),
        jnp.asarray(x[:len(prefixes)], jnp.float32))]

  alone, mixed = jacobians(arithmetic), jacobians(arithmetic + [transcendental])
  assert np.isinf(alone[0][0, 0]) and np.isfinite(alone[0]).sum() > 20
  for skipping, full in zip(alone, mixed):
    np.testing.assert_array_equal(skipping, full[:2])
  np.testing.assert_allclose(mixed[0][2], expressions.evaluate(transcendental, x[2]),
                             rtol=1e-5)  # its steps took the whole table


def test_batch_equals_one_at_a_time():
  prefixes, x_BxNxD = _random_batch(seed=3, count=12, num_points=8)
  batch = interpreter.evaluate(prefixes, x_BxNxD)
  for prefix, x_NxD, y_N in zip(prefixes, x_BxNxD, batch):
    np.testing.assert_array_equal(interpreter.evaluate([prefix], x_NxD[None])[0], y_N)


def test_unknown_variable_is_rejected():
  with pytest.raises(expressions.ExpressionError):
    interpreter.evaluate([["x_3"]], np.zeros((1, 4, 2)))


if __name__ == "__main__":  # the float64 check, run in a fresh x64 process
  assert jnp.zeros(()).dtype == jnp.float64
  _check_against_numpy(rtol=1e-12, relative=4.4e-16)
