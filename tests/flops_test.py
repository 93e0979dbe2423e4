"""The analytic FLOP formula against XLA's count, the peak table and MFU."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from sr_jax import training
from sr_jax.flops import device_peak_flops, mfu, train_flops_per_example
from sr_jax.model import Transformer, model_config


@pytest.mark.parametrize("size,overrides,points,length", [
    ("debug", {}, 20, 16),
    ("debug", {}, 64, 40),
    ("debug", {"output_layer": "full"}, 64, 40),
    ("small", dict(num_encoder_layers=1, num_decoder_layers=2), 32, 24),
    ("small", dict(num_encoder_layers=1, num_decoder_layers=2, output_layer="full"), 32, 24),
])
def test_train_flops_match_xla_cost_analysis(size, overrides, points, length):
  """XLA's count of the unoptimised forward+backward HLO of the training loss (lowering
  only, no compile: the compiled count agreed to the same 2% when measured) is within 20%
  of the formula, for the grammar-factored and the full output layer."""
  cfg = model_config(size, **overrides)
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  B = 2
  batch = {"points_BxNx33": jax.ShapeDtypeStruct((B, points, cfg.point_tokens), jnp.int32),
           "point_mask_BxN": jax.ShapeDtypeStruct((B, points), jnp.bool_),
           "targets_BxL": jax.ShapeDtypeStruct((B, length + 1), jnp.int32),
           "target_mask_BxL": jax.ShapeDtypeStruct((B, length + 1), jnp.bool_),
           "example_mask_B": jax.ShapeDtypeStruct((B,), jnp.bool_)}

  def loss(m, batch):
    return training._token_loss(m, batch)[0]

  xla = jax.jit(jax.grad(loss)).lower(model, batch).cost_analysis()
  analytic = B * train_flops_per_example(cfg, points, length)
  assert analytic == pytest.approx(xla["flops"], rel=0.2)


def test_factored_output_costs_a_fraction_of_the_full_one():
  full, factored = (train_flops_per_example(model_config("small", output_layer=o), 100, 80)
                    for o in ("full", "factored"))
  cfg = model_config("small")
  output_full = 6 * 80 * cfg.d_model * cfg.decoder_vocab_size
  assert full - factored == pytest.approx(output_full * (1 - (234 + 20 * 10_000 / 80) / 10_234),
                                          rel=1e-9)


def test_device_peak_flops():
  """Vendor data-sheet figures (dense, no sparsity): H100/H200 SXM 989.5 TFLOP/s bf16,
  494.7 TF32; TPU v5e 197, v5p 459, v6e 918 bf16; this project's CPU: 159 GFLOP/s
  (measured.md's numpy float32 matmul), and 586 GFLOP/s for bf16 products where the CPU
  has AMX tiles (BENCHMARKS.md)."""
  assert device_peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.5e12
  assert device_peak_flops("NVIDIA H200", "float32") == 494.7e12
  assert device_peak_flops("NVIDIA H200", "bfloat16") == 989.5e12
  assert device_peak_flops("TPU v5 lite", "bfloat16") == 197e12
  assert device_peak_flops("TPU v5", "bfloat16") == 459e12
  assert device_peak_flops("TPU v6 lite") == 918e12
  assert device_peak_flops(jax.devices()[0], "float32") == 159e9
  with open("/proc/cpuinfo") as f:
    amx = "amx_bf16" in f.read()
  assert device_peak_flops("cpu", "bfloat16") == (586e9 if amx else 159e9)
  assert device_peak_flops("Some Future Chip") is None


def test_mfu():
  assert mfu(4e12, 2.0, 2, 1e12) == pytest.approx(1.0)
  assert mfu(1e12, 1.0, 4, 1e12) == pytest.approx(0.25)
  assert mfu(1e12, 1.0, 1, None) != mfu(1e12, 1.0, 1, None)  # NaN
