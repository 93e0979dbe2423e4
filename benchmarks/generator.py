"""Generator throughput and distribution statistics, printed as a table.

  python benchmarks/generator.py [--samples 20000] [--workers 2]

Throughput: accepted samples/s in this process (wall clock and per CPU second), then
with `--workers` processes (total and per worker), then the full grain pipeline
(generate + tokenize + batch) with the same number of workers. Statistics come from
the multi-worker run and are compared with E2E's measured values (reference.md 1.6).
"""

import argparse
import collections
import multiprocessing
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sr_jax import data, generator, operators  # pylint: disable=g-import-not-at-top

CONFIG = generator.GeneratorConfig()
E2E_LENGTH_BY_DIM = (26, 39, 45, 51, 56, 62, 69, 73, 79, 85)
UNARY = {n for n, op in operators.OPERATORS.items() if op.arity == 1}


def _stats(index_range):
  """Light per-sample statistics (workers return these, not the arrays), and the
  CPU seconds spent: per-CPU-second rates hold even on a shared, busy machine."""
  cpu = time.process_time()
  rows = []
  for i in range(*index_range):
    s = generator.generate(CONFIG, 0, i)
    rows.append((s.input_dimension, s.target_length, s.num_constants, s.num_points,
                 s.num_rejections, s.num_unary_ops,
                 tuple(t for t in s.prefix if t in UNARY)))
  return rows, time.process_time() - cpu


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--samples", type=int, default=20_000)
  parser.add_argument("--single", type=int, default=3_000)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--pipeline_steps", type=int, default=30)
  args = parser.parse_args()
  table = []

  _stats((0, 50))  # warm caches
  wall, cpu = time.perf_counter(), time.process_time()
  _stats((10**9, 10**9 + args.single))
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  table.append(("samples/s, 1 process (wall)", f"{args.single / wall:,.0f}", ""))
  table.append(("samples/s per CPU second, 1 process", f"{args.single / cpu:,.0f}",
                ">= 1,000 (E2E ~38)"))

  chunks = [(i, min(i + 500, args.samples)) for i in range(0, args.samples, 500)]
  with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
    pool.map(_stats, [(0, 10)] * args.workers)  # start-up and imports
    wall = time.perf_counter()
    results = pool.map(_stats, chunks)
    wall = time.perf_counter() - wall
  rows = [r for chunk, _ in results for r in chunk]
  worker_cpu = sum(cpu for _, cpu in results)
  table.append((f"samples/s, {args.workers} workers (total)", f"{len(rows) / wall:,.0f}", ""))
  table.append((f"samples/s per worker CPU second, {args.workers} workers",
                f"{len(rows) / worker_cpu:,.0f}", ">= 1,000"))

  config = data.DataConfig(num_workers=args.workers)
  iterator = data.make_iterator(config, process_index=0, process_count=1)
  next(iterator)
  wall = time.perf_counter()
  examples = sum(len(next(iterator)["index_B"]) for _ in range(args.pipeline_steps))
  wall = time.perf_counter() - wall
  table.append((f"pipeline examples/s, {args.workers} workers (tokenized, batched)",
                f"{examples / wall:,.0f}", ""))

  dims, lengths, constants, points, rejections, num_unary, unary = zip(*rows)
  dims, lengths = np.array(dims), np.array(lengths)
  table.append((f"statistics over {len(rows):,} samples", "", "E2E"))
  table.append(("rejections per accepted sample", f"{np.mean(rejections):.2f}",
                "1.21 (+2.07 dim. rejections, sampled away here)"))
  shares = np.bincount(dims, minlength=11)[1:] / len(dims)
  table.append(("share of each D in 1..10 (min-max)", f"{shares.min():.3f}-{shares.max():.3f}",
                "0.100 each"))
  table.append(("mean target length", f"{lengths.mean():.1f}", "58.7"))
  table.append(("target length p99 / max", f"{np.percentile(lengths, 99):.0f} / {lengths.max()}",
                "107 / 127"))
  for d in range(1, 11):
    table.append((f"  mean length, D={d}", f"{lengths[dims == d].mean():.1f}",
                  str(E2E_LENGTH_BY_DIM[d - 1])))
  table.append(("mean constants", f"{np.mean(constants):.2f}", "10.7"))
  table.append(("mean N", f"{np.mean(points):.1f}", "112"))
  table.append(("mean unary ops", f"{np.mean(num_unary):.2f}", "1.93"))
  counts = collections.Counter(t for ops in unary for t in ops)
  total = sum(counts.values())
  weights = {n: w for n, w in CONFIG.unary_operator_weights if w > 0}
  for name, weight in sorted(weights.items(), key=lambda kv: -kv[1]):
    table.append((f"  unary {name}: accepted share (weight share)",
                  f"{counts[name] / total:.3f}", f"({weight / sum(weights.values()):.3f})"))

  width = max(len(r[0]) for r in table)
  value_width = max(len(r[1]) for r in table)
  print(f"{'metric':<{width}}  {'value':>{value_width}}  target / reference")
  for name, value, reference in table:
    print(f"{name:<{width}}  {value:>{value_width}}  {reference}")


if __name__ == "__main__":
  main()
