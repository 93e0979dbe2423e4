"""Exact algebraic rewrites that make a found formula smaller to read.

The search and tidy.py work on prefix trees; a user (and SRBench's model size) reads
the sympy form. The two disagree about what is small: the search writes
q v (-2.78 B sin(theta - pi) + 2.78 Ef / v) or m_0 - 0.16 m_0 v / c + 0.89 m_0 v^2 / c^2,
where pulling out the common factors (sympy's factor_terms), multiplying out
(expand), or both, gives the same function in fewer nodes: q (B v sin(theta) + Ef),
m_0 (1 - 0.16 v / c + 0.89 v^2 / c^2). Constants that such a rewrite multiplies into an
integer up to rounding (0.359 * 2.784 = 1.0000000000001) become that integer, and so
do constants within 1e-8 of a fraction with a small denominator (0.33333333068 -> 1/3:
the refinement stops short of the exact value), which the model string then writes
exactly (alpha n / 3, sin(k d / 2)); at equal size the form with fewer inexact
constants wins.

Before rewriting, constants that differ only in their last bits (the refinement fits
each copy of a repeated weight on its own: 6.23357021839918 and 6.233570218399183) are
made one, so that a common factor can come out, and a constant within rounding of a
multiple of pi/2 becomes it, so that sympy's own rules apply (sin(theta - pi) is
-sin(theta)). Two rewrites sympy has no exact equivalent for: square roots of a
product merged (sqrt(a) sqrt(b) / sqrt(c) -> sqrt(a b / c), sympy's powsimp stops at
sqrt(a b) / sqrt(c)), and a negative coefficient of a log taken inside it
(-n log(V1/V2) -> n log(V2/V1)). Both hold where the formula is real, which the
numerical check asks of the dataset's points. On 117 Feynman problems at 2 s these
took SRBench's symbolic-solution rate from 42.7% to 45.3% (I.12.11, I.44.4, I.47.23;
the same R2 rates and sizes otherwise; BENCHMARKS.md).

A rewrite is kept only when it has fewer SRBench nodes, no more prefix tokens (so
the selection rule, which prices tokens, would pick it over the formula it replaces),
and gives the same values on the dataset's points: sympy reasons about real numbers,
the formulas are evaluated in floating point with NaN outside their domains, so the
check is numerical, not symbolic.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import sympy

from sr_jax import expressions, metrics

# A rewrite that multiplies out more terms than this is not tried: expanding
# (a + b + c)^3 (a + b)^3 is slow in sympy and never shorter.
MAX_EXPANDED_TERMS = 64
# Relative distance to a multiple of pi / 2 under which a constant is that multiple.
HALF_PI_TOLERANCE = 1e-9
# Relative distance to an integer or a fraction with a small denominator (n / 3) under
# which a rewritten constant is that number: the refinement leaves 1/3 as 0.33333333068
# (II.11.27), and the check on the dataset's values refuses a rounding that matters.
FRACTION_TOLERANCE = 1e-8
# Relative distance under which two constants are one value fitted twice.
SAME_TOLERANCE = 1e-12
# Relative agreement, on the dataset's points, of a rewrite with the formula.
VALUE_TOLERANCE = 1e-8


def _expanded_terms(expr: sympy.Expr) -> int:
  """How many terms sympy.expand(expr) can produce at most (an upper bound; a
  denominator counts too: expand multiplies out (a + b)**-3 as well)."""
  if expr.is_Add:
    return sum(_expanded_terms(a) for a in expr.args)
  if expr.is_Mul:
    return math.prod(_expanded_terms(a) for a in expr.args)
  if expr.is_Pow and expr.exp.is_Integer:
    return _expanded_terms(expr.base) ** abs(int(expr.exp))
  if expr.args:  # a function: expand works inside it, but its terms stay inside
    return max(_expanded_terms(a) for a in expr.args)
  return 1


def _expand(expr: sympy.Expr) -> sympy.Expr:
  return sympy.expand(expr) if _expanded_terms(expr) <= MAX_EXPANDED_TERMS else expr


def _roots_merged(expr: sympy.Expr) -> sympy.Expr:
  """Every product's square-root factors as one square root: sqrt(a) sqrt(b) / sqrt(c)
  -> sqrt(a b / c) (equal where a, b, c >= 0, c > 0)."""
  def merge(product: sympy.Expr) -> sympy.Expr:
    roots = [f for f in product.args if f.is_Pow and f.exp in (sympy.S.Half, -sympy.S.Half)]
    if len(roots) < 2:
      return product
    others = [f for f in product.args if f not in roots]
    inside = sympy.Mul(*[f.base if f.exp == sympy.S.Half else 1 / f.base for f in roots])
    return sympy.Mul(*others, sympy.sqrt(inside))
  return expr.replace(lambda e: e.is_Mul, merge)


def _log_signs_flipped(expr: sympy.Expr) -> sympy.Expr:
  """A product with a negative number and one log factor, the sign taken into the log:
  -2 n log(a / b) -> 2 n log(b / a) (equal where the log's argument is positive)."""
  def flip(product: sympy.Expr) -> sympy.Expr:
    coefficient, factors = product.as_coeff_mul()
    logs = [f for f in factors if isinstance(f, sympy.log)]
    if not coefficient.is_negative or len(logs) != 1:
      return product
    rest = [f for f in factors if f is not logs[0]]
    return sympy.Mul(-coefficient, *rest, sympy.log(1 / logs[0].args[0]))
  return expr.replace(lambda e: e.is_Mul, flip)


REWRITES: tuple[Callable[[sympy.Expr], sympy.Expr], ...] = (
    lambda e: e,  # the constants snapped (below) may already simplify: sin(x - pi)
    sympy.factor_terms,
    _expand,
    lambda e: sympy.factor_terms(_expand(e)),
    _roots_merged,
    _log_signs_flipped,
)


def _constants_snapped(expr: sympy.Expr) -> sympy.Expr:
  """Floats whose magnitude is within SAME_TOLERANCE (relative) of a larger one's
  become it (with their sign: sympy holds a - 6.2 x as a + (-6.2) x), and floats within
  HALF_PI_TOLERANCE of k pi / 2 (0 < |k| <= 8) become that exact multiple of pi."""
  snapped = {}
  numbers = sorted(expr.atoms(sympy.Float), key=lambda f: -abs(float(f)))
  for k, number in enumerate(numbers):
    magnitude = abs(float(number))
    for earlier in numbers[:k]:
      if (earlier not in snapped
          and abs(abs(float(earlier)) - magnitude) <= SAME_TOLERANCE * magnitude):
        snapped[number] = earlier if (earlier > 0) == (number > 0) else -earlier
        break
  for number in numbers:
    value = float(snapped.get(number, number))
    if not math.isfinite(value):
      continue
    halves = round(value / (math.pi / 2))
    if 0 < abs(halves) <= 8 and abs(value - halves * math.pi / 2) <= (
        HALF_PI_TOLERANCE * abs(value)):
      snapped[number] = halves * sympy.pi / 2
  return expr.xreplace(snapped) if snapped else expr


def _fractions_rounded(expr: sympy.Expr) -> sympy.Expr:
  """Floats within FRACTION_TOLERANCE (relative) of p / q, q in
  expressions.SMALL_DENOMINATORS, become that fraction (the smallest q first)."""
  rounded = {}
  for number in expr.atoms(sympy.Float):
    fraction = expressions.small_fraction(float(number), FRACTION_TOLERANCE)
    if fraction is not None:
      rounded[number] = fraction
  return expr.xreplace(rounded) if rounded else expr


def _inexact_constants(prefix: expressions.Prefix) -> int:
  """Constants the model string writes as floats, not as exact fractions."""
  return sum(1 for token in prefix
             if not isinstance(token, str) and not expressions.is_small_fraction(token))


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
  finite = np.isfinite(a)
  if not np.array_equal(finite, np.isfinite(b)) or not finite.any():
    return False
  scale = np.max(np.abs(a[finite]))
  return bool(np.all(np.abs(a[finite] - b[finite]) <= VALUE_TOLERANCE * scale))


def srbench_size(prefix: expressions.Prefix, num_features: int) -> int:
  """SRBench's model size of the formula, as its model string reads."""
  names = [f"x_{i}" for i in range(num_features)]
  return metrics.model_size(expressions.model_string(prefix, names), names)


def simplified(prefix: expressions.Prefix, x: np.ndarray) -> list:
  """The smallest of prefix and its exact rewrites (by SRBench size, then tokens, then
  constants written as floats: 0.333333330677938 as 1/3) that evaluates like prefix
  on x (N x D); prefix itself when none does."""
  prefix = list(prefix)
  num_features = x.shape[1]
  symbols = expressions.default_symbols(num_features)
  values = expressions.evaluate(prefix, x)
  rank = lambda p: (srbench_size(p, num_features), len(p), _inexact_constants(p))
  best, best_rank = prefix, rank(prefix)
  expr = _constants_snapped(expressions.to_sympy(prefix, symbols))
  tried = set()
  for rewrite in REWRITES:
    try:
      candidate = expressions.from_sympy(_fractions_rounded(rewrite(expr)), symbols)
    except (expressions.ExpressionError, ArithmeticError, RecursionError, TypeError,
            ValueError):
      continue  # a form outside the operator set, a non-real or overflowing constant
    key = tuple(map(str, candidate))
    if key in tried or len(candidate) > len(prefix):
      continue
    tried.add(key)
    candidate_rank = rank(candidate)
    if (candidate_rank < best_rank
        and _same_values(values, expressions.evaluate(candidate, x))):
      best, best_rank = candidate, candidate_rank
  return best

