"""Expressions in prefix (Polish) notation and their conversions.

A *prefix* is a sequence whose items are operator names from `operators.OPERATORS`,
variable names "x_0".."x_9", and Python floats (constants). It is what the model
writes (after float tokens are decoded) and what every evaluator reads:

    ["add", 1.5, "mul", -0.25, "sin", "x_0"]   ==  1.5 + (-0.25)*sin(x_0)

This module converts a prefix to and from a small tree (`Node`), sympy, an infix
string, LaTeX and the SRBench model string, and evaluates it with numpy over a whole
array of points.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Sequence, Union

import numpy as np
import sympy

from sr_jax import operators

Token = Union[str, float]
Prefix = Sequence[Token]


class ExpressionError(ValueError):
  """A malformed prefix sequence or an expression outside the language."""


@dataclasses.dataclass(frozen=True)
class Node:
  """A tree node: an operator with children, a variable, or a constant."""

  value: Token
  children: tuple["Node", ...] = ()

  @property
  def is_constant(self) -> bool:
    return not isinstance(self.value, str)

  def prefix(self) -> list[Token]:
    out: list[Token] = []
    stack = [self]
    while stack:
      node = stack.pop()
      out.append(node.value)
      stack.extend(reversed(node.children))
    return out


# Arity of every valid string token (a lookup: validation runs several times per
# candidate in inference).
_ARITY = ({name: op.arity for name, op in operators.OPERATORS.items()}
          | {name: 0 for name in operators.VARIABLES})


def _check_token(token: Token, position: int) -> int:
  """Returns the arity of a token, or raises ExpressionError naming it."""
  if isinstance(token, str):
    if token in _ARITY:
      return _ARITY[token]
    raise ExpressionError(
        f"token {position}: unknown token {token!r} (operators: "
        f"{', '.join(operators.OPERATORS)}; variables x_0..x_{operators.MAX_VARIABLES - 1})")
  if type(token) is float and math.isfinite(token):
    return 0
  if isinstance(token, (bool, np.bool_)):
    raise ExpressionError(f"token {position}: booleans are not constants ({token!r})")
  if isinstance(token, numbers.Real):
    if not math.isfinite(float(token)):
      raise ExpressionError(f"token {position}: constant {token!r} is not finite")
    return 0
  raise ExpressionError(f"token {position}: {token!r} is neither a string nor a number")


def validate(prefix: Prefix) -> None:
  """Raises ExpressionError unless `prefix` is exactly one well-formed expression."""
  if len(prefix) == 0:
    raise ExpressionError("empty prefix sequence")
  needed = 1
  for position, token in enumerate(prefix):
    if needed == 0:
      raise ExpressionError(
          f"extra tokens after a complete expression, starting at token {position} "
          f"({token!r}); {len(prefix) - position} token(s) left over")
    needed += _check_token(token, position) - 1
  if needed > 0:
    raise ExpressionError(
        f"truncated prefix sequence: {needed} operand(s) missing after the last "
        f"token ({len(prefix)} tokens)")


def parse(prefix: Prefix) -> Node:
  """Validates a prefix and builds its tree."""
  validate(prefix)
  stack: list[Node] = []
  for token in reversed(prefix):
    arity = operators.OPERATORS[token].arity if token in operators.OPERATORS else 0
    if arity == 0:
      value = token if isinstance(token, str) else float(token)
      stack.append(Node(value))
    else:
      children = tuple(stack.pop() for _ in range(arity))
      stack.append(Node(token, children))
  return stack[0]


def variables_used(prefix: Prefix) -> set[int]:
  """Indices of the variables an expression reads."""
  return {i for t in prefix if isinstance(t, str)
          for i in [operators.variable_index(t)] if i is not None}


def num_constants(prefix: Prefix) -> int:
  return sum(1 for t in prefix if not isinstance(t, str))


def skeleton(prefix: Prefix) -> tuple[str, ...]:
  """The prefix with every constant replaced by "C" (for de-duplication)."""
  return tuple(t if isinstance(t, str) else "C" for t in prefix)


# ---------------------------------------------------------------------------------
# numpy evaluation


def evaluate(prefix: Prefix, x: np.ndarray) -> np.ndarray:
  """Evaluates an expression on every row of `x` (N x D) at once, in float64.

  IEEE semantics: invalid operations give NaN, overflows give +-inf, and numpy's
  floating-point warnings are suppressed rather than leaked to the caller.
  """
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f"x must be a 2-D array (points x features), got shape {x.shape}")
  validate(prefix)
  num_points, num_features = x.shape
  used = variables_used(prefix)
  if used and max(used) >= num_features:
    raise ExpressionError(
        f"expression uses x_{max(used)} but the data has only {num_features} "
        f"feature(s)")
  stack: list[np.ndarray] = []
  with np.errstate(all="ignore"):
    for token in reversed(prefix):
      if not isinstance(token, str):
        stack.append(np.full(num_points, float(token)))
      elif token in operators.OPERATORS:
        op = operators.OPERATORS[token]
        args = [stack.pop() for _ in range(op.arity)]
        stack.append(np.asarray(op.np_fn(*args), dtype=np.float64))
      else:
        stack.append(x[:, operators.variable_index(token)])
  return stack[0]


# ---------------------------------------------------------------------------------
# sympy


def default_symbols(num_variables: int = operators.MAX_VARIABLES) -> list[sympy.Symbol]:
  return [sympy.Symbol(f"x_{i}", real=True) for i in range(num_variables)]


# Denominators of the constants written as exact fractions in sympy (k*d/2, n/3).
SMALL_DENOMINATORS = (1, 2, 3, 4)


def to_sympy(prefix: Prefix, symbols: Sequence[sympy.Symbol] | None = None,
             evaluate: bool = True) -> sympy.Expr:
  """Converts a prefix to sympy; constants that are fractions with a small
  denominator (0.5, 1.0, -3.0) become sympy's exact numbers (_sympy_number).

  With evaluate=False, sympy keeps the tree as written (no automatic rewriting such
  as sqrt(x)**2 -> x), so its numerical values equal the prefix's everywhere,
  including where the prefix gives NaN.

  With evaluate=True, a subtree without variables becomes one number, its value in
  float64 as `evaluate` gives it (NaN -> nan, overflow -> +-oo). sympy would fold it
  exactly instead: log(-8e-18) is complex there, and twenty nested logs of it under
  arcsins and cosines (a formula an untrained model writes) took sympy's evalf
  minutes, exp(exp(20)) a Float with a 9-digit exponent.
  """
  symbols = list(symbols) if symbols is not None else default_symbols()
  root = parse(prefix)
  used = variables_used(prefix)
  if used and max(used) >= len(symbols):
    raise ExpressionError(f"expression uses x_{max(used)} but only {len(symbols)} "
                          "symbol(s) were given")

  def build(node: Node) -> sympy.Expr:
    if node.is_constant:
      return _sympy_number(node.value)
    if not node.children:
      return symbols[operators.variable_index(node.value)]
    args = [build(child) for child in node.children]
    if (evaluate and all(isinstance(a, sympy.Number) for a in args)
        and not variables_used(node.prefix())):  # sympy also folds x - x to 0
      return _folded(node)
    if evaluate:
      return operators.OPERATORS[node.value].sympy_fn(*args)
    with sympy.evaluate(False):
      return operators.OPERATORS[node.value].sympy_fn(*args)

  return build(root)


def _folded(node: Node) -> sympy.Expr:
  """A subtree without variables as the sympy number of its float64 value."""
  value = evaluate(node.prefix(), np.zeros((1, 0)))[0]
  if np.isnan(value):
    return sympy.nan
  if np.isinf(value):
    return sympy.oo if value > 0 else -sympy.oo
  return _sympy_number(value)


def _sympy_number(value: float) -> sympy.Number:
  """A float that is a fraction with a small denominator (exactly the float64 nearest
  to p / q, q in SMALL_DENOMINATORS) as sympy's exact Rational, any other as a Float.

  SRBench's symbolic check compares with the true formula's integers and fractions:
  sympy leaves 1/sqrt(1.0 - v**2/c**2) - 1/sqrt(1 - v**2/c**2) and sin(0.5*k*d) -
  sin(k*d/2) unsimplified, so a law written with 1.0 or 0.5 counts as unsolved
  (II.13.23, II.13.34, III.15.12 found exactly; BENCHMARKS.md). The check fails the
  other way for a truth written with 0.5 inside a function (exp(0.5*x)); SRBench's
  truths write such halves as /2, and their float coefficients (Strogatz's 0.5*x**2,
  0.1*sin(y)**2) stand where sympy matches either form, or are no small fraction.
  """
  fraction = small_fraction(float(value))
  return sympy.Float(value) if fraction is None else fraction


def small_fraction(value: float, tolerance: float = 0.0) -> sympy.Rational | None:
  """The fraction p / q, q in SMALL_DENOMINATORS (the smallest first), within
  `tolerance` (relative) of value; with 0, value must be the float64 nearest to p / q.
  None where there is none, and beyond float64's integers, for inf and nan."""
  if not abs(value) < 2.0 ** 53:  # beyond, every float is an integer
    return None
  for denominator in SMALL_DENOMINATORS:
    numerator = round(value * denominator)
    if abs(value - numerator / denominator) <= tolerance * abs(value):
      return sympy.Rational(numerator, denominator)
  return None


def is_small_fraction(value: float) -> bool:
  """Whether the constant is written as an exact fraction (see _sympy_number)."""
  return small_fraction(float(value)) is not None


def _integer_power(base: list[Token], n: int) -> list[Token]:
  """Prefix of base**n for an integer n >= 1, using pow2 / pow3 / mul."""
  if n == 1:
    return list(base)
  if n == 2:
    return ["pow2", *base]
  if n == 3:
    return ["pow3", *base]
  half = _integer_power(base, n // 2)
  squared = ["pow2", *half]
  return ["mul", *squared, *base] if n % 2 else squared


def from_sympy(expr: sympy.Expr,
               symbols: Sequence[sympy.Symbol] | None = None) -> list[Token]:
  """Converts a sympy expression to a prefix over the operator set.

  n-ary Add/Mul become left-nested binary nodes (negative terms become `sub`,
  negative powers a `div` or `inv`); Pow with an integer exponent becomes
  pow2/pow3/mul/inv, with exponent p/2 a sqrt, and any other exponent the binary
  `pow`. Numbers (integers, rationals, pi, E, ...) become float constants.
  `symbols[i]` maps to x_i; by default symbols named x_i do.
  """
  expr = sympy.sympify(expr)
  if symbols is not None:
    index_of = {s: i for i, s in enumerate(symbols)}
  else:
    index_of = {}
    for s in expr.free_symbols:
      i = operators.variable_index(s.name)
      if i is None:
        raise ExpressionError(f"symbol {s.name!r} is not a variable x_0..x_9; pass "
                              "`symbols` to name the variables")
      index_of[s] = i
  if len(index_of) > operators.MAX_VARIABLES:
    raise ExpressionError(f"{len(index_of)} variables; at most "
                          f"{operators.MAX_VARIABLES} are supported")
  inverse_functions = {op.sympy_fn: op.name for op in operators.OPERATORS.values()
                       if op.arity == 1 and isinstance(op.sympy_fn, type)}

  def number(e: sympy.Expr) -> list[Token]:
    value = complex(e)
    if value.imag != 0 or not math.isfinite(value.real):
      raise ExpressionError(f"constant {e} is not a finite real number")
    return [float(value.real)]

  def power(base: sympy.Expr, exponent: sympy.Expr) -> list[Token]:
    if exponent.is_Integer:
      n = int(exponent)
      if n == 0:
        return [1.0]
      positive = _integer_power(convert(base), abs(n))
      return positive if n > 0 else ["inv", *positive]
    if exponent.is_Rational and exponent.q == 2:
      p = int(exponent.p)
      root = ["sqrt", *_integer_power(convert(base), abs(p))]
      return root if p > 0 else ["inv", *root]
    return ["pow", *convert(base), *convert(exponent)]

  def product(factors: list[sympy.Expr]) -> list[Token]:
    coefficient = sympy.Integer(1)
    numerator, denominator = [], []
    for factor in factors:
      if factor.is_number:
        coefficient *= factor
      elif (factor.is_Pow and factor.exp.is_number and factor.exp.is_real
            and factor.exp < 0):
        denominator.append(sympy.Pow(factor.base, -factor.exp))
      else:
        numerator.append(factor)
    top = [convert(f) for f in numerator]
    if coefficient != 1 or not top:
      top.insert(0, number(coefficient))
    out = top[0]
    for term in top[1:]:
      out = ["mul", *out, *term]
    for term in denominator:
      out = ["inv", *convert(term)] if out == [1.0] else ["div", *out, *convert(term)]
    return out

  def convert(e: sympy.Expr) -> list[Token]:
    if e.is_Symbol:
      if e not in index_of:
        raise ExpressionError(f"unknown symbol {e}")
      return [f"x_{index_of[e]}"]
    if e.is_number:
      return number(e)
    if e.is_Add:
      terms = list(e.args)
      out = convert(terms[0])
      for term in terms[1:]:
        coefficient, rest = term.as_coeff_Mul()
        if coefficient.is_negative:
          out = ["sub", *out, *convert(-coefficient * rest)]
        else:
          out = ["add", *out, *convert(term)]
      return out
    if e.is_Mul:
      return product(list(e.args))
    if e.is_Pow:
      if e.exp.is_number and e.exp.is_real and e.exp < 0 and not e.exp.is_Integer:
        return product([e])
      return power(e.base, e.exp)
    if e.func in inverse_functions and len(e.args) == 1:
      return [inverse_functions[e.func], *convert(e.args[0])]
    raise ExpressionError(f"sympy function {e.func.__name__} has no operator in "
                          f"sr_jax's language (in {e})")

  out = convert(expr)
  validate(out)
  return out


_FLOAT64_MAX = float(np.finfo(np.float64).max)
_FLOAT64_TINY = float(np.finfo(np.float64).smallest_subnormal)


def model_string(prefix: Prefix, feature_names: Sequence[str]) -> str:
  """The SRBench model string: sympy-parsable, in the user's column names.

  to_sympy folds constant subtrees in float64, but sympy still multiplies constants
  across a variable exactly: 1e300 * (1e300 * x) becomes 1e600*x, a Float that float64
  cannot hold (and exp(exp(20)) folded exactly has a 9-digit exponent, whose string
  takes hours to parse back). Constants beyond float64's range become +-oo or 0, which
  is what evaluating the formula in float64 gives.
  """
  symbols = [sympy.Symbol(str(name), real=True) for name in feature_names]
  expr = to_sympy(prefix, symbols)
  extreme = {}
  for number in expr.atoms(sympy.Float):
    magnitude = abs(number)
    if magnitude > _FLOAT64_MAX:
      extreme[number] = sympy.oo if number > 0 else -sympy.oo
    elif 0 < magnitude < _FLOAT64_TINY:
      extreme[number] = sympy.Integer(0)
  return str(expr.xreplace(extreme) if extreme else expr)


# ---------------------------------------------------------------------------------
# rendering


def _format_constant(value: float, style: str) -> str:
  if style == "infix":
    return repr(float(value))
  mantissa, exponent = f"{value:.4g}", ""
  if "e" in mantissa:
    mantissa, exponent = mantissa.split("e")
    return rf"{mantissa} \cdot 10^{{{int(exponent)}}}"
  return mantissa


def _render(node: Node, style: str, names: Sequence[str]) -> tuple[str, float]:
  """Returns (text, precedence) of a node in the 'infix' or 'latex' style."""
  if node.is_constant:
    prec = operators.PREC_NEG_CONST if node.value < 0 else operators.PREC_ATOM
    return _format_constant(node.value, style), prec
  if not node.children:
    return names[operators.variable_index(node.value)], operators.PREC_ATOM
  op = operators.OPERATORS[node.value]
  if style == "infix":
    template, prec, needs = op.infix, op.prec, op.operand_prec
    left, right = "(", ")"
  else:
    template, prec, needs = op.latex, op.latex_prec, op.latex_operand_prec
    left, right = r"\left(", r"\right)"
  text = template
  for i, child in enumerate(node.children):
    child_text, child_prec = _render(child, style, names)
    if child_prec < needs[i]:
      child_text = f"{left}{child_text}{right}"
    text = text.replace(f"${i}", child_text)
  return text, prec


def to_infix(prefix: Prefix, names: Sequence[str] | None = None) -> str:
  """A readable infix string (also sympy-parsable, with sympy's function names)."""
  return _render(parse(prefix), "infix", names or operators.VARIABLES)[0]


def to_latex(prefix: Prefix, names: Sequence[str] | None = None) -> str:
  latex_names = names or [f"x_{{{i}}}" for i in range(operators.MAX_VARIABLES)]
  return _render(parse(prefix), "latex", latex_names)[0]
