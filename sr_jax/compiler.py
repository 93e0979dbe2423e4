"""Compiles a batch of prefix expressions into fixed-shape arrays for the interpreter.

Each expression becomes a *node buffer* in postfix order: children come before their
parent and the root is always the last node, so the interpreter can fill the buffer
front to back and read the result at index L-1. Child indices are computed here, on
the host, once; the interpreter never runs a stack.

Shapes are padded to a few buckets (node count and constant count), so `jax.jit`
compiles once per bucket rather than once per expression. Padding nodes sit at the
front of the buffer as unreferenced constants.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from sr_jax import expressions
from sr_jax import operators

OP_CONSTANT = 0
OP_VARIABLE = 1
# Operator opcodes follow the operator table's order.
OPCODES = {name: i + 2 for i, name in enumerate(operators.OPERATORS)}

LENGTH_BUCKETS = (4, 8, 12, 16, 24, 32, 48, 64)
CONSTANT_BUCKETS = (1, 2, 4, 8, 16, 32)


def bucket(size: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= size; beyond the last, the next multiple of it."""
  for b in buckets:
    if size <= b:
      return b
  return -(-size // buckets[-1]) * buckets[-1]


@dataclasses.dataclass(frozen=True)
class Program:
  """B expressions as arrays of L nodes and K constant slots (numpy, host side).

  For node i: `opcode_BxL` says what it computes; `left_BxL` / `right_BxL` index its
  operands in the same buffer (unused ones point at the node itself); `leaf_BxL` is
  the constant slot of a constant or the column of a variable.
  """

  opcode_BxL: np.ndarray
  left_BxL: np.ndarray
  right_BxL: np.ndarray
  leaf_BxL: np.ndarray
  constants_BxK: np.ndarray
  num_constants_B: np.ndarray
  num_nodes_B: np.ndarray

  @property
  def arrays(self) -> tuple[np.ndarray, ...]:
    """The structure arrays the interpreter takes, in its argument order."""
    return self.opcode_BxL, self.left_BxL, self.right_BxL, self.leaf_BxL

  @property
  def shape(self) -> tuple[int, int, int]:
    """(B, L, K)."""
    return (*self.opcode_BxL.shape, self.constants_BxK.shape[1])


def _compile_one(prefix: expressions.Prefix, length: int, opcode, left, right, leaf,
                 constants) -> None:
  """Fills one row of the program arrays (root at index length-1)."""
  start = length - len(prefix)
  # Reversed prefix order puts every subtree before its parent, so walking the
  # prefix backwards with a stack of operand positions gives a valid node order.
  nodes = []  # (prefix position, token, operand prefix positions)
  stack: list[int] = []
  for position in range(len(prefix) - 1, -1, -1):
    token = prefix[position]
    arity = operators.OPERATORS[token].arity if token in operators.OPERATORS else 0
    operands = [stack.pop() for _ in range(arity)]
    nodes.append((position, token, operands))
    stack.append(position)
  slot_of = {p: start + i for i, (p, _, _) in enumerate(nodes)}
  num_constants = 0
  constant_slot = {}
  for p in sorted(slot_of):  # constant slots numbered in prefix order
    if not isinstance(prefix[p], str):
      constant_slot[p] = num_constants
      constants[num_constants] = float(prefix[p])
      num_constants += 1
  for p, token, operands in nodes:
    s = slot_of[p]
    left[s] = right[s] = s
    if not isinstance(token, str):
      opcode[s], leaf[s] = OP_CONSTANT, constant_slot[p]
    elif token in operators.OPERATORS:
      opcode[s] = OPCODES[token]
      left[s] = slot_of[operands[0]]
      right[s] = slot_of[operands[-1]]
    else:
      opcode[s], leaf[s] = OP_VARIABLE, operators.variable_index(token)


def compile_batch(prefixes: Sequence[expressions.Prefix], length: int | None = None,
                  num_constant_slots: int | None = None,
                  num_features: int | None = None) -> Program:
  """Compiles prefixes into one bucketed Program.

  `length` / `num_constant_slots` force the padded sizes (default: buckets of the
  longest expression and the largest constant count). With `num_features`, an
  expression reading a column the data lacks raises ExpressionError here instead of
  silently reading a clipped column later.
  """
  for prefix in prefixes:
    expressions.validate(prefix)
    used = expressions.variables_used(prefix)
    if num_features is not None and used and max(used) >= num_features:
      raise expressions.ExpressionError(
          f"expression uses x_{max(used)} but the data has {num_features} feature(s)")
  longest = max((len(p) for p in prefixes), default=1)
  most_constants = max((expressions.num_constants(p) for p in prefixes), default=0)
  length = length or bucket(longest, LENGTH_BUCKETS)
  num_constant_slots = num_constant_slots or bucket(max(most_constants, 1),
                                                    CONSTANT_BUCKETS)
  if longest > length or most_constants > num_constant_slots:
    raise ValueError(f"expressions need {longest} nodes and {most_constants} "
                     f"constants; got length={length}, slots={num_constant_slots}")
  batch = len(prefixes)
  opcode = np.zeros((batch, length), np.int32)
  leaf = np.zeros((batch, length), np.int32)
  left = np.tile(np.arange(length, dtype=np.int32), (batch, 1))
  right = left.copy()
  constants = np.zeros((batch, num_constant_slots), np.float64)
  for b, prefix in enumerate(prefixes):
    _compile_one(prefix, length, opcode[b], left[b], right[b], leaf[b], constants[b])
  return Program(
      opcode, left, right, leaf, constants,
      np.array([expressions.num_constants(p) for p in prefixes], np.int32),
      np.array([len(p) for p in prefixes], np.int32))


def with_constants(prefix: expressions.Prefix, constants: Sequence[float]) -> list:
  """The prefix with its constants replaced, in prefix order."""
  values = iter(constants)
  return [t if isinstance(t, str) else float(next(values)) for t in prefix]
