"""The operator table: numpy, jax.numpy and sympy agree; templates are well formed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy

from sr_jax import operators


def _float32(a):
  with np.errstate(over="ignore"):
    return jnp.asarray(np.asarray(a, np.float32))


def _inputs(arity):
  rng = np.random.default_rng(0)
  values = np.concatenate([rng.uniform(-3, 3, 200), [0.0, -1.0, 1.0, 1e300, -1e300]])
  return [rng.permutation(values) for _ in range(arity)]


@pytest.mark.parametrize("name", list(operators.OPERATORS))
def test_numpy_jax_and_sympy_agree(name):
  op = operators.OPERATORS[name]
  args = _inputs(op.arity)
  symbols = sympy.symbols(f"a0:{op.arity}", real=True)
  sympy_fn = sympy.lambdify(symbols, op.sympy_fn(*symbols), modules="numpy")
  with np.errstate(all="ignore"):
    expected = np.broadcast_to(sympy_fn(*args), args[0].shape)
    got_numpy = op.np_fn(*args)
  got_jax = np.asarray(op.jnp_fn(*[_float32(a) for a in args]))
  np.testing.assert_allclose(got_numpy, expected, rtol=1e-12, equal_nan=True)
  finite = np.isfinite(expected) & (np.abs(expected) < 1e30)
  for a in args:
    finite &= np.abs(a) < 1e30
  np.testing.assert_allclose(got_jax[finite], expected[finite], rtol=2e-5, atol=1e-6)
  assert np.array_equal(np.isnan(got_jax[finite]), np.isnan(expected[finite]))


def _smooth_at(op, args, h=1e-6):
  """Per point: the value is finite, the one-sided difference quotients of every operand
  agree in float64 (no pole, no kink, no edge of the real domain), and JAX's gradient is
  finite (pow's gradient in the exponent is NaN at base 0: x**b = exp(b log x))."""
  with np.errstate(all="ignore"):
    value = op.np_fn(*args)
    ok = np.isfinite(value)
    for k in range(op.arity):
      step = [a + h if j == k else a for j, a in enumerate(args)]
      back = [a - h if j == k else a for j, a in enumerate(args)]
      right = (op.np_fn(*step) - value) / h
      left = (value - op.np_fn(*back)) / h
      ok &= np.isfinite(right) & np.isfinite(left)
      ok &= np.abs(right - left) <= 1e-3 * (1 + np.abs(right) + np.abs(left))
  gradient = jax.vmap(jax.grad(lambda *a: op.jnp_fn(*a), argnums=tuple(range(op.arity))))(
      *[jnp.asarray(a, jnp.float32) for a in args])
  for g in gradient:
    ok &= np.isfinite(np.asarray(g))
  return ok


@pytest.mark.parametrize("name", list(operators.OPERATORS))
def test_domain_marks_exactly_where_the_operator_is_finite_and_smooth(name):
  """Both directions, for every operator: inside its domain (everywhere when it has
  none) the value and JAX's gradient are finite and the function is smooth; outside,
  it is not (a pole, a kink or the edge of its real domain)."""
  op = operators.OPERATORS[name]
  values = np.concatenate([np.random.default_rng(1).uniform(-3, 3, 150),
                           [0.0, 1.0, -1.0, 2.0, 0.5]])
  grids = np.meshgrid(*[values] * op.arity, indexing="ij")
  args = [g.ravel() for g in grids]  # every pair of values, zeros and +-1 included
  inside = (np.ones(args[0].shape, bool) if op.domain is None
            else np.asarray(op.domain(*[jnp.asarray(a) for a in args])))
  smooth = _smooth_at(op, args)
  assert inside.any()
  if name == "pow":
    # Conservative at base 0: 0**b is smooth for b >= 1, but the guard keeps the whole
    # a <= 0 half out (a real power of a negative base is NaN for most b).
    extra = smooth & ~inside
    assert np.all(args[0][extra] == 0) and np.all(args[1][extra] >= 1)
    smooth &= ~extra
  np.testing.assert_array_equal(inside, smooth, err_msg=f"{name}: domain vs smoothness")


@pytest.mark.parametrize("name", list(operators.OPERATORS))
def test_templates_name_every_operand(name):
  op = operators.OPERATORS[name]
  for template in (op.infix, op.latex):
    for i in range(op.arity):
      assert f"${i}" in template
    assert f"${op.arity}" not in template
  assert len(op.operand_prec) == op.arity == len(op.latex_operand_prec)


def test_e2e_generator_weights():
  weights = {n: op.generator_weight for n, op in operators.OPERATORS.items()}
  unary = {n: w for n, w in weights.items() if operators.OPERATORS[n].arity == 1}
  assert sum(unary.values()) == pytest.approx(17.4)
  assert unary["sqrt"] / 17.4 == pytest.approx(0.287, abs=1e-3)
  assert weights["div"] == weights["arcsin"] == weights["arccos"] == 0


def test_variable_index():
  assert operators.variable_index("x_0") == 0
  assert operators.variable_index("x_9") == 9
  for bad in ("x_10", "x_01", "x_", "y_1", "x_-1"):
    assert operators.variable_index(bad) is None
