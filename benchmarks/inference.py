"""End-to-end inference throughput: datasets/s of the batched pipeline, split by stage.

    python benchmarks/inference.py                                 # the shipped model
    python benchmarks/inference.py --pretrained runs/debug         # a model file or run
    python benchmarks/inference.py --size small --num 1000         # random weights

Datasets are test samples of sr_jax.generator (E2E's distribution, 200 points each,
so one bag per dataset). Settings as the issue fixes them: C=10 samples per bag (plus
the greedy decode), up to 10 bags, K=10 refined. With random weights the decoder
rarely chooses EOS, so (constrained) candidates run to max_len: a worst case for
decoding that says little about refinement; a trained model gives the realistic split.
A first call on a few datasets compiles most shapes; scoring and refinement shapes it
did not meet compile inside the timed call.

The original E2E processes datasets one by one: decoding, then up to K BFGS runs of
up to 1 s each, so its refinement alone caps it at (expressions/s) / K datasets/s on
this machine, whatever its decoding costs (the "ceiling" rows). Two figures for that
rate, both stated: the original code's own, measured side by side on a quiet machine
of this kind (5.84 expressions/s, shared/spec/measured.md, 2026-11-30: perturbed
generated expressions), and this repository's re-implementation of its BFGS
(benchmarks/refine.py's `_scipy_refine`) timed here, in this run, on --scipy_num of
the pipeline's own unrefined candidates. The "with decoding" rows also charge the
original our decoder's time on one dataset at a time (one compiled loop for the
dataset's C+1 rows, as `--one_by_one` datasets measure), which is generous to the
original's per-token PyTorch loop.
"""

import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/refine.py
from refine import _scipy_refine  # noqa: E402
from sr_jax import generator, inference  # noqa: E402
from sr_jax.model import Transformer, model_config  # noqa: E402

# The original E2E code's BFGS refinement, measured side by side on a quiet machine of
# this kind: shared/spec/measured.md, "Anchors measured side by side here", 2026-11-30.
ORIGINAL_REFINE_EXPRESSIONS_PER_S = 5.84


def _datasets(num: int, seed: int):
  config = generator.GeneratorConfig()
  samples = [generator.generate(config, seed, i, test=True) for i in range(num)]
  return [(s.x, s.y) for s in samples]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--pretrained", default="default",
                      help="'default' (the shipped model), a model file or a training run")
  parser.add_argument("--size", default=None, help="a preset with random weights instead")
  parser.add_argument("--num", type=int, default=1000)
  parser.add_argument("--candidates", type=int, default=10)
  parser.add_argument("--refine", type=int, default=10)
  parser.add_argument("--decode_batch", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--one_by_one", type=int, default=16,
                      help="datasets decoded one at a time for the original's decoding")
  parser.add_argument("--scipy_num", type=int, default=100,
                      help="unrefined candidates refined by the scipy BFGS baseline")
  args = parser.parse_args()
  if args.size:
    model = Transformer(model_config(args.size), rngs=nnx.Rngs(0))
    name = f"random {args.size}"
  else:
    model, name = inference.load_model(args.pretrained), f"trained {args.pretrained}"
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
  scipy_rate = _scipy_rate(output.results, datasets, args.scipy_num)
  ceilings = {"original E2E code, measured.md 2026-11-30: 5.84 expr/s":
              ORIGINAL_REFINE_EXPRESSIONS_PER_S / args.refine,
              f"in-repo scipy BFGS, this run: {scipy_rate:.2f} expr/s": scipy_rate / args.refine}
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
  print(f"| decoding one dataset at a time, s per dataset | {one_by_one:.3f} |")
  for what, ceiling in ceilings.items():
    with_decoding = 1 / (1 / ceiling + one_by_one)
    print(f"| vs ceiling from {what} ({ceiling:.3f} datasets/s) | {rate / ceiling:.0f}x |")
    print(f"| ... with our decoding one at a time ({with_decoding:.3f} datasets/s) | "
          f"{rate / with_decoding:.0f}x |")
  print("(stage shares can sum past 100%: decoding runs in a worker thread beside "
        "ranking and refinement)")


def _scipy_rate(results, datasets, num: int) -> float:
  """Expressions/s of the scipy BFGS baseline (E2E's refinement: 1 s cap, first 1024
  points) on the pipeline's unrefined candidates, in the user's units."""
  work = [(list(c.prefix), datasets[i][0][:, list(r.features)], datasets[i][1])
          for i, r in enumerate(results) for c in r.candidates
          if not c.refined and any(not isinstance(t, str) for t in c.prefix)][:num]
  begin = time.perf_counter()
  for prefix, x, y in work:
    _scipy_refine(prefix, x[:1024], y[:1024])
  return len(work) / (time.perf_counter() - begin)


def _decode_seconds_one_by_one(model, datasets, config) -> float:
  """Mean decoding seconds per dataset when each is run alone (after a compile)."""
  alone = dataclasses.replace(config, num_refine=1)  # decoding is what is timed
  inference.run(model, datasets[:1], alone)
  return float(np.mean([inference.run(model, [d], alone).seconds["decode"]
                        for d in datasets]))


if __name__ == "__main__":
  main()
