"""The SRBench protocol and the metrics reported on benchmark suites.

- `srbench_split`: SRBench's train/test split, training cap and target noise.
- `compute_metrics`: R2 (raw and clipped at 0), Acc_tau and Biggio's accuracy, MSE, MAE.
- `model_size` and `symbolic_solution`: SRBench's model size and its symbolic-solution
  rule, on sympy-parsable model strings in the data's column names.

Predictions that are not all finite never raise: R2 is -inf (0 clipped), errors are inf
and every accuracy is False, because one diverging point means the model is wrong.
"""

from __future__ import annotations

import dataclasses
from tokenize import TokenError
from typing import Sequence

import numpy as np
import sklearn.model_selection
import sympy
from sympy.parsing.sympy_parser import parse_expr

ACCURACY_TOLERANCES = (0.1, 0.01, 0.001)
ACCURACY_SHARE = 0.95  # Acc_tau: at least this share of the points within tau*|y|
SRBENCH_PI = "3.1415926535"  # SRBench's stand-in for pi in every parsed formula
SYMBOLIC_MIN_R2 = 0.5  # SRBench checks symbolic equivalence only above this test R2
DEFAULT_MAX_NODES = 100  # sympy.simplify takes seconds at ~50 nodes and can hang beyond


# ---------------------------------------------------------------------------------
# protocol


def srbench_split(x: np.ndarray, y: np.ndarray, seed: int, train_size: float = 0.75,
                  train_cap: int | None = 10_000, noise: float = 0.0):
  """Returns (x_train, y_train, x_test, y_test) exactly as SRBench's evaluate_model.

  The shuffle split is sklearn's train_test_split(random_state=seed). SRBench then
  seeds numpy's global RNG with `seed` and, when the *whole* data set has more than
  `train_cap` rows, draws `train_cap` training rows with replacement (its quirk, kept
  so that our training sets are SRBench's), then adds N(0, noise * RMS(y_train)) to
  y_train from the same RNG stream. The test set stays clean. Ground-truth suites are
  not standardized in SRBench, so the noise is relative to the raw targets.
  """
  x = np.asarray(x, dtype=np.float64)
  y = np.asarray(y, dtype=np.float64)
  if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
    raise ValueError(f"need x of shape (N, D) and y of shape (N,), got {x.shape} and "
                     f"{y.shape}")
  if not 0 < train_size < 1:
    raise ValueError(f"train_size must be in (0, 1), got {train_size}")
  if noise < 0:
    raise ValueError(f"noise must be >= 0, got {noise}")
  x_train, x_test, y_train, y_test = sklearn.model_selection.train_test_split(
      x, y, train_size=train_size, random_state=seed)
  rng = np.random.RandomState(seed)  # the stream np.random.seed(seed) gives SRBench
  if train_cap and len(y) > train_cap:
    rows = rng.choice(np.arange(len(x_train)), size=train_cap)
    x_train, y_train = x_train[rows], y_train[rows]
  if noise > 0:
    scale = noise * np.sqrt(np.mean(np.square(y_train)))
    y_train = y_train + rng.normal(0, scale, size=len(y_train))
  return x_train, y_train, x_test, y_test


# ---------------------------------------------------------------------------------
# numeric metrics


def _check_shapes(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  y_true = np.asarray(y_true, dtype=np.float64)
  y_pred = np.asarray(y_pred, dtype=np.float64)
  if y_true.ndim != 1 or y_true.shape != y_pred.shape or len(y_true) == 0:
    raise ValueError(f"y_true and y_pred must be non-empty 1-D arrays of one shape, got "
                     f"{y_true.shape} and {y_pred.shape}")
  if not np.all(np.isfinite(y_true)):
    raise ValueError("y_true has non-finite values: the data, not the model, is broken")
  return y_true, y_pred


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  """sklearn's r2_score (1.0 or 0.0 for a constant target), -inf if y_pred is not finite."""
  y_true, y_pred = _check_shapes(y_true, y_pred)
  if not np.all(np.isfinite(y_pred)):
    return -np.inf
  with np.errstate(over="ignore"):
    residual = np.sum(np.square(y_true - y_pred))
  total = np.sum(np.square(y_true - np.mean(y_true)))
  if not np.isfinite(residual):
    return -np.inf
  if total == 0:
    return 1.0 if residual == 0 else 0.0
  return float(1 - residual / total)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray, rtol: float, atol: float = 0.0,
             share: float = ACCURACY_SHARE) -> bool:
  """True when at least `share` of the points have |pred - y| <= atol + rtol * |y|."""
  y_true, y_pred = _check_shapes(y_true, y_pred)
  if not np.all(np.isfinite(y_pred)):
    return False
  return bool(np.mean(np.isclose(y_pred, y_true, rtol=rtol, atol=atol)) >= share)


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | bool]:
  """Every prediction metric of a benchmark row: r2, r2_zero (E2E's r2 clipped at 0),
  mse, mae, acc_<tau> (E2E's accuracy_l1_<tau>) and accuracy_l1_biggio."""
  y_true, y_pred = _check_shapes(y_true, y_pred)
  r2_value = r2(y_true, y_pred)
  out = {"r2": r2_value, "r2_zero": max(r2_value, 0.0), "mse": np.inf, "mae": np.inf}
  if np.all(np.isfinite(y_pred)):
    with np.errstate(over="ignore"):  # a finite but huge error is an infinite one
      errors = np.abs(y_true - y_pred)
      out["mse"], out["mae"] = float(np.mean(np.square(errors))), float(np.mean(errors))
  for tau in ACCURACY_TOLERANCES:
    out[f"acc_{tau}"] = accuracy(y_true, y_pred, rtol=tau)
  out["accuracy_l1_biggio"] = accuracy(y_true, y_pred, rtol=0.05, atol=1e-3)
  return out


# ---------------------------------------------------------------------------------
# symbolic metrics


def _protected_log(argument):
  """SRBench's PLOG: log of |c| for a negative float constant, else log."""
  if isinstance(argument, sympy.Float) and argument < 0:
    argument = sympy.Abs(argument)
  return sympy.log(argument)


def _protected_sqrt(argument):
  """SRBench's PSQRT: sqrt of |c| for a negative float constant, else sqrt."""
  if isinstance(argument, sympy.Float) and argument < 0:
    argument = sympy.Abs(argument)
  return sympy.sqrt(argument)


def parse_expression(text: str, feature_names: Sequence[str],
                     keep_pi: bool = False) -> sympy.Expr:
  """Parses a formula or model string as SRBench does: plain symbols named like the
  columns (so columns named I, gamma or beta are variables, not sympy objects), the
  protected log and sqrt, and pi as 3.1415926535 (keep_pi=True keeps the exact pi,
  to compute data from a formula)."""
  local_dict = {"log": _protected_log, "sqrt": _protected_sqrt}
  local_dict.update({name: sympy.Symbol(name) for name in feature_names})
  try:
    expr = parse_expr(text, local_dict=local_dict)
  except (SyntaxError, TokenError, TypeError, ValueError, AttributeError, NameError) as error:
    raise ValueError(f"cannot parse {text!r} as a sympy expression: {error}") from error
  if not isinstance(expr, sympy.Expr):
    raise ValueError(f"{text!r} is not an expression (parsed as {type(expr).__name__})")
  unknown = {s.name for s in expr.free_symbols} - set(feature_names)
  if unknown:
    raise ValueError(f"{text!r} uses {sorted(unknown)}, which are not among the "
                     f"features {list(feature_names)}")
  return expr if keep_pi else expr.subs(sympy.pi, sympy.Float(SRBENCH_PI))


def model_size(model: str | sympy.Expr, feature_names: Sequence[str] = ()) -> int:
  """SRBench's model size: the number of nodes of sympy.preorder_traversal(model)."""
  expr = parse_expression(model, feature_names) if isinstance(model, str) else model
  return sum(1 for _ in sympy.preorder_traversal(expr))


def round_floats(expr: sympy.Expr) -> sympy.Expr:
  """SRBench's round_floats: constants below 1e-4 in magnitude become 0, the others
  Float(round(c, 3), 3)."""
  rounded = expr
  for node in sympy.preorder_traversal(expr):
    if isinstance(node, sympy.Float):
      if abs(node) < 0.0001:
        rounded = rounded.subs(node, sympy.Integer(0))
      else:
        rounded = rounded.subs(node, sympy.Float(round(node, 3), 3))
  return rounded


@dataclasses.dataclass(frozen=True)
class SymbolicCheck:
  """The outcome of `symbolic_solution`, with SRBench's three criteria and why."""

  solved: bool
  reason: str
  simplified_model: str | None = None
  error_is_zero: bool = False
  error_is_constant: bool = False
  fraction_is_constant: bool = False


def symbolic_solution(model: str, formula: str, feature_names: Sequence[str],
                      r2_test: float | None = None,
                      max_nodes: int = DEFAULT_MAX_NODES) -> SymbolicCheck:
  """SRBench's symbolic-solution rule (assess_symbolic_model.py + its collation).

  The model is parsed, its floats rounded, then simplified; the true formula is parsed
  and rounded. Solved when round(true - model) simplifies to 0 or to a constant, or
  round(model / true) is a constant, and the simplified model is neither 0 nor nan.
  SRBench only checks models with test R2 > 0.5: pass `r2_test` to apply that gate.
  Unlike SRBench, which has no guard, a model of more than `max_nodes` nodes is
  reported unsolved without simplifying, since sympy's simplify can run for hours.
  Any sympy failure counts as unsolved (as in SRBench), with the error as reason.
  """
  if r2_test is not None and not r2_test > SYMBOLIC_MIN_R2:
    return SymbolicCheck(False, f"test R2 {r2_test:.4g} <= {SYMBOLIC_MIN_R2}: not checked")
  try:
    true_model = round_floats(parse_expression(formula, feature_names))
    parsed_model = parse_expression(model, feature_names)
    size = model_size(parsed_model)
    if size > max_nodes:
      return SymbolicCheck(False, f"model has {size} nodes (> max_nodes={max_nodes}): "
                           "not simplified")
    cleaned = sympy.simplify(round_floats(parsed_model), ratio=1)
    difference = round_floats(true_model - cleaned)
    fraction = round_floats(cleaned / true_model)
    if not difference.is_constant() or fraction.is_constant():
      difference = sympy.simplify(difference, ratio=1)
    error_is_zero = str(difference) == "0"
    error_is_constant = bool(difference.is_constant())
    fraction_is_constant = bool(fraction.is_constant())
  except Exception as error:  # sympy raises many types; SRBench counts all as failures
    return SymbolicCheck(False, f"sympy failed: {type(error).__name__}: {error}")
  criteria = {"difference is 0": error_is_zero,
              "difference is constant": error_is_constant,
              "ratio is constant": fraction_is_constant}
  met = [name for name, value in criteria.items() if value]
  if str(cleaned) in ("0", "nan"):
    solved, reason = False, f"simplified model is {cleaned}"
  else:
    solved, reason = bool(met), ", ".join(met) or "not equivalent"
  return SymbolicCheck(solved, reason, str(cleaned), error_is_zero, error_is_constant,
                       fraction_is_constant)
