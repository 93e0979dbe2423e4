"""Training throughput per model size on the current devices: examples/s, tokens/s, MFU.

    python benchmarks/train_throughput.py                       # debug,s3m,small,s20m
    python benchmarks/train_throughput.py --sizes paper --points_per_batch 10000 --dtype bfloat16

One fixed batch shape (every example at the largest point bucket, N=200, targets of 128
tokens) so each size compiles once; the batch is generated before timing, so the
numbers are the device's, not the input pipeline's (see benchmarks/generator.py).
MFU uses the analytic FLOP count (sr_jax/flops.py) and the peak table there. Rates use
the median step time; the fastest step and the 1-minute load average are printed too,
because on a shared machine other jobs inflate the median.
"""

import argparse
import os
import pathlib
import sys
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for configs/
from configs import default  # noqa: E402
from sr_jax import data, flops, model, training  # noqa: E402


def measure(size: str, points_per_batch: int, dtype: str, steps: int) -> dict:
  config = default.get_config(f"size={size}")
  config.model.dtype = dtype
  config.data.point_buckets = (200,)
  config.data.points_per_batch = points_per_batch
  config.data.row_multiple = max(jax.device_count(), 1)
  cfg = training.RunConfig.from_config_dict(config)
  mesh = training.sharding.make_mesh(cfg.mesh)
  graphdef, state, shardings = training.create_state(cfg, mesh)
  train, _, batch_shardings = training.compile_steps(cfg, graphdef, shardings, mesh)
  batch = data.HostBatch(cfg.data)(0)
  examples = float(batch["example_mask_B"].sum())
  target_tokens = float(batch["target_mask_BxL"].sum())
  flops_per_step = examples * flops.train_flops_per_example(
      cfg.model, batch["points_BxNx33"].shape[1], batch["targets_BxL"].shape[1] - 1)
  with jax.set_mesh(mesh):
    global_batch = training.to_global(batch, batch_shardings)
    start = time.time()
    state, metrics = train(state, global_batch)
    jax.block_until_ready(metrics)
    compile_seconds = time.time() - start
    times = []
    for _ in range(steps):
      start = time.time()
      state, metrics = train(state, global_batch)
      jax.block_until_ready(metrics)
      times.append(time.time() - start)
  seconds = float(np.median(times))
  peak = flops.device_peak_flops(jax.devices()[0], dtype)
  num_params = model.count_params(nnx.merge(graphdef, state)[0])
  return dict(size=size, params_m=num_params / 1e6, batch=int(examples),
              step_s=seconds, min_step_s=min(times), compile_s=compile_seconds,
              examples_s=examples / seconds, tokens_s=target_tokens / seconds,
              point_tokens_s=examples * 200 / seconds,
              tflops=flops_per_step / seconds / 1e12 / jax.device_count(),
              mfu=flops.mfu(flops_per_step, seconds, jax.device_count(), peak))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="debug,s3m,small,s20m")
  parser.add_argument("--points_per_batch", type=int, default=3_200)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}, dtype {args.dtype}, "
        f"{args.points_per_batch} points per batch (N=200)")
  header = (f"{'size':>7} {'params':>8} {'batch':>5} {'step s':>8} {'min s':>7} "
            f"{'compile s':>9} {'ex/s':>8} {'tgt tok/s':>10} {'pt tok/s':>9} {'TFLOP/s':>8} "
            f"{'MFU':>6} {'load':>5}")
  print(header)
  for size in args.sizes.split(","):
    r = measure(size, args.points_per_batch, args.dtype, args.steps)
    print(f"{r['size']:>7} {r['params_m']:7.1f}M {r['batch']:5d} {r['step_s']:8.3f} "
          f"{r['min_step_s']:7.3f} {r['compile_s']:9.1f} {r['examples_s']:8.1f} "
          f"{r['tokens_s']:10.0f} {r['point_tokens_s']:9.0f} {r['tflops']:8.4f} "
          f"{r['mfu']:6.1%} {os.getloadavg()[0]:5.1f}", flush=True)


if __name__ == "__main__":
  main()
