"""Matrix products in a low-precision compute dtype with float32 sums, both ways.

Matrix units (GPU tensor cores, TPU MXUs, and the AMX tiles of this project's Xeon CPU)
multiply bfloat16 operands and accumulate in float32. On the CPU that form runs 2-4x
faster than a float32 dot, while a bf16 -> bf16 dot is no faster than float32
(BENCHMARKS.md, "Mixed precision"). Autodiff of `einsum(..., preferred_element_type=
float32)` does not keep that form: its transposes multiply the float32 cotangent by
the operands cast back to float32, and the backward dots of a training step then cost
more than the forward ones did. `einsum` below has a custom VJP that casts the
cotangent to the compute dtype and runs each backward dot in the same bf16 -> f32 form;
gradients come back float32 (never rounded to bf16), in the dtypes of the inputs.

With a float32 compute dtype it is a plain einsum (exact autodiff, nothing changes).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def einsum(spec: str, x: jax.Array, y: jax.Array, dtype) -> jax.Array:
  """einsum of x and y cast to `dtype`, summed and returned in float32. `spec` names
  every axis explicitly ("bsd,dhk->bshk"; no ellipsis), and each axis of one operand
  appears in the other operand or in the output, so both gradients are einsums too."""
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float32:
    return jnp.einsum(spec, x.astype(dtype), y.astype(dtype),
                      preferred_element_type=jnp.float32)
  _gradient_specs(spec)  # refuses a spec whose gradients are not einsums
  return _mixed_einsum(spec, dtype, x, y)


def matmul(x_xI: jax.Array, w_IxO: jax.Array, dtype) -> jax.Array:
  """x @ w over x's last axis (any leading shape), as `einsum`."""
  lead = x_xI.shape[:-1]
  y_SxO = einsum("si,io->so", x_xI.reshape(-1, x_xI.shape[-1]), w_IxO, dtype)
  return y_SxO.reshape(*lead, w_IxO.shape[-1])


def _gradient_specs(spec: str) -> tuple[str, str]:
  """'x,y->z' -> ('z,y->x', 'x,z->y'): the einsums of the two operands' gradients."""
  inputs, z = spec.replace(" ", "").split("->")
  x, y = inputs.split(",")
  if "." in spec:
    raise ValueError(f"mixed_precision.einsum needs explicit axes, not an ellipsis: {spec!r}")
  for operand, others in ((x, y + z), (y, x + z)):
    if set(operand) - set(others):
      raise ValueError(f"{spec!r}: axes {sorted(set(operand) - set(others))} of {operand!r} "
                       "are summed within one operand; its gradient is not an einsum")
  return f"{z},{y}->{x}", f"{x},{z}->{y}"


def _matrix_product(spec: str, x: jax.Array, y: jax.Array) -> jax.Array:
  """einsum as one batched matrix product in the form the CPU's bf16 kernel (YNNPACK)
  takes: x as (batch, m, k), y as (batch, k, n), both row-major, float32 out. XLA
  falls back to a kernel without bf16 -> f32 for any other form (a transposed
  operand, batch axes behind the others), and autodiff's transposes produce them."""
  inputs, out = spec.replace(" ", "").split("->")
  xs, ys = inputs.split(",")
  batch = [a for a in out if a in xs and a in ys]
  free_x = [a for a in out if a in xs and a not in ys]
  free_y = [a for a in out if a in ys and a not in xs]
  if batch + free_y + free_x == list(out) != batch + free_x + free_y:
    # y @ x gives the output's order directly; XLA would fold an output transpose
    # into the dot as well.
    return _matrix_product(f"{ys},{xs}->{out}", y, x)
  contract = [a for a in xs if a in ys and a not in out]
  size = dict(zip(xs, x.shape)) | dict(zip(ys, y.shape))
  count = lambda axes: math.prod(size[a] for a in axes)  # noqa: E731
  x_bmk = _arranged(x, [xs.index(a) for a in batch + free_x + contract],
                    (count(batch), count(free_x), count(contract)))
  y_bkn = _arranged(y, [ys.index(a) for a in batch + contract + free_y],
                    (count(batch), count(contract), count(free_y)))
  z_bmn = jax.lax.dot_general(x_bmk, y_bkn, (((2,), (1,)), ((0,), (0,))),
                              preferred_element_type=jnp.float32)
  z = z_bmn.reshape([size[a] for a in batch + free_x + free_y])
  return _arranged(z, [(batch + free_x + free_y).index(a) for a in out],
                   tuple(size[a] for a in out))


def _arranged(x: jax.Array, axes: list[int], shape: tuple[int, ...]) -> jax.Array:
  """x with its axes permuted and then reshaped to `shape`, in memory: XLA folds a
  transpose next to a dot into the dot's dimension numbers, which would undo it, so a
  permutation goes through an optimization barrier."""
  if axes == sorted(axes):
    return x.reshape(shape)
  return jax.lax.optimization_barrier(jnp.transpose(x, axes)).reshape(shape)


def _product(spec: str, x: jax.Array, y: jax.Array) -> jax.Array:
  """float32 einsum of two compute-dtype operands: in YNNPACK's form on the CPU; GPU and
  TPU compilers take any form (a transpose there is folded into the kernel)."""
  if jax.default_backend() == "cpu":
    return _matrix_product(spec, x, y)
  return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mixed_einsum(spec, dtype, x, y):
  return _product(spec, x.astype(dtype), y.astype(dtype))


def _mixed_einsum_fwd(spec, dtype, x, y):
  x_c, y_c = x.astype(dtype), y.astype(dtype)
  # The residuals are the casts (half the memory of float32 copies); zero-size arrays
  # carry the inputs' dtypes to the backward pass.
  return _product(spec, x_c, y_c), (x_c, y_c, jnp.zeros(0, x.dtype), jnp.zeros(0, y.dtype))


def _mixed_einsum_bwd(spec, dtype, residuals, ct):
  x_c, y_c, x_tag, y_tag = residuals
  dx_spec, dy_spec = _gradient_specs(spec)
  ct_c = ct.astype(dtype)
  return (_product(dx_spec, ct_c, y_c).astype(x_tag.dtype),
          _product(dy_spec, x_c, ct_c).astype(y_tag.dtype))


_mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)
