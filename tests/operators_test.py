"""The operator table: numpy, jax.numpy and sympy agree; templates are well formed."""

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


@pytest.mark.parametrize("name", list(operators.OPERATORS))
def test_domain_marks_exactly_where_value_is_finite(name):
  op = operators.OPERATORS[name]
  if op.domain is None:
    return
  args = [_float32(a) for a in _inputs(op.arity)]
  small = np.ones(args[0].shape, bool)
  for a in args:
    small &= np.abs(np.asarray(a)) < 1e30
  inside = np.asarray(op.domain(*args))
  values = np.asarray(op.jnp_fn(*args))
  assert np.all(np.isfinite(values[inside & small]))


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
