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


_ARITY = {name: op.arity for name, op in operators.OPERATORS.items()}
_VARIABLE_COLUMN = {name: i for i, name in enumerate(operators.VARIABLES)}


def _compile_one(prefix: expressions.Prefix, length: int, num_slots: int,
                 arrays: tuple, b: int) -> None:
  """Fills row b of the program arrays (root at index length-1). The used nodes are the
  last rows and the used constants the first slots, so each array gets one slice
  assignment from a short Python list: several times faster than writing numpy
  elements one by one."""
  opcode, left, right, edge, constant_edge, constants = arrays
  values = [float(t) for t in prefix if t.__class__ is not str]
  count = sum(1 for t in prefix if t.__class__ is str and t in _ARITY)
  first = length - max(count, 1)  # the first used row
  ops, lefts, rights = [], [], []
  node_edge = [0] * (length - first)
  slot_edge = [0] * len(values)
  slot = len(values)  # constants are numbered in prefix order; we walk backwards
  features = length + num_slots
  # Reversed prefix order puts every subtree before its parent; the stack holds
  # operand indices (rows or leaves).
  stack: list[int] = []
  for token in reversed(prefix):
    if token.__class__ is not str:
      slot -= 1
      stack.append(length + slot)
      continue
    arity = _ARITY.get(token)
    if arity is None:
      stack.append(features + _VARIABLE_COLUMN[token])
      continue
    row = first + len(ops)
    operands = [stack.pop() for _ in range(arity)]
    ops.append(OPCODES[token])
    lefts.append(operands[0])
    rights.append(operands[-1])
    for side, operand in enumerate(operands):
      if operand < length:
        node_edge[operand - first] = 2 * row + side
      elif operand < features:
        slot_edge[operand - length] = 2 * row + side
    stack.append(row)
  if not ops:  # a lone leaf: the identity node reads it
    operand = stack.pop()
    ops, lefts, rights = [OP_IDENTITY], [operand], [operand]
    if length <= operand < features:
      slot_edge[operand - length] = 2 * first
  opcode[b, first:] = ops
  left[b, first:] = lefts
  right[b, first:] = rights
  edge[b, first:] = node_edge
  if values:
    constant_edge[b, :len(values)] = slot_edge
    constants[b, :len(values)] = values


def compile_batch(prefixes: Sequence[expressions.Prefix], length: int | None = None,
                  num_constant_slots: int | None = None,
                  num_features: int | None = None, check: bool = True) -> Program:
  """Compiles prefixes into one bucketed Program.

  `length` / `num_constant_slots` force the padded sizes (default: buckets of the
  most operator nodes and the most constants). With `num_features`, an expression
  reading a column the data lacks raises ExpressionError here instead of silently
  reading a clipped column later. check=False skips validating the prefixes, for
  callers whose prefixes are valid by construction (the search's offspring).
  """
  for prefix in prefixes if check else ():
    expressions.validate(prefix)
    used = expressions.variables_used(prefix)
    if num_features is not None and used and max(used) >= num_features:
      raise expressions.ExpressionError(
          f"expression uses x_{max(used)} but the data has {num_features} feature(s)")
  num_constants = np.array([expressions.num_constants(p) for p in prefixes], np.int32)
  most_operators = max((num_operator_nodes(p) for p in prefixes), default=1)
  most_constants = int(num_constants.max(initial=0))
  length = length or bucket(most_operators, LENGTH_BUCKETS)
  num_constant_slots = num_constant_slots or bucket(max(most_constants, 1),
                                                    CONSTANT_BUCKETS)
  if most_operators > length or most_constants > num_constant_slots:
    raise ValueError(f"expressions need {most_operators} operator nodes and "
                     f"{most_constants} constants; got length={length}, "
                     f"slots={num_constant_slots}")
  batch = len(prefixes)
  opcode = np.full((batch, length), OP_IDENTITY, np.int32)
  left = np.tile(np.arange(length, dtype=np.int32), (batch, 1))
  right = left.copy()
  edge = np.zeros((batch, length), np.int32)
  constant_edge = np.zeros((batch, num_constant_slots), np.int32)
  constants = np.zeros((batch, num_constant_slots), np.float64)
  arrays = (opcode, left, right, edge, constant_edge, constants)
  for b, prefix in enumerate(prefixes):
    _compile_one(prefix, length, num_constant_slots, arrays, b)
  return Program(opcode, left, right, edge, constant_edge, constants, num_constants,
                 np.array([len(p) for p in prefixes], np.int32))


def with_constants(prefix: expressions.Prefix, constants: Sequence[float]) -> list:
  """The prefix with its constants replaced, in prefix order."""
  values = iter(constants)
  return [t if isinstance(t, str) else float(next(values)) for t in prefix]
