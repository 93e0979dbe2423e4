"""Training throughput on the real input pipeline: examples/s, real tokens/s, MFU.

    python benchmarks/train_throughput.py --sizes small                   # the shipped defaults
    python benchmarks/train_throughput.py --sizes small --variant e2e     # E2E's batching and softmax
    python benchmarks/train_throughput.py --sizes small --variant bf16    # mixed precision
    python benchmarks/train_throughput.py --sizes debug,s3m,small --steps 20

Runs train.py's jitted step on `--steps` consecutive batches of the training stream
(step 0 onwards, generated in this process as train.py does with num_workers=0), at
E2E's 10,000 points per batch unless --points_per_batch says otherwise. A step whose
batch shape is new compiles; it is timed separately (compile column) and left out of
the steady step time. The input pipeline makes a pool of several steps' batches at
once (data.py), often on a step that compiles, so its time is counted for every step:
examples/s = 1 / (data seconds per example over all steps + step seconds per example
over the steady steps); the data column is its share. Tokens/s and MFU are the
steady steps' own. MFU is given on the FLOPs computed (padded shapes) and on the real
points and tokens only (flops.py; the CPU peak is the one in flops.PEAK_FLOPS).

Variants: `default` is the config as shipped (length-grouped targets, grammar-factored
output layer); `e2e` pads every target to 128 tokens and scores the whole vocabulary
at every position, as sr_jax did before and as E2E's output layer does; `bf16` is the
default in mixed precision (bf16 products, float32 sums and parameters;
mixed_precision.py), whose MFU is taken against the bf16 peak (flops.py).
"""

import argparse
import ast
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

VARIANTS = {
    "default": {},
    "bf16": {"model.dtype": "bfloat16"},
    "e2e": {"data.length_groups": 1, "data.target_buckets": (128,),
            "model.output_layer": "full"},
}


def measure(size: str, variant: str, points_per_batch: int, steps: int,
            overrides: dict) -> dict:
  config = default.get_config(f"size={size}")
  config.data.points_per_batch = points_per_batch
  config.data.row_multiple = max(jax.device_count(), 1)
  for key, value in {**VARIANTS[variant], **overrides}.items():
    section, field = key.split(".")
    config[section][field] = value
  cfg = training.RunConfig.from_config_dict(config)
  mesh = training.sharding.make_mesh(cfg.mesh)
  graphdef, state, shardings = training.create_state(cfg, mesh)
  train, _, batch_shardings = training.compile_steps(cfg, graphdef, shardings, mesh)
  batches = data.make_iterator(cfg.data, 0)
  shapes, compile_seconds = set(), 0.0
  seconds = examples = tokens = padded_flops = real_flops = 0.0
  data_seconds = all_examples = 0.0
  timed = 0
  with jax.set_mesh(mesh):
    for _ in range(steps):
      start = time.time()
      batch = next(batches)
      made = time.time()
      state, metrics = train(state, training.to_global(batch, batch_shardings), np.float32(1))
      jax.block_until_ready(metrics)
      elapsed = time.time() - made
      data_seconds += made - start
      all_examples += float(batch["example_mask_B"].sum())
      shape = (batch["points_BxNx33"].shape, batch["targets_BxL"].shape)
      if shape not in shapes:
        shapes.add(shape)
        compile_seconds += elapsed
        continue
      timed += 1
      seconds += elapsed
      examples += float(batch["example_mask_B"].sum())
      tokens += float(batch["target_mask_BxL"].sum())
      padded, real = training._flops_of_batch(cfg, batch)
      padded_flops, real_flops = padded_flops + padded, real_flops + real
  peak = flops.device_peak_flops(jax.devices()[0], cfg.model.dtype)
  num_params = model.count_params(nnx.merge(graphdef, state)[0])
  data_per_example = data_seconds / max(all_examples, 1)
  step_per_example = seconds / max(examples, 1)
  return dict(size=size, variant=variant, params_m=num_params / 1e6, timed=timed,
              shapes=len(shapes), compile_s=compile_seconds,
              step_s=seconds / max(timed, 1),
              examples_s=1 / max(data_per_example + step_per_example, 1e-12),
              data_share=data_per_example / max(data_per_example + step_per_example, 1e-12),
              tokens_s=tokens / max(seconds, 1e-9),
              mfu=flops.mfu(padded_flops, seconds, jax.device_count(), peak),
              mfu_real=flops.mfu(real_flops, seconds, jax.device_count(), peak))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="small")
  parser.add_argument("--variant", default="default", help=f"one of {sorted(VARIANTS)}, "
                      "or several separated by commas")
  parser.add_argument("--points_per_batch", type=int, default=10_000)
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                      help="config override, e.g. data.length_groups=8 (Python literal)")
  args = parser.parse_args()
  overrides = {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in args.set)}
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"{args.points_per_batch} points per batch, steps 0..{args.steps - 1} of the stream"
        + (f", overrides {overrides}" if overrides else ""))
  print(f"{'size':>6} {'variant':>8} {'params':>7} {'timed':>5} {'shapes':>6} {'compile s':>9} "
        f"{'step s':>7} {'data':>5} {'ex/s':>7} {'tok/s':>7} {'MFU':>6} {'MFU real':>8} "
        f"{'load':>5}")
  for size in args.sizes.split(","):
    for variant in args.variant.split(","):
      r = measure(size, variant, args.points_per_batch, args.steps, overrides)
      print(f"{r['size']:>6} {r['variant']:>8} {r['params_m']:6.1f}M {r['timed']:5d} "
            f"{r['shapes']:6d} {r['compile_s']:9.1f} {r['step_s']:7.2f} {r['data_share']:5.0%} "
            f"{r['examples_s']:7.1f} "
            f"{r['tokens_s']:7.0f} {r['mfu']:6.1%} {r['mfu_real']:8.1%} "
            f"{os.getloadavg()[0]:5.1f}", flush=True)


if __name__ == "__main__":
  main()
