"""The vectorised compiler writes, array for array, what a plain stack-based walk of
each formula writes (the compiler's former per-formula loop, kept here as the oracle),
on random formulas over the whole operator table, lone leaves and mixed lengths."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sr_jax import compiler, operators
from random_trees import random_prefix

_ARITY = {name: op.arity for name, op in operators.OPERATORS.items()}
_COLUMN = {name: i for i, name in enumerate(operators.VARIABLES)}


def _reference(prefixes, length, num_slots):
  """One formula at a time: reversed prefix order with a stack of operand indices."""
  batch = len(prefixes)
  opcode = np.full((batch, length), compiler.OP_IDENTITY, np.int32)
  left = np.tile(np.arange(length, dtype=np.int32), (batch, 1))
  right = left.copy()
  edge = np.zeros((batch, length), np.int32)
  constant_edge = np.zeros((batch, num_slots), np.int32)
  constants = np.zeros((batch, num_slots))
  for b, prefix in enumerate(prefixes):
    values = [float(t) for t in prefix if not isinstance(t, str)]
    count = sum(1 for t in prefix if isinstance(t, str) and t in _ARITY)
    first = length - max(count, 1)
    slot, row, stack = len(values), first, []
    for token in reversed(prefix):
      if not isinstance(token, str):
        slot -= 1
        stack.append(length + slot)
        continue
      if token not in _ARITY:
        stack.append(length + num_slots + _COLUMN[token])
        continue
      operands = [stack.pop() for _ in range(_ARITY[token])]
      opcode[b, row] = compiler.OPCODES[token]
      left[b, row], right[b, row] = operands[0], operands[-1]
      for side, operand in enumerate(operands):
        if operand < length:
          edge[b, operand] = 2 * row + side
        elif operand < length + num_slots:
          constant_edge[b, operand - length] = 2 * row + side
      stack.append(row)
      row += 1
    if count == 0:
      operand = stack.pop()
      left[b, length - 1] = right[b, length - 1] = operand
      if length <= operand < length + num_slots:
        constant_edge[b, 0] = 2 * (length - 1)
    constants[b, :len(values)] = values
  return opcode, left, right, edge, constant_edge, constants


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31), count=st.integers(1, 12))
def test_vectorised_compiler_matches_the_formula_by_formula_walk(seed, count):
  rng = np.random.default_rng(seed)
  prefixes = [random_prefix(rng, num_variables=4, max_depth=int(rng.integers(0, 6)))
              for _ in range(count)]
  program = compiler.compile_batch(prefixes)
  _, length, num_slots = program.shape
  expected = _reference(prefixes, length, num_slots)
  got = (program.opcode_BxL, program.left_BxL, program.right_BxL, program.edge_BxL,
         program.constant_edge_BxK, program.constants_BxK)
  for name, a, b in zip(("opcode", "left", "right", "edge", "constant_edge", "constants"),
                        got, expected):
    np.testing.assert_array_equal(a, b, err_msg=name)
  np.testing.assert_array_equal(program.num_nodes_B, [len(p) for p in prefixes])
  np.testing.assert_array_equal(
      program.num_constants_B, [sum(not isinstance(t, str) for t in p) for p in prefixes])


def test_lone_leaves_and_forced_sizes():
  prefixes = [[2.5], ["x_1"], ["sin", "x_0"], ["add", "x_0", -1.0]]
  program = compiler.compile_batch(prefixes, length=8, num_constant_slots=4)
  np.testing.assert_array_equal(program.opcode_BxL[:, -1],
                                [compiler.OP_IDENTITY, compiler.OP_IDENTITY,
                                 compiler.OPCODES["sin"], compiler.OPCODES["add"]])
  assert program.left_BxL[0, -1] == 8 and program.constant_edge_BxK[0, 0] == 2 * 7
  assert program.left_BxL[1, -1] == 8 + 4 + 1
  for expected, got in zip(_reference(prefixes, 8, 4),
                           (program.opcode_BxL, program.left_BxL, program.right_BxL,
                            program.edge_BxL, program.constant_edge_BxK,
                            program.constants_BxK)):
    np.testing.assert_array_equal(got, expected)
  with pytest.raises(ValueError, match="operator nodes"):
    compiler.compile_batch([["sin"] * 9 + ["x_0"]], length=8)
  assert compiler.compile_batch([]).shape[0] == 0
