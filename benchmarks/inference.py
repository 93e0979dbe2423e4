"""End-to-end inference throughput: datasets/s of the batched pipeline, split by stage.

    python benchmarks/inference.py --workdir runs/debug            # a trained model
    python benchmarks/inference.py --size small --num 1000         # random weights

Datasets are test samples of sr_jax.generator (E2E's distribution, 200 points each,
so one bag per dataset). Settings as the issue fixes them: C=10 samples per bag (plus
the greedy decode), up to 10 bags, K=10 refined. With random weights the decoder
rarely chooses EOS, so (constrained) candidates run to max_len: a worst case for
decoding that says little about refinement; a trained model gives the realistic split.
A first call on a few datasets compiles most shapes; scoring and refinement shapes it
did not meet compile inside the timed call.

The original E2E processes datasets one by one: decoding, then up to K BFGS runs of
up to 1 s each. Its refinement alone, at the ~2.9 expressions/s measured here for
E2E's BFGS (benchmarks/refine.py), costs K / 2.9 = 3.4 s per dataset, so it cannot
exceed ~0.29 datasets/s on this machine whatever its decoding costs (the "ceiling"
row). Its decoding adds to that: the "with decoding" row charges it our own decoder's
time on one dataset at a time (one compiled loop for the dataset's C+1 rows, as
`--one_by_one` datasets measure), which is generous to the original's per-token
PyTorch loop.
"""

import dataclasses

import argparse
import time

import jax
import numpy as np
from flax import nnx

from sr_jax import generator, inference
from sr_jax.model import Transformer, model_config

ORIGINAL_REFINE_EXPRESSIONS_PER_S = 2.9  # BENCHMARKS.md, refinement section


def _datasets(num: int, seed: int):
  config = generator.GeneratorConfig()
  samples = [generator.generate(config, seed, i, test=True) for i in range(num)]
  return [(s.x, s.y) for s in samples]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", default=None, help="trained run (train.py --workdir)")
  parser.add_argument("--size", default="debug", help="preset, when no --workdir")
  parser.add_argument("--num", type=int, default=1000)
  parser.add_argument("--candidates", type=int, default=10)
  parser.add_argument("--refine", type=int, default=10)
  parser.add_argument("--decode_batch", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--one_by_one", type=int, default=16,
                      help="datasets decoded one at a time for the original's decoding")
  args = parser.parse_args()
  if args.workdir:
    model, name = inference.load_model(args.workdir), f"trained {args.workdir}"
  else:
    model = Transformer(model_config(args.size), rngs=nnx.Rngs(0))
    name = f"random {args.size}"
  config = inference.InferenceConfig(num_candidates=args.candidates,
                                     num_refine=args.refine,
                                     decode_batch=args.decode_batch, seed=args.seed)
  datasets = _datasets(args.num, args.seed)
  inference.run(model, datasets[:args.decode_batch], config)  # compile
  begin = time.perf_counter()
  output = inference.run(model, datasets, config)
  seconds = time.perf_counter() - begin
  one_by_one = _decode_seconds_one_by_one(model, datasets[:args.one_by_one], config)
  r2 = np.array([r.best.r2 for r in output.results])
  decoded = sum(r.num_decoded for r in output.results)
  invalid = sum(r.num_invalid for r in output.results)
  rate = args.num / seconds
  original = ORIGINAL_REFINE_EXPRESSIONS_PER_S / args.refine
  original_with_decoding = 1 / (1 / original + one_by_one)
  print(f"model: {name}; {jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"{args.num} datasets, C={args.candidates}+greedy, K={args.refine}")
  print("| metric | value |")
  print("|---|---|")
  print(f"| datasets/s | {rate:.2f} |")
  print(f"| total s | {seconds:.1f} |")
  for stage, s in output.seconds.items():
    print(f"| {stage} s | {s:.1f} ({s / seconds:.0%}) |")
  print(f"| candidates decoded | {decoded} ({invalid / max(decoded, 1):.0%} invalid) |")
  print(f"| best R2 on the fit points: median / share > 0.99 | {np.median(r2):.3f} / {np.mean(r2 > 0.99):.3f} |")
  print(f"| vs original's ceiling ({original:.2f} datasets/s) | {rate / original:.0f}x |")
  print(f"| decoding one dataset at a time, s per dataset | {one_by_one:.3f} |")
  print(f"| vs original with decoding ({original_with_decoding:.3f} datasets/s) | "
        f"{rate / original_with_decoding:.0f}x |")
  print("(stage shares can sum past 100%: decoding runs in a worker thread beside "
        "ranking and refinement)")


def _decode_seconds_one_by_one(model, datasets, config) -> float:
  """Mean decoding seconds per dataset when each is run alone (after a compile)."""
  alone = dataclasses.replace(config, num_refine=1)  # decoding is what is timed
  inference.run(model, datasets[:1], alone)
  return float(np.mean([inference.run(model, [d], alone).seconds["decode"]
                        for d in datasets]))


if __name__ == "__main__":
  main()
