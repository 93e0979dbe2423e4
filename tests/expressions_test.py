"""Prefix expressions: validation, sympy round trips, numpy evaluation, rendering."""

import warnings

import numpy as np
import pytest
import sympy

from random_trees import random_prefix
from sr_jax import expressions as ex
from sr_jax import metrics

SYMBOLS = ex.default_symbols(3)


def _lambdify(expr):
  return sympy.lambdify(SYMBOLS, expr, modules="numpy")


def _values(fn, x):
  """Real-valued evaluation: lambdify runs constant sub-trees in Python, where a
  negative base to a fractional power is complex; real semantics make that NaN."""
  with np.errstate(all="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    values = np.broadcast_to(np.asarray(fn(*x.T)), x.shape[:1])
  if np.iscomplexobj(values):
    values = np.where(values.imag == 0, values.real, np.nan)
  return values.astype(np.float64)


def _assert_close_where_stable(got, reference, x):
  """got == reference(x) in NaN pattern everywhere and in value to 1e-9 wherever the
  reference is stable: chaotic sub-expressions such as cos(a**(x**6)) turn a 1-ulp
  difference into any value, so those points say nothing about correctness."""
  expected = _values(reference, x)
  assert np.array_equal(np.isnan(got), np.isnan(expected))
  nudged = _values(reference, x * (1 + 1e-13))
  with np.errstate(all="ignore"):
    stable = np.abs(nudged - expected) <= 1e-11 * np.abs(expected) + 1e-300
  stable |= expected == nudged
  np.testing.assert_allclose(got[stable], expected[stable], rtol=1e-9, atol=1e-300)


def _assert_numerically_equal(a, b, x):
  va, vb = _values(_lambdify(a), x), _values(_lambdify(b), x)
  both = np.isfinite(va) & np.isfinite(vb)
  assert np.mean(np.isfinite(va) == np.isfinite(vb)) >= 0.99, (a, b)
  np.testing.assert_allclose(va[both], vb[both], rtol=1e-9, atol=1e-12,
                             err_msg=f"{a} != {b}")


def test_prefix_sympy_prefix_sympy_round_trip():
  checked = 0
  for seed in range(200):
    rng = np.random.default_rng(seed)
    prefix = random_prefix(rng)
    first = ex.to_sympy(prefix, SYMBOLS)
    if first.has(sympy.I, sympy.zoo, sympy.nan, sympy.oo):
      # A constant sub-tree outside the real domain (e.g. sqrt(-0.7)): NaN in the
      # prefix, complex in sympy; from_sympy must refuse it by name.
      with pytest.raises(ex.ExpressionError, match="not a finite real"):
        ex.from_sympy(first, SYMBOLS)
      continue
    again = ex.to_sympy(ex.from_sympy(first, SYMBOLS), SYMBOLS)
    x = rng.uniform(0.1, 3, size=(100, 3))
    if sympy.simplify(first - again) != 0:
      _assert_numerically_equal(first, again, x)
    checked += 1
  assert checked >= 150


@pytest.mark.parametrize("seed", range(200))
def test_numpy_evaluator_equals_lambdify(seed):
  rng = np.random.default_rng(1000 + seed)
  prefix = random_prefix(rng)
  x = rng.uniform(-3, 3, size=(64, 3))
  reference = _lambdify(ex.to_sympy(prefix, SYMBOLS, evaluate=False))
  _assert_close_where_stable(ex.evaluate(prefix, x), reference, x)


def test_evaluator_ieee_semantics_and_no_warnings():
  x = np.array([[0.0], [-1.0], [1000.0]])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    inv = ex.evaluate(["inv", "x_0"], x)
    log = ex.evaluate(["log", "x_0"], x)
    exp = ex.evaluate(["exp", "x_0"], x)
  assert inv[0] == np.inf and inv[1] == -1.0
  assert log[0] == -np.inf and np.isnan(log[1])
  assert exp[2] == np.inf


def test_evaluator_rejects_bad_input():
  with pytest.raises(ex.ExpressionError, match="x_2 but the data has only 2"):
    ex.evaluate(["add", "x_0", "x_2"], np.zeros((4, 2)))
  with pytest.raises(ValueError, match="2-D"):
    ex.evaluate(["x_0"], np.zeros(4))


@pytest.mark.parametrize("prefix, message", [
    ([], "empty"),
    (["add", "x_0"], "truncated"),
    (["sin"], "truncated"),
    (["x_0", "x_1"], "extra tokens"),
    (["add", "x_0", "x_1", 2.0], "extra tokens"),
    (["foo", "x_0"], "unknown token 'foo'"),
    (["x_10"], "unknown token 'x_10'"),
    (["mul", float("nan"), "x_0"], "not finite"),
    (["mul", None, "x_0"], "neither a string nor a number"),
])
def test_malformed_prefixes_are_named(prefix, message):
  with pytest.raises(ex.ExpressionError, match=message):
    ex.validate(prefix)


def test_from_sympy_maps_sympy_forms_to_the_operator_set():
  x0, x1 = SYMBOLS[:2]
  cases = {
      x0 + x1 + 2: None,                       # n-ary Add
      x0 * x1 * 3: None,                       # n-ary Mul
      -x0: None,                               # negation
      x0 - 2 * x1: "sub",                      # negative term -> sub
      x0 ** 2: "pow2",
      x0 ** 3: "pow3",
      x0 ** 7: None,                           # repeated squaring
      x0 ** -1: "inv",
      x0 ** -2: "inv",
      sympy.sqrt(x0): "sqrt",
      x0 ** sympy.Rational(3, 2): "sqrt",
      x0 ** sympy.Rational(-1, 2): "inv",
      x0 ** sympy.Rational(1, 3): "pow",       # no cube root operator
      x0 ** x1: "pow",
      sympy.Rational(2, 3) * x0 / x1: "div",
      sympy.pi * sympy.exp(-x0): "exp",
      sympy.Abs(x0) + sympy.atan(x1): "arctan",
  }
  x = np.random.default_rng(0).uniform(0.5, 2, size=(50, 3))
  for expr, operator in cases.items():
    prefix = ex.from_sympy(expr, SYMBOLS)
    if operator is not None:
      assert operator in prefix, (expr, prefix)
    _assert_numerically_equal(expr, ex.to_sympy(prefix, SYMBOLS), x)


def test_from_sympy_rejects_what_the_language_cannot_say():
  x0 = SYMBOLS[0]
  with pytest.raises(ex.ExpressionError, match="sinh"):
    ex.from_sympy(sympy.sinh(x0), SYMBOLS)
  with pytest.raises(ex.ExpressionError, match="not a finite real"):
    ex.from_sympy(x0 + sympy.I, SYMBOLS)
  with pytest.raises(ex.ExpressionError, match="not a variable"):
    ex.from_sympy(sympy.Symbol("velocity") + 1)


@pytest.mark.parametrize("seed", range(100))
def test_infix_is_sympy_parsable_and_equal(seed):
  rng = np.random.default_rng(2000 + seed)
  prefix = random_prefix(rng)
  names = {s.name: s for s in SYMBOLS}
  parsed = sympy.parse_expr(ex.to_infix(prefix), local_dict=names, evaluate=False)
  x = rng.uniform(0.1, 3, size=(64, 3))
  _assert_close_where_stable(ex.evaluate(prefix, x), _lambdify(parsed), x)


def test_infix_and_latex_by_hand():
  prefix = ["add", 1.5, "mul", -0.25, "sin", "sub", "x_0", "add", "x_1", 2.0]
  assert ex.to_infix(prefix) == "1.5 + -0.25*sin(x_0 - (x_1 + 2.0))"
  assert ex.to_latex(prefix) == (
      r"1.5 + -0.25 \cdot \sin{\left(x_{0} - \left(x_{1} + 2\right) \right)}")
  assert ex.to_infix(["pow2", "add", "x_0", 1.0]) == "(x_0 + 1.0)**2"
  assert ex.to_latex(["div", "x_0", "sqrt", "x_1"]) == r"\frac{x_{0}}{\sqrt{x_{1}}}"
  assert ex.to_latex(["mul", 1.23456e-7, "x_0"]) == r"1.235 \cdot 10^{-7} \cdot x_{0}"
  assert ex.to_infix(["pow", -2.0, "x_0"]) == "(-2.0)**x_0"


def test_model_string_uses_column_names():
  prefix = ["add", 0.5, "mul", 2.0, "cos", "x_1"]
  text = ex.model_string(prefix, ["mass", "theta"])
  assert "theta" in text and "x_1" not in text
  parsed = sympy.parse_expr(text, local_dict={"mass": sympy.Symbol("mass"),
                                             "theta": sympy.Symbol("theta")})
  theta = sympy.Symbol("theta")
  assert sympy.simplify(parsed - (0.5 + 2.0 * sympy.cos(theta))) == 0


def test_small_fractions_are_written_exactly():
  """SRBench's check (metrics.symbolic_solution) cannot cancel 1.0 against the true
  formula's 1, nor sin(0.5*k*d) against sin(k*d/2): a law found exactly must read with
  integers and fractions."""
  prefix = ["div", "x_0", "sqrt", "sub", 1.0, "div", "pow2", "x_1", "pow2", "x_2"]
  names = ["m_0", "v", "c"]
  text = ex.model_string(prefix, names)
  assert text == "m_0/sqrt(1 - v**2/c**2)"
  truth = "m_0/sqrt(1-v**2/c**2)"
  assert metrics.symbolic_solution(text, truth, names).solved
  assert not metrics.symbolic_solution(text.replace("1 -", "1.0 -"), truth, names).solved
  # Likewise halves, thirds and quarters, exactly as float64 holds them, and no others.
  assert ex.model_string(["sin", "mul", 0.5, "x_0"], ["x"]) == "sin(x/2)"
  assert ex.model_string(["mul", 1 / 3, "x_0"], ["x"]) == "x/3"
  assert ex.model_string(["mul", -2.25, "x_0"], ["x"]) == "-9*x/4"
  assert ex.model_string(["mul", -3.0, "x_0"], ["x"]) == "-3*x"
  assert ex.model_string(["mul", 0.2, "x_0"], ["x"]) == "0.2*x"
  assert ex.model_string(["mul", 0.3333333, "x_0"], ["x"]) == "0.3333333*x"
  assert ex.model_string(["mul", 2.0 ** 60, "x_0"], ["x"]) == "1.15292150460685e+18*x"
  names = ["U", "k", "d"]
  text = ex.model_string(["mul", 4.0, "mul", "x_0", "pow2", "sin", "mul", 0.5, "mul",
                          "x_1", "x_2"], names)
  assert metrics.symbolic_solution(text, "2*U*(1-cos(k*d))", names).solved


def test_helpers():
  prefix = ["add", 1.5, "mul", "x_2", "x_0"]
  assert ex.variables_used(prefix) == {0, 2}
  assert ex.num_constants(prefix) == 1
  assert ex.skeleton(prefix) == ("add", "C", "mul", "x_2", "x_0")
  assert ex.parse(prefix).prefix() == prefix


@pytest.mark.parametrize("constant", [
    ["log", -2.0],  # complex in sympy, NaN in the formula
    ["sqrt", "sub", 1.0, 5.0],
    ["exp", "exp", 20.0],  # overflows float64
    ["mul", -1.0, "exp", "exp", 20.0],
    ["add", "sin", 0.5, "pow2", 3.0],
    ["div", 1.0, 0.0],
])
def test_constant_subtrees_become_their_float64_values(constant):
  value = ex.evaluate(constant, np.zeros((1, 0)))[0]
  folded = ex.to_sympy(["add", "x_0", *constant], SYMBOLS) - SYMBOLS[0]
  if np.isnan(value):
    assert folded is sympy.nan
  else:
    assert float(folded) == value  # inf included
  # A variable that cancels is not a constant subtree: x - x is sympy's 0, exp of it 1.
  assert ex.to_sympy(["exp", "sub", "x_0", "x_0"], SYMBOLS) == 1


def test_nested_functions_of_a_constant_convert_at_once():
  """An untrained model wrote this: with sympy folding it exactly (twenty logs of a
  complex number), a fit's candidate table took minutes and more."""
  prefix = ["cos"] * 10 + ["arcsin"] * 9 + ["log"] * 19 + [-8.297e-18]
  assert ex.to_sympy(prefix, SYMBOLS) is sympy.nan
  assert np.isnan(ex.evaluate(prefix, np.zeros((1, 0)))[0])


def test_model_string_keeps_constants_in_float64_range():
  """Constants sympy multiplies together across a variable (1e300 * (1e300 * x)),
  or that overflow when folded, are written as float64 evaluation gives them (inf,
  or 0 for underflow)."""
  huge = ex.model_string(["mul", "exp", "exp", 20.0, "x_0"], ["x"])
  tiny = ex.model_string(["add", "x_0", "exp", "mul", -1.0, "exp", 20.0], ["x"])
  product = ex.model_string(["mul", 1e300, "mul", "x_0", 1e300], ["x"])
  assert huge == "oo*x" and product == "oo*x"
  assert tiny == "x"
  with np.errstate(over="ignore"):
    assert np.isinf(np.exp(np.exp(20.0))) and np.exp(-np.exp(20.0)) == 0.0
