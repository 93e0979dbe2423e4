"""Evaluates compiled expression programs in JAX: B expressions, each on its own data.

Every node computes the whole operator table and keeps what its opcode names: under
vmap the opcode differs per expression, so branches cannot be skipped. What makes
that affordable is `_node`, which evaluates all operators *and their partial
derivatives* with one call per expensive function: one sincos for sin/cos/tan, one
arctan for arctan/arcsin/arccos, one log and one exp for log/exp/pow, one sqrt and
one reciprocal for all derivatives of the 1/x kind. XLA:CPU lowers sin, tan, arctan
and pow to scalar libm calls (8-20 ns per element, measured); `_sincos` and `_atan`
are polynomial (Cephes) versions that vectorise (~1 ns).

Forward values follow IEEE semantics like `expressions.evaluate` (NaN, +-inf).
Partials are analytic and guarded: outside an operator's `domain` they are 0, so a
pole cannot poison a Jacobian with inf * 0 = NaN.

`evaluate_one` runs one program over N points and is differentiable (forward and
reverse mode, through `_node`'s partials); `evaluate_batch` and
`values_and_jacobian` run a batch natively, skipping the padding rows every
expression of the batch has, and the latter returns d y / d constants per point with
one reverse sweep (a tree: each node has one parent, so adjoints are gathers).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sr_jax import compiler
from sr_jax import expressions
from sr_jax import operators


def float_dtype():
  """float64 when x64 is enabled, else float32."""
  return jnp.zeros(()).dtype


# Cephes coefficients: float32 (sinf, cosf, atanf) and float64 (sin, cos, atan).
_SINCOS = {
    np.float32: ((1.5703125, 4.837512969970703125e-4, 7.54978995489188216e-8),
                 (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1),
                 (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2)),
    np.float64: ((1.57079625129699707031, 7.54978941586159635336e-8,
                  5.39030285815811905290e-15),
                 (1.58962301576546568060e-10, -2.50507477628578072866e-8,
                  2.75573136213857245213e-6, -1.98412698295895385996e-4,
                  8.33333333332211858878e-3, -1.66666666666666307295e-1),
                 (-1.13585365213876817300e-11, 2.08757008419747316778e-9,
                  -2.75573141792967388112e-7, 2.48015872888517045348e-5,
                  -1.38888888888730564116e-3, 4.16666666666665929218e-2)),
}
_ATAN32 = (8.05374449538e-2, -1.38776856032e-1, 1.99777106478e-1, -3.33329491539e-1)
_ATAN64_P = (-8.750608600031904122785e-1, -1.615753718733365076637e1,
             -7.500855792314704667340e1, -1.228866684490136173410e2,
             -6.485021904942025371773e1)
_ATAN64_Q = (1.0, 2.485846490142306297962e1, 1.650270098316988542046e2,
             4.328810604912902668951e2, 4.853903996359136964868e2,
             1.945506571482613964425e2)
_ATAN64_MOREBITS = 6.123233995736765886130e-17


def _horner(coefficients, z):
  total = coefficients[0]
  for c in coefficients[1:]:
    total = total * z + c
  return total


def _sincos(x):
  """(sin x, cos x): Cody-Waite reduction by pi/2, minimax polynomials on
  [-pi/4, pi/4]. Accurate while |x| < 2^16 (float32) / 2^26 (float64), far beyond
  where sin is well conditioned; larger arguments give values in [-1, 1]."""
  (c1, c2, c3), sine, cosine = _SINCOS[x.dtype.type]
  quadrant = jnp.round(x * (2 / np.pi))
  r = jnp.clip(((x - quadrant * c1) - quadrant * c2) - quadrant * c3,
               -np.pi / 4, np.pi / 4)
  z = r * r
  s = r + r * z * _horner(sine, z)
  c = 1 - 0.5 * z + z * z * _horner(cosine, z)
  q = (quadrant - 4 * jnp.floor(quadrant * 0.25)).astype(jnp.int32)
  return (jax.lax.select_n(q, s, c, -s, -c), jax.lax.select_n(q, c, -s, -c, s))


def _atan(x):
  """arctan x: reduction to |x| < tan(pi/8) (float32) or 0.66 (float64), then a
  polynomial (float32) or rational (float64) approximation."""
  magnitude = jnp.abs(x)
  float64 = x.dtype == jnp.float64
  big = magnitude > 2.414213562373095
  middle = magnitude > (0.66 if float64 else 0.4142135623730950)
  # One division: -1/x above tan(3pi/8), (x-1)/(x+1) in the middle.
  z = (jnp.where(big, -1.0, jnp.where(middle, magnitude - 1, magnitude))
       / jnp.where(big, magnitude, jnp.where(middle, magnitude + 1, 1.0)))
  zz = z * z
  if float64:
    y = z * (zz * _horner(_ATAN64_P, zz) / _horner(_ATAN64_Q, zz)) + z
    y += jnp.where(big, _ATAN64_MOREBITS, jnp.where(middle, 0.5 * _ATAN64_MOREBITS, 0))
  else:
    y = _horner(_ATAN32, zz) * zz * z + z
  y += jnp.where(big, np.pi / 2, jnp.where(middle, np.pi / 4, 0.0))
  return jnp.copysign(y, x)


def _pow(a, b, exp_b_log_abs_a):
  """a ** b from exp(b log|a|), with C99 pow's signs and special cases."""
  integer = b == jnp.round(b)
  odd = integer & (jnp.round(b * 0.5) * 2 != b)
  value = jnp.where(jnp.signbit(a) & odd, -exp_b_log_abs_a, exp_b_log_abs_a)
  negative_base = (a < 0) & jnp.isfinite(a) & ~integer & jnp.isfinite(b)
  value = jnp.where(negative_base, jnp.nan, value)
  return jnp.where((b == 0) | (a == 1) | ((a == -1) & jnp.isinf(b)), 1.0, value)


def generic_node(name, a, b):
  """(value, d/da, d/db) of one operator from the table's `jnp_fn`: the fallback for
  an operator `_node` does not merge (one call per operator, slow), and the tests'
  reference for the merged partials."""
  operator = operators.OPERATORS[name]
  fn = lambda a, b: operator.jnp_fn(*(a, b)[:operator.arity])
  zero, one = jnp.zeros_like(a), jnp.ones_like(a)
  value, d_a = jax.jvp(fn, (a, b), (one, zero))
  return value, d_a, jax.jvp(fn, (a, b), (zero, one))[1]


# Operators whose value and partials need no transcendental function: most nodes of
# most expressions (97% of the decoded candidates' nodes, measured).
_ARITHMETIC = ("add", "sub", "mul", "div", "inv", "abs", "pow2", "pow3")


def _node(opcode, a, b, names=tuple(compiler.OPCODES)):
  """(value, d value / d a, d value / d b) of every node, all operators merged.

  `opcode` broadcasts against the operands a and b (b is ignored by unary ones).
  Only the operators in `names` are computed (others give 0); each is computed the
  same way whatever `names` holds, so a subset gives bit-identical results.
  """
  is_op = lambda name: opcode == compiler.OPCODES[name]
  power = is_op("pow")
  inverse_sine = is_op("arcsin") | is_op("arccos")
  # Nodes that do not use log/exp feed them 1/0: float64 log is a branchy scalar
  # routine, slower on arguments of mixed sign (measured 3.4 vs 8.7 ns).
  log = jnp.log(jnp.where(power, jnp.abs(a), jnp.where(is_op("log"), a, 1.0)))
  exp = jnp.exp(jnp.where(power, b * log, jnp.where(is_op("exp"), a, 0.0)))
  root = jnp.sqrt(jnp.where(inverse_sine, (1 - a) * (1 + a), a))
  sin, cos = _sincos(a)
  # d/da of most transcendental operators is (something) / denominator. Only the
  # operators in `names` take part, so the arithmetic ones' reciprocal does not depend
  # on sqrt or sincos; what no column selected below uses, XLA drops.
  denominator = a
  for name, value in (("div", b), ("sqrt", root), ("tan", cos), ("arctan", 1 + a * a),
                      ("arcsin", root), ("arccos", root)):
    if name in names:
      denominator = jnp.where(is_op(name), value, denominator)
  reciprocal = 1 / denominator
  arctan = _atan(jnp.where(is_op("arcsin"), a * reciprocal,
                           jnp.where(is_op("arccos"),
                                     jnp.where(a == 1, 0.0, (1 - a) * reciprocal), a)))
  quotient = jnp.where(is_op("div"), a, 1.0) / jnp.where(is_op("div"), b, a)
  power_value = _pow(a, b, exp)
  zero, one = jnp.zeros_like(a), jnp.ones_like(a)
  cases = {  # name: (value, d/da, d/db)
      "add": (a + b, one, one),
      "sub": (a - b, one, -one),
      "mul": (a * b, b, a),
      "div": (quotient, reciprocal, -quotient * reciprocal),
      "pow": (power_value, b * power_value * reciprocal, power_value * log),
      "inv": (quotient, -reciprocal * reciprocal, zero),
      "abs": (jnp.abs(a), jnp.sign(a), zero),
      "sqrt": (root, 0.5 * reciprocal, zero),
      "log": (log, reciprocal, zero),
      "exp": (exp, exp, zero),
      "sin": (sin, cos, zero),
      "cos": (cos, -sin, zero),
      "tan": (sin * reciprocal, reciprocal * reciprocal, zero),
      "arctan": (arctan, reciprocal, zero),
      "arcsin": (arctan, reciprocal, zero),
      "arccos": (2 * arctan, -reciprocal, zero),
      "pow2": (a * a, 2 * a, zero),
      "pow3": (a * a * a, 3 * a * a, zero),
  }
  outputs = [[a, one, zero]]  # OP_IDENTITY
  for name in compiler.OPCODES:
    if name not in names:
      outputs.append([zero, zero, zero])
      continue
    value, d_a, d_b = cases[name] if name in cases else generic_node(name, a, b)
    domain = operators.OPERATORS[name].domain
    if domain is not None:
      inside = domain(a, b) if operators.OPERATORS[name].arity == 2 else domain(a)
      d_a, d_b = jnp.where(inside, d_a, 0.0), jnp.where(inside, d_b, 0.0)
    outputs.append([value, d_a, d_b])
  index = jnp.broadcast_to(opcode, a.shape)
  return tuple(jax.lax.select_n(index, *column) for column in zip(*outputs))


def _node_skipping_unused(opcode, a, b):
  """_node, with only the arithmetic operators when no node of this step needs more
  (a branch per step: under vmap every row computes every operator it might need)."""
  arithmetic = np.zeros(len(compiler.OPCODES) + 1, bool)
  arithmetic[[0] + [compiler.OPCODES[name] for name in _ARITHMETIC]] = True
  return jax.lax.cond(jnp.all(jnp.asarray(arithmetic)[opcode]),
                      functools.partial(_node, names=_ARITHMETIC), _node, opcode, a, b)


@jax.custom_jvp
def _node_value(opcode, a, b):
  return _node(opcode, a, b)[0]


@_node_value.defjvp
def _node_value_jvp(primals, tangents):
  opcode, a, b = primals
  _, tangent_a, tangent_b = tangents
  value, d_a, d_b = _node(opcode, a, b)
  return value, d_a * tangent_a + d_b * tangent_b


def _initial_buffer(num_nodes, constants_K, x_NxD):
  """Rows [operator nodes | constant slots | columns of x], each over N points."""
  num_points = x_NxD.shape[0]
  return jnp.concatenate([
      jnp.zeros((num_nodes, num_points), x_NxD.dtype),
      jnp.broadcast_to(constants_K.astype(x_NxD.dtype)[:, None],
                       (constants_K.shape[0], num_points)),
      x_NxD.T])


def evaluate_one(opcode_L, left_L, right_L, constants_K, x_NxD):
  """One program on N points: returns y_N (the root, node L-1). Differentiable in
  the constants and in x."""

  def fill_node(i, buffer_RxN):
    value_N = _node_value(opcode_L[i], buffer_RxN[left_L[i]], buffer_RxN[right_L[i]])
    return buffer_RxN.at[i].set(value_N)

  buffer_RxN = jax.lax.fori_loop(0, opcode_L.shape[0], fill_node,
                                 _initial_buffer(opcode_L.shape[0], constants_K, x_NxD))
  return buffer_RxN[opcode_L.shape[0] - 1]


def _first_used_row(left_BxL):
  """Rows before this are padding in every program of the batch."""
  used_L = jnp.any(left_BxL != jnp.arange(left_BxL.shape[1]), axis=0)
  return jnp.argmax(used_L).astype(jnp.int32)


def _forward(opcode_BxL, left_BxL, right_BxL, constants_BxK, x_BxNxD, partials):
  """Node values B x R x N and, with `partials`, d node / d operands B x 2L x N
  (rows 2i, 2i+1: node i by its left, right operand); else None, and differentiable
  by JAX."""
  batch, num_nodes = opcode_BxL.shape
  buffer_BxRxN = jax.vmap(_initial_buffer, (None, 0, 0))(num_nodes, constants_BxK,
                                                         x_BxNxD)
  rows_Bx1 = jnp.arange(batch)[:, None]
  operands_Bx2 = jnp.stack([left_BxL, right_BxL], axis=2)

  def node_inputs(buffer_BxRxN, i):
    # One gather of whole rows for both operands.
    index_Bx2 = jax.lax.dynamic_index_in_dim(operands_Bx2, i, 1, False)
    both_Bx2xN = buffer_BxRxN[rows_Bx1, index_Bx2]
    return (jax.lax.dynamic_index_in_dim(opcode_BxL, i, 1, True), both_Bx2xN[:, 0],
            both_Bx2xN[:, 1])

  update = lambda array, row, value: jax.lax.dynamic_update_slice_in_dim(
      array, value, row, axis=1)
  first = _first_used_row(left_BxL)
  if not partials:
    # A static loop (reverse mode needs one) that skips the padding rows.
    fill_node = lambda i, buffer_BxRxN: update(
        buffer_BxRxN, i, _node_value(*node_inputs(buffer_BxRxN, i))[:, None])
    return jax.lax.fori_loop(
        0, num_nodes, lambda i, buffer_BxRxN: jax.lax.cond(
            i >= first, fill_node, lambda i, buffer_BxRxN: buffer_BxRxN, i,
            buffer_BxRxN), buffer_BxRxN), None

  def fill_node_and_partials(i, carry):
    buffer_BxRxN, partials_BxPxN = carry
    value_BxN, d_left_BxN, d_right_BxN = _node_skipping_unused(
        *node_inputs(buffer_BxRxN, i))
    return (update(buffer_BxRxN, i, value_BxN[:, None]),
            update(partials_BxPxN, 2 * i, jnp.stack([d_left_BxN, d_right_BxN], axis=1)))

  partials_BxPxN = jnp.zeros((batch, 2 * num_nodes, x_BxNxD.shape[1]), x_BxNxD.dtype)
  return jax.lax.fori_loop(first, num_nodes, fill_node_and_partials,
                           (buffer_BxRxN, partials_BxPxN))


_CHUNK_ELEMENTS = 1 << 15  # rows x points per chunk: the node buffers stay in cache


@jax.jit
def evaluate_batch(opcode_BxL, left_BxL, right_BxL, constants_BxK, x_BxNxD):
  """Programs B x L, constants B x K, x B x N x D -> y B x N.

  Rows are sorted by length and evaluated in cache-sized chunks, each skipping the
  padding rows all its programs share.
  """
  batch, num_nodes = opcode_BxL.shape
  rows = max(1, min(batch, _CHUNK_ELEMENTS // x_BxNxD.shape[1]))
  num_chunks = -(-batch // rows)
  length_B = num_nodes - jnp.argmax(left_BxL != jnp.arange(num_nodes), axis=1)
  order_B = jnp.argsort(length_B)
  padded_order = jnp.concatenate(
      [order_B, jnp.full(num_chunks * rows - batch, order_B[0])])
  chunked = lambda a: jnp.asarray(a)[padded_order].reshape(num_chunks, rows,
                                                           *a.shape[1:])

  def evaluate_chunk(arrays):
    buffer_BxRxN, _ = _forward(*arrays, partials=False)
    return buffer_BxRxN[:, num_nodes - 1]

  y_BxN = jax.lax.map(evaluate_chunk, tuple(map(
      chunked, (opcode_BxL, left_BxL, right_BxL, constants_BxK, x_BxNxD))))
  # Unsorted by a gather (its transpose has no duplicate indices, unlike a scatter).
  return y_BxN.reshape(num_chunks * rows, -1)[jnp.argsort(order_B)]


def values_and_jacobian(opcode_BxL, left_BxL, right_BxL, edge_BxL, constant_edge_BxK,
                        constants_BxK, x_BxNxD):
  """y B x N and d y_n / d constant_k as B x K x N, for every point separately.

  Reverse mode with one adjoint per point: walking from the root down, the adjoint
  of node i is its parent's adjoint times the parent's partial, and it is folded
  into node i's own partials in place. A constant's Jacobian column is then the
  folded partial of its parent.
  """
  batch, num_nodes = opcode_BxL.shape
  rows_Bx1 = jnp.arange(batch)[:, None]
  buffer_BxRxN, partials_BxPxN = _forward(opcode_BxL, left_BxL, right_BxL,
                                          constants_BxK, x_BxNxD, partials=True)
  first = _first_used_row(left_BxL)

  def fold_node(step, partials_BxPxN):
    i = num_nodes - 2 - step
    edge_Bx1 = jax.lax.dynamic_index_in_dim(edge_BxL, i, 1, True)
    adjoint_Bx1xN = partials_BxPxN[rows_Bx1, edge_Bx1]
    own_Bx2xN = jax.lax.dynamic_slice_in_dim(partials_BxPxN, 2 * i, 2, axis=1)
    return jax.lax.dynamic_update_slice_in_dim(
        partials_BxPxN, own_Bx2xN * adjoint_Bx1xN, 2 * i, axis=1)

  partials_BxPxN = jax.lax.fori_loop(0, num_nodes - 1 - first, fold_node,
                                     partials_BxPxN)
  jacobian_BxKxN = partials_BxPxN[rows_Bx1, constant_edge_BxK]
  return buffer_BxRxN[:, num_nodes - 1], jacobian_BxKxN


def evaluate(prefixes: Sequence[expressions.Prefix], x_BxNxD) -> np.ndarray:
  """Host convenience: compiles, evaluates each expression on its own dataset."""
  x_BxNxD = np.asarray(x_BxNxD)
  program = compiler.compile_batch(prefixes, num_features=x_BxNxD.shape[2])
  y_BxN = evaluate_batch(*program.arrays, jnp.asarray(program.constants_BxK,
                                                      float_dtype()),
                         jnp.asarray(x_BxNxD, float_dtype()))
  return np.asarray(y_BxN)
