"""Evaluates compiled expression programs in JAX: B expressions, each on its own data.

`evaluate_one` runs one program (from `compiler`) over N points; it is a pure function
of arrays, so `jax.vmap` batches it and `jax.jacfwd` / `jax.grad` differentiate it in
the constants. Every node computes all operators of the table and keeps the one its
opcode names (under vmap the opcode differs per expression, so branches cannot be
skipped).

Forward values follow IEEE semantics like `expressions.evaluate` (NaN, +-inf). For
gradients, operator inputs are guarded with `jnp.where`: an unselected operator sees a
harmless input, and a selected operator outside its `domain` gets a zero gradient
instead of poisoning the whole Jacobian with inf * 0 = NaN.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sr_jax import compiler
from sr_jax import expressions
from sr_jax import operators

# Inside every operator's domain (and away from all poles), so unselected branches
# and guarded inputs stay finite with finite derivatives.
_SAFE_INPUT = 0.5
_OPERATOR_LIST = tuple(operators.OPERATORS.values())


def float_dtype():
  """float64 when x64 is enabled, else float32."""
  return jnp.zeros(()).dtype


def _apply_operator(opcode, a_N, b_N):
  """The value of an operator node whose operands are a_N (and b_N)."""
  values = []
  for op in _OPERATOR_LIST:
    selected = opcode == compiler.OPCODES[op.name]
    live = [jnp.where(selected, v, _SAFE_INPUT) for v in (a_N, b_N)[:op.arity]]
    if op.domain is None:
      values.append(op.jnp_fn(*live))
      continue
    inside = op.domain(*live)
    guarded = [jnp.where(inside, v, _SAFE_INPUT) for v in live]
    values.append(jnp.where(inside, op.jnp_fn(*guarded),
                            jax.lax.stop_gradient(op.jnp_fn(*live))))
  index = jnp.clip(opcode - 2, 0, len(values) - 1)
  return jnp.stack(values)[index]


def evaluate_one(opcode_L, left_L, right_L, leaf_L, constants_K, x_NxD):
  """One program on N points: returns y_N (the root, node L-1)."""
  num_features = x_NxD.shape[1]
  constants_K = constants_K.astype(x_NxD.dtype)
  column_L = jnp.clip(leaf_L, 0, num_features - 1)
  slot_L = jnp.clip(leaf_L, 0, constants_K.shape[0] - 1)
  is_constant_L = opcode_L == compiler.OP_CONSTANT
  buffer_LxN = jnp.where(is_constant_L[:, None], constants_K[slot_L][:, None],
                         x_NxD.T[column_L])

  def fill_node(i, buffer_LxN):
    opcode = opcode_L[i]
    value_N = _apply_operator(opcode, buffer_LxN[left_L[i]], buffer_LxN[right_L[i]])
    is_leaf = opcode <= compiler.OP_VARIABLE
    return buffer_LxN.at[i].set(jnp.where(is_leaf, buffer_LxN[i], value_N))

  buffer_LxN = jax.lax.fori_loop(0, opcode_L.shape[0], fill_node, buffer_LxN)
  return buffer_LxN[-1]


evaluate_batch = jax.jit(jax.vmap(evaluate_one))
evaluate_batch.__doc__ = """Programs B x L, constants B x K, x B x N x D -> y B x N."""


def evaluate(prefixes: Sequence[expressions.Prefix], x_BxNxD) -> np.ndarray:
  """Host convenience: compiles, evaluates each expression on its own dataset."""
  x_BxNxD = np.asarray(x_BxNxD)
  program = compiler.compile_batch(prefixes, num_features=x_BxNxD.shape[2])
  y_BxN = evaluate_batch(*program.arrays, jnp.asarray(program.constants_BxK,
                                                      float_dtype()),
                         jnp.asarray(x_BxNxD, float_dtype()))
  return np.asarray(y_BxN)
