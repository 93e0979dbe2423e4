"""Analytic training FLOPs of the encoder-decoder, device peak FLOP/s, and MFU.

Training costs 3x the forward pass (forward, gradient w.r.t. activations, gradient
w.r.t. weights); a forward matmul costs 2 FLOPs per multiply-add. Only matmuls are
counted: biases, LayerNorm, softmax and embedding gathers are a few percent at most
(tests/flops_test.py checks the formula against XLA's cost analysis within 20%).
"""

from __future__ import annotations

import jax

from sr_jax.model import ModelConfig
from sr_jax.tokens import NUM_MANTISSAS, TOKENS_PER_FLOAT

# Dense peak FLOP/s per device by compute dtype. Sources: vendor data sheets, as in levanter's
# flop_utils.py. float32 entries are what JAX's *default* matmul precision reaches: TF32 on
# Hopper (pure-FP32 CUDA cores peak at 67 TFLOP/s), bf16 passes on TPU (same as bf16).
# H200 has H100's compute (more, faster memory). CPU: this project's 2-core machines, as
# measured on a 2048^2 matmul: float32 159 GFLOP/s (numpy, AMD EPYC Zen 3,
# spec/measured.md), where bf16 is slower, so the float32 figure is the ceiling for both;
# on a Xeon with AMX tiles, bf16 operands with float32 sums (mixed_precision.py) reach
# CPU_AMX_BF16_PEAK (JAX, BENCHMARKS.md "Mixed precision").
CPU_AMX_BF16_PEAK = 586e9
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "h100": {"bfloat16": 989.5e12, "float32": 494.7e12},
    "h200": {"bfloat16": 989.5e12, "float32": 494.7e12},
    "tpu v4": {"bfloat16": 275e12, "float32": 275e12},
    "tpu v5 lite": {"bfloat16": 197e12, "float32": 197e12},  # v5e
    "tpu v5": {"bfloat16": 459e12, "float32": 459e12},  # v5p
    "tpu v6 lite": {"bfloat16": 918e12, "float32": 918e12},  # v6e
    "cpu": {"bfloat16": 159e9, "float32": 159e9},
}


def train_flops_per_example(cfg: ModelConfig, num_points: int, target_len: int,
                            mantissa_positions: int | None = None) -> float:
  """Matmul FLOPs of one forward+backward pass for one (points, target) example, with
  target_len decoder positions. With the grammar-factored output layer (losses.py), every
  position scores the 234 non-mantissa words and `mantissa_positions` of them (default:
  the most a target can hold, target_len // 4, which the loss computes) score the 10,000
  mantissas; the full output layer scores the whole vocabulary everywhere."""
  N, L, D, M = num_points, target_len, cfg.d_model, cfg.mlp_dim
  E = cfg.token_embed_dim
  flat = cfg.point_tokens * E
  sign_slots = -(-cfg.point_tokens // TOKENS_PER_FLOAT)
  # Multiply-adds per example, by where the weights are applied. The embedder's sign
  # slots are table lookups (model.Transformer._embed_points), not multiplies.
  embedder = N * ((flat - sign_slots * E) * flat + flat * D)
  encoder = cfg.num_encoder_layers * (N * (4 * D * D + 2 * D * M) + 2 * N * N * D)
  decoder = cfg.num_decoder_layers * (
      L * (4 * D * D + 2 * D * D + 2 * D * M)  # self-attention q/k/v/o, cross q/o, MLP
      + N * 2 * D * D  # cross-attention k/v over the encoder output
      + 2 * L * L * D + 2 * L * N * D)  # scores and weighted values, self and cross
  if cfg.output_layer == "full":
    output = L * D * cfg.decoder_vocab_size
  else:
    mantissas = L // 4 if mantissa_positions is None else mantissa_positions
    output = L * D * (cfg.decoder_vocab_size - NUM_MANTISSAS) + mantissas * D * NUM_MANTISSAS
  return 3 * 2 * float(embedder + encoder + decoder + output)


def device_peak_flops(device: jax.Device | str, dtype: str = "bfloat16") -> float | None:
  """Peak FLOP/s of one device, from its device_kind; None when the kind is not in PEAK_FLOPS,
  so that callers report MFU as unknown rather than a made-up number."""
  kind = (device if isinstance(device, str) else device.device_kind).lower()
  if kind == "cpu" and jax.numpy.dtype(dtype) == jax.numpy.bfloat16 and _cpu_has_amx():
    return CPU_AMX_BF16_PEAK
  # Longest key first, so 'tpu v5 lite' wins over 'tpu v5'.
  for key in sorted(PEAK_FLOPS, key=len, reverse=True):
    if key in kind:
      return PEAK_FLOPS[key][str(jax.numpy.dtype(dtype))]
  return None


def _cpu_has_amx() -> bool:
  """Whether this host's CPU has AMX bf16 tiles (Linux: /proc/cpuinfo's flags)."""
  try:
    with open("/proc/cpuinfo") as f:
      return "amx_bf16" in f.read()
  except OSError:
    return False


def mfu(flops_per_step: float, step_seconds: float, num_devices: int,
        peak: float | None) -> float:
  """Model FLOPs utilisation: achieved over peak FLOP/s of all devices; NaN for unknown peak."""
  if peak is None:
    return float("nan")
  return flops_per_step / (step_seconds * num_devices * peak)
