"""Where a training step's FLOPs go: each example's real work, and padding of each kind.

    python benchmarks/train_padding.py --size small --steps 200

Reads the real input pipeline (steps 0.. of the training stream, E2E's 10,000 points
per batch; no model is run) and splits the analytic FLOPs of every example
(flops.train_flops_per_example, the count MFU uses) into:

- point padding: the bucket's N over the example's own points;
- target padding: the batch's target length over the example's own;
- mantissa positions: the grammar-factored loss scores the 10,000 mantissas at L // 4
  positions, the most a target of length L can hold, not at its own constants;
- absent features: the embedder's first layer multiplies the INPUT_PAD words of the
  10 - D features an example does not have (E2E's layout: every point is 33 tokens).

The last line is the most that removing all padding could give at equal MFU: padded
FLOPs over real ones. Printed as a markdown table.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # noqa: E402
from sr_jax import data, flops, training  # noqa: E402
from sr_jax.model import MAX_INPUT_DIM  # noqa: E402


def absent_feature_flops(cfg, num_points: int, dimension: int) -> float:
  """Training FLOPs the embedder's first layer spends on the value slots (mantissa and
  exponent: 2 per float; sign slots are table lookups) of the features an example lacks."""
  width = cfg.point_tokens * cfg.token_embed_dim  # the layer's output (E2E: 2112)
  return 3 * 2 * num_points * 2 * (MAX_INPUT_DIM - dimension) * cfg.token_embed_dim * width


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="small")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--points_per_batch", type=int, default=10_000)
  args = parser.parse_args()
  config = default.get_config(f"size={args.size}")
  config.data.points_per_batch = args.points_per_batch
  cfg = training.RunConfig.from_config_dict(config)
  model, host_batch = cfg.model, data.HostBatch(cfg.data)
  f = flops.train_flops_per_example
  totals = dict(padded=0.0, points=0.0, targets=0.0, mantissas=0.0, features=0.0, real=0.0)
  examples = 0
  for step in range(args.steps):
    batch = host_batch(step)
    num_points, length = batch["points_BxNx33"].shape[1], batch["targets_BxL"].shape[1] - 1
    padded = f(model, num_points, length)
    for n, t, c, d in zip(batch["point_mask_BxN"].sum(1), batch["target_mask_BxL"].sum(1),
                          batch["num_constants_B"], batch["input_dimension_B"]):
      n, t, c, d = int(n), int(t) - 1, int(c), int(d)
      totals["padded"] += padded
      totals["points"] += padded - f(model, n, length)
      totals["targets"] += padded - f(model, num_points, t)
      totals["mantissas"] += padded - f(model, num_points, length, c)
      totals["features"] += absent_feature_flops(model, num_points, d)
      totals["real"] += f(model, n, t, c) - absent_feature_flops(model, n, d)
      examples += 1
  print(f"`{args.size}`, {examples} examples of steps 0..{args.steps - 1}, "
        f"{args.points_per_batch} points per batch\n")
  print("| FLOPs per example | GFLOP | share of padded |\n|---|---|---|")
  names = dict(padded="as computed (padded shapes)", points="point padding",
               targets="target padding", mantissas="mantissa positions",
               features="absent features", real="real work (no padding of any kind)")
  for key, name in names.items():
    print(f"| {name} | {totals[key] / examples / 1e9:.2f} | "
          f"{totals[key] / totals['padded']:.1%} |")
  print(f"\npadded / real: {totals['padded'] / totals['real']:.2f}x (the kinds overlap "
        "a little, so they do not add up to the difference exactly)")


if __name__ == "__main__":
  main()
