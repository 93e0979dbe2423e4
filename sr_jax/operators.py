"""The operator table: the single source of truth for sr_jax's expression language.

Every other module (evaluators, sympy conversion, rendering, tokens, generator) reads
`OPERATORS`; adding an operator here is all it takes to teach it to the system. (For
speed, the JAX interpreter merges the known operators' transcendental calls by hand in
`interpreter._node`; a new operator works at once through its generic fallback and is
fast once added there.)

Numeric semantics are IEEE: an invalid operation gives NaN, an overflow gives +-inf,
division by zero gives +-inf (1/0 = inf, log(0) = -inf). The numpy and jax.numpy
functions agree on this; the `domain` predicates say where an operator is finite and
differentiable, so that JAX code can guard its inputs (an unselected branch of a
`jnp.where` still poisons gradients otherwise).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
import numpy as np
import sympy

# Precedence of a rendered sub-expression: an operand is parenthesised when its
# precedence is lower than what its parent asks for.
PREC_ADD = 1
PREC_MUL = 2
PREC_NEG_CONST = 2.5  # "-2": fine after "*" or "+", not as the base of "**"
PREC_POW = 3
PREC_ATOM = 10


@dataclasses.dataclass(frozen=True)
class Operator:
  """One operator of the language.

  Templates use `$0` and `$1` for the rendered operands. `operand_prec` gives, per
  operand, the precedence that operand must reach to go without parentheses.
  """

  name: str
  arity: int
  np_fn: Callable[..., np.ndarray]
  jnp_fn: Callable[..., jnp.ndarray]
  sympy_fn: Callable[..., sympy.Expr]
  infix: str
  latex: str
  prec: float
  operand_prec: tuple[float, ...]
  latex_prec: float
  latex_operand_prec: tuple[float, ...]
  generator_weight: float  # E2E default sampling weight (reference.md 1.1)
  domain: Callable[..., jnp.ndarray] | None = None  # jnp: where finite & smooth


def _jnp_inv(a):
  return 1.0 / a


def _np_inv(a):
  return 1.0 / a


def _binary(name, np_fn, jnp_fn, sympy_fn, infix, latex, prec, operand_prec,
            weight, latex_prec=None, latex_operand_prec=None, domain=None):
  return Operator(name, 2, np_fn, jnp_fn, sympy_fn, infix, latex, prec,
                  operand_prec,
                  prec if latex_prec is None else latex_prec,
                  operand_prec if latex_operand_prec is None else latex_operand_prec,
                  weight, domain)


def _function(name, np_fn, jnp_fn, sympy_fn, infix_name, latex_name, weight,
              domain=None):
  """A unary operator rendered as a function call, e.g. sin(x)."""
  return Operator(name, 1, np_fn, jnp_fn, sympy_fn, f"{infix_name}($0)",
                  latex_name + r"{\left($0 \right)}", PREC_ATOM, (0,), PREC_ATOM,
                  (0,), weight, domain)


_OPERATOR_LIST = (
    # Binary. E2E samples add/sub/mul uniformly; div and pow are never generated.
    _binary("add", np.add, jnp.add, lambda a, b: a + b, "$0 + $1", "$0 + $1",
            PREC_ADD, (PREC_ADD, PREC_ADD), 1.0),
    _binary("sub", np.subtract, jnp.subtract, lambda a, b: a - b, "$0 - $1",
            "$0 - $1", PREC_ADD, (PREC_ADD, PREC_MUL), 1.0),
    _binary("mul", np.multiply, jnp.multiply, lambda a, b: a * b, "$0*$1",
            r"$0 \cdot $1", PREC_MUL, (PREC_MUL, PREC_MUL), 1.0),
    _binary("div", np.divide, jnp.divide, lambda a, b: a / b, "$0/$1",
            r"\frac{$0}{$1}", PREC_MUL, (PREC_MUL, PREC_POW), 0.0,
            latex_prec=PREC_POW, latex_operand_prec=(0, 0),
            domain=lambda a, b: b != 0),
    _binary("pow", np.power, jnp.power, lambda a, b: a**b, "$0**$1", "$0^{$1}",
            PREC_POW, (PREC_ATOM, PREC_ATOM), 0.0,
            latex_operand_prec=(PREC_ATOM, 0), domain=lambda a, b: a > 0),
    # Unary, with E2E's weights (operators_to_downsample default).
    Operator("inv", 1, _np_inv, _jnp_inv, lambda a: 1 / a, "1/$0", r"\frac{1}{$0}",
             PREC_MUL, (PREC_POW,), PREC_POW, (0,), 3.0, lambda a: a != 0),
    Operator("abs", 1, np.abs, jnp.abs, sympy.Abs, "Abs($0)", r"\left|$0\right|",
             PREC_ATOM, (0,), PREC_ATOM, (0,), 1.0, lambda a: a != 0),
    Operator("sqrt", 1, np.sqrt, jnp.sqrt, sympy.sqrt, "sqrt($0)", r"\sqrt{$0}",
             PREC_ATOM, (0,), PREC_ATOM, (0,), 5.0, lambda a: a > 0),
    _function("log", np.log, jnp.log, sympy.log, "log", r"\log", 1.0,
              lambda a: a > 0),
    Operator("exp", 1, np.exp, jnp.exp, sympy.exp, "exp($0)", "e^{$0}", PREC_ATOM,
             (0,), PREC_POW, (0,), 1.0),
    _function("sin", np.sin, jnp.sin, sympy.sin, "sin", r"\sin", 1.0),
    _function("cos", np.cos, jnp.cos, sympy.cos, "cos", r"\cos", 1.0),
    _function("tan", np.tan, jnp.tan, sympy.tan, "tan", r"\tan", 0.2),
    _function("arctan", np.arctan, jnp.arctan, sympy.atan, "atan", r"\arctan",
              0.2),
    _function("arcsin", np.arcsin, jnp.arcsin, sympy.asin, "asin", r"\arcsin",
              0.0, lambda a: jnp.abs(a) < 1),
    _function("arccos", np.arccos, jnp.arccos, sympy.acos, "acos", r"\arccos",
              0.0, lambda a: jnp.abs(a) < 1),
    Operator("pow2", 1, np.square, jnp.square, lambda a: a**2, "$0**2", "$0^{2}",
             PREC_POW, (PREC_ATOM,), PREC_POW, (PREC_ATOM,), 3.0),
    Operator("pow3", 1, lambda a: a * a * a, lambda a: a * a * a,
             lambda a: a**3, "$0**3", "$0^{3}", PREC_POW, (PREC_ATOM,),
             PREC_POW, (PREC_ATOM,), 1.0),
)

OPERATORS: dict[str, Operator] = {op.name: op for op in _OPERATOR_LIST}
UNARY_OPERATORS = tuple(op.name for op in _OPERATOR_LIST if op.arity == 1)
BINARY_OPERATORS = tuple(op.name for op in _OPERATOR_LIST if op.arity == 2)

MAX_VARIABLES = 10
VARIABLES = tuple(f"x_{i}" for i in range(MAX_VARIABLES))


def variable_index(token: str) -> int | None:
  """Returns i for the token "x_i" (i < MAX_VARIABLES), else None."""
  if token.startswith("x_") and token[2:].isdigit():
    index = int(token[2:])
    if index < MAX_VARIABLES and token == f"x_{index}":
      return index
  return None
