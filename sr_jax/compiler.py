"""Compiles a batch of prefix expressions into fixed-shape arrays for the interpreter.

Each expression becomes a buffer of L *operator* nodes in postfix order: children
come before their parent and the root is always node L-1, so the interpreter fills
the buffer front to back. Leaves are not nodes (half of a tree's nodes are leaves,
and evaluating the operator table on them would be wasted): an operand index
r < L names operator node r, L + k names constant slot k, and L + K + d names
column d of x. Child indices are computed here, on the host, once.

Shapes are padded to a few buckets (operator count and constant count), so
`jax.jit` compiles once per bucket rather than once per expression. Padding nodes
sit at the front and refer to themselves, which marks them for the interpreter.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import numpy as np

from sr_jax import expressions
from sr_jax import operators

# Identity: the root of a one-leaf expression, and padding.
OP_IDENTITY = 0
# Operator opcodes follow the operator table's order.
OPCODES = {name: i + 1 for i, name in enumerate(operators.OPERATORS)}

LENGTH_BUCKETS = (4, 8, 12, 16, 24, 32, 48, 64)
CONSTANT_BUCKETS = (1, 2, 4, 8, 16, 32)
# Coarser buckets for calls that pad all their expressions to one shape (refine.py,
# selection.py): a few compiled programs serve calls of any size, and the node loops
# skip padding rows, so coarse node buckets are cheap.
CALL_NODE_BUCKETS = (16, 32, 64)
CALL_CONSTANT_BUCKETS = (4, 8, 16, 32)
CALL_POINT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def bucket(size: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= size; beyond the last, the next multiple of it."""
  for b in buckets:
    if size <= b:
      return b
  return -(-size // buckets[-1]) * buckets[-1]


_OPERATOR_NAMES = frozenset(operators.OPERATORS)


def num_operator_nodes(prefix: expressions.Prefix) -> int:
  """Buffer rows the expression needs: its operators (a lone leaf needs one)."""
  # map over a set's membership test: the search calls this ~10^5 times a second.
  return max(1, sum(map(_OPERATOR_NAMES.__contains__, prefix)))


@dataclasses.dataclass(frozen=True)
class Program:
  """B expressions as arrays of L operator nodes and K constant slots (numpy).

  For node i: `opcode_BxL` says what it computes and `left_BxL` / `right_BxL` index
  its operands (see the module docstring; a unary operator has left == right).
  For reverse-mode Jacobians, every node and constant slot records the row of the
  partials buffer (row 2j: d node j / d left, row 2j+1: d node j / d right) that
  holds its parent's derivative with respect to it: `edge_BxL`, `constant_edge_BxK`
  (the root, padding and unused slots point at row 0; they are never read).
  """

  opcode_BxL: np.ndarray
  left_BxL: np.ndarray
  right_BxL: np.ndarray
  edge_BxL: np.ndarray
  constant_edge_BxK: np.ndarray
  constants_BxK: np.ndarray
  num_constants_B: np.ndarray
  num_nodes_B: np.ndarray  # prefix length

  @property
  def arrays(self) -> tuple[np.ndarray, ...]:
    """The structure arrays `interpreter.evaluate_one` takes, in its order."""
    return self.opcode_BxL, self.left_BxL, self.right_BxL

  @property
  def shape(self) -> tuple[int, int, int]:
    """(B, L, K)."""
    return (*self.opcode_BxL.shape, self.constants_BxK.shape[1])


# Token codes: an operator's opcode (1..), a variable 1000 + column, a constant -1
# (dict.get's default: any number), padding -2.
_CODE = {**OPCODES, **{name: 1000 + i for i, name in enumerate(operators.VARIABLES)}}
_CONSTANT, _PADDING, _FIRST_VARIABLE = -1, -2, 1000
_ARITY_BY_OPCODE = np.array([0] + [op.arity for op in operators.OPERATORS.values()],
                            np.int32)


def _exclusive_running_sum(values_N: np.ndarray, starts_N: np.ndarray) -> np.ndarray:
  """Per formula of a flat token array: the sum of `values` over the formula's tokens
  before each token (starts_N: each token's formula's first index)."""
  total = np.cumsum(values_N) - values_N
  return total - total[starts_N]


def _second_children(level_N: np.ndarray, formula_N: np.ndarray,
                     binary: np.ndarray) -> np.ndarray:
  """Where the second operand of each binary operator starts (flat indices). With
  level the running sum of (arity - 1) before each token, the first operand of the
  operator at p starts at level + 1 and the second starts at the first m > p whose
  level is p's again (levels fall by at most 1 per token): p's successor among the
  formula's tokens of its level."""
  order = np.lexsort((np.arange(len(level_N)), level_N, formula_N))
  successor = np.empty_like(order)
  successor[order[:-1]] = order[1:]
  return successor[binary]


def compile_batch(prefixes: Sequence[expressions.Prefix], length: int | None = None,
                  num_constant_slots: int | None = None,
                  num_features: int | None = None, check: bool = True) -> Program:
  """Compiles prefixes into one bucketed Program.

  `length` / `num_constant_slots` force the padded sizes (default: buckets of the
  most operator nodes and the most constants). With `num_features`, an expression
  reading a column the data lacks raises ExpressionError here instead of silently
  reading a clipped column later. check=False skips validating the prefixes, for
  callers whose prefixes are valid by construction (the search's offspring).

  Vectorised over the batch: Python touches each token once (its code), numpy does
  the rest. Compiling formula by formula in Python was a fifth of the search's time.
  """
  for prefix in prefixes if check else ():
    expressions.validate(prefix)
    used = expressions.variables_used(prefix)
    if num_features is not None and used and max(used) >= num_features:
      raise expressions.ExpressionError(
          f"expression uses x_{max(used)} but the data has {num_features} feature(s)")
  batch = len(prefixes)
  sizes_B = np.fromiter(map(len, prefixes), np.int64, batch)
  tokens = list(itertools.chain.from_iterable(prefixes))
  code_N = np.fromiter(map(_CODE.get, tokens, itertools.repeat(_CONSTANT)), np.int64,
                       len(tokens))
  formula_N = np.repeat(np.arange(batch), sizes_B)
  starts_B = np.cumsum(sizes_B) - sizes_B  # each formula's first flat index
  starts_N = starts_B[formula_N]
  is_operator = (code_N > 0) & (code_N < _FIRST_VARIABLE)
  is_constant = code_N == _CONSTANT
  num_constants = np.bincount(formula_N[is_constant], minlength=batch).astype(np.int32)
  operators_B = np.bincount(formula_N[is_operator], minlength=batch)
  most_operators = int(np.maximum(operators_B, 1).max(initial=1))
  most_constants = int(num_constants.max(initial=0))
  length = length or bucket(most_operators, LENGTH_BUCKETS)
  num_constant_slots = num_constant_slots or bucket(max(most_constants, 1),
                                                    CONSTANT_BUCKETS)
  if most_operators > length or most_constants > num_constant_slots:
    raise ValueError(f"expressions need {most_operators} operator nodes and "
                     f"{most_constants} constants; got length={length}, "
                     f"slots={num_constant_slots}")
  opcode = np.full((batch, length), OP_IDENTITY, np.int32)
  left = np.tile(np.arange(length, dtype=np.int32), (batch, 1))
  right = left.copy()
  edge = np.zeros((batch, length), np.int32)
  constant_edge = np.zeros((batch, num_constant_slots), np.int32)
  constants = np.zeros((batch, num_constant_slots), np.float64)
  # Constants fill slots 0.. in prefix order.
  slot_N = _exclusive_running_sum(is_constant, starts_N)
  constant_at = np.nonzero(is_constant)[0]
  constants[formula_N[constant_at], slot_N[constant_at]] = [
      tokens[i] for i in constant_at.tolist()]
  # Operators take rows from the root (length - 1) down, in prefix order: reversed
  # prefix order then puts every subtree before its parent.
  row_N = length - 1 - _exclusive_running_sum(is_operator, starts_N)
  operand_N = np.where(is_operator, row_N,
                       np.where(is_constant, length + slot_N,
                                length + num_constant_slots + code_N - _FIRST_VARIABLE))
  arity_N = np.where(is_operator, _ARITY_BY_OPCODE[np.where(is_operator, code_N, 0)], 0)
  at = np.nonzero(is_operator)[0]
  b, row = formula_N[at], row_N[at]
  opcode[b, row] = code_N[at]
  binary = arity_N[at] == 2
  first_child = at + 1
  last_child = first_child.copy()
  last_child[binary] = _second_children(_exclusive_running_sum(arity_N - 1, starts_N),
                                        formula_N, at[binary])
  left[b, row] = operand_N[first_child]
  right[b, row] = operand_N[last_child]
  # Each operand records the partials row of its parent: 2 * row, + 1 for a second one.
  for child, parent, side in ((first_child, np.ones_like(binary), 0),
                              (last_child, binary, 1)):
    child, b_, value = child[parent], b[parent], 2 * row[parent] + side
    into_node, into_slot = is_operator[child], is_constant[child]
    edge[b_[into_node], row_N[child[into_node]]] = value[into_node]
    constant_edge[b_[into_slot], slot_N[child[into_slot]]] = value[into_slot]
  # A lone leaf: the identity node at the root reads it.
  lone = np.nonzero(operators_B == 0)[0]
  if lone.size:
    leaf = starts_B[lone]
    left[lone, length - 1] = right[lone, length - 1] = operand_N[leaf]
    constant_edge[lone[is_constant[leaf]], 0] = 2 * (length - 1)
  return Program(opcode, left, right, edge, constant_edge, constants, num_constants,
                 sizes_B.astype(np.int32))


def with_constants(prefix: expressions.Prefix, constants: Sequence[float]) -> list:
  """The prefix with its constants replaced, in prefix order."""
  # tolist: Python floats in one call, not one float() per constant.
  values = iter(np.asarray(constants, np.float64).tolist())
  return [t if isinstance(t, str) else next(values) for t in prefix]
