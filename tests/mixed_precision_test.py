"""mixed_precision.einsum: bf16 operands, float32 sums, both ways; numpy in float64 on the
bf16-rounded operands is the oracle."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from sr_jax import mixed_precision

# Every product the model computes (model.py), at small shapes, plus a vector-matrix and a
# tiny product (which XLA does not hand to its matrix kernel, YNNPACK).
SPECS = {
    "si,io->so": [(24, 16), (16, 12)],
    "bsd,dhk->bshk": [(3, 10, 16), (16, 2, 9)],
    "bsd,dhk->bhsk": [(3, 10, 16), (16, 2, 9)],
    "blhk,bhsk->bhls": [(3, 10, 2, 9), (3, 2, 11, 9)],
    "bhls,bhsk->bhlk": [(3, 2, 10, 11), (3, 2, 11, 9)],
    "bhlk,hkd->bld": [(3, 2, 10, 9), (2, 9, 16)],
    "we,tef->twf": [(5, 16), (11, 16, 24)],
    "bntw,twf->bnf": [(3, 10, 11, 5), (11, 5, 24)],
    "sd,vd->sv": [(24, 16), (30, 16)],
    "sd,dv->sv": [(1, 16), (16, 30)],  # a vector-matrix product (decoding one row)
    "ij,jk->ik": [(4, 3), (3, 5)],  # tiny
}


def _bf16_values(rng, shape):
  """float32 values that bf16 holds exactly, so the casts inside lose nothing."""
  return rng.normal(size=shape).astype(ml_dtypes.bfloat16).astype(np.float32)


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_products_and_gradients_match_float64(spec):
  rng = np.random.default_rng(0)
  x, y = (_bf16_values(rng, s) for s in SPECS[spec])
  out_shape = np.einsum(spec, x, y).shape
  weights = _bf16_values(rng, out_shape)  # the cotangent: exact in bf16 too

  def loss(x, y):
    return jnp.sum(mixed_precision.einsum(spec, x, y, jnp.bfloat16) * weights)

  out = jax.jit(lambda x, y: mixed_precision.einsum(spec, x, y, jnp.bfloat16))(x, y)
  assert out.dtype == jnp.float32
  x64, y64, w64 = (a.astype(np.float64) for a in (x, y, weights))
  np.testing.assert_allclose(out, np.einsum(spec, x64, y64), rtol=1e-5, atol=1e-5)
  dx, dy = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, y)
  inputs, z = spec.split("->")
  xs, ys = inputs.split(",")
  expected_dx = np.einsum(f"{z},{ys}->{xs}", w64, y64)  # d/dx of sum(einsum(x, y) * w)
  expected_dy = np.einsum(f"{xs},{z}->{ys}", x64, w64)
  assert dx.dtype == dy.dtype == jnp.float32
  np.testing.assert_allclose(dx, expected_dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dy, expected_dy, rtol=1e-5, atol=1e-5)


def test_float32_is_a_plain_einsum():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(24, 16)).astype(np.float32), rng.normal(size=(16, 12)).astype(np.float32)
  np.testing.assert_array_equal(mixed_precision.matmul(x, y, jnp.float32), jnp.matmul(x, y))
  grads = jax.grad(lambda x: jnp.sum(mixed_precision.matmul(x, y, jnp.float32) ** 2))(x)
  np.testing.assert_array_equal(grads, jax.grad(lambda x: jnp.sum(jnp.matmul(x, y) ** 2))(x))


def test_gradient_rounds_the_cotangent_only_to_bf16_and_keeps_input_dtypes():
  """A bf16 operand gets a bf16 gradient, a float32 one a float32 gradient, and the
  cotangent's rounding to bf16 is the only rounding: a cotangent bf16 cannot hold gives
  the float64 gradient of its bf16 value."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(_bf16_values(rng, (3, 10, 24)), jnp.bfloat16)
  w = _bf16_values(rng, (24, 12))
  cotangent = rng.normal(size=(3, 10, 12)).astype(np.float32)  # not bf16-exact
  dx, dw = jax.grad(lambda x, w: jnp.sum(mixed_precision.matmul(x, w, jnp.bfloat16)
                                         * cotangent), argnums=(0, 1))(x, w)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
  ct64 = cotangent.astype(ml_dtypes.bfloat16).astype(np.float64)
  expected_dw = np.einsum("bsi,bso->io", np.asarray(x, np.float64), ct64)
  np.testing.assert_allclose(dw, expected_dw, rtol=1e-5, atol=1e-5)


def test_matmul_keeps_leading_axes():
  rng = np.random.default_rng(3)
  x, w = _bf16_values(rng, (2, 3, 10, 16)), _bf16_values(rng, (16, 12))
  out = mixed_precision.matmul(x, w, jnp.bfloat16)
  assert out.shape == (2, 3, 10, 12)
  np.testing.assert_allclose(out, x.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec, message", [("...i,io->...o", "ellipsis"),
                                           ("ij,jk->k", "summed within one operand")])
def test_specs_without_einsum_gradients_are_refused(spec, message):
  with pytest.raises(ValueError, match=message):
    mixed_precision.einsum(spec, jnp.ones((4, 3)), jnp.ones((3, 5)), jnp.bfloat16)
