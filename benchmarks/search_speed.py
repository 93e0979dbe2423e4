"""Search throughput alone: search.run on a suite's problems from random seed formulas.

    taskset -c 0 python benchmarks/search_speed.py --generations 60 --islands 1

No model and no pipeline: only the evolutionary search (variation, compilation,
LM refinement, selection), so that a change to any of them shows in the seconds. The
first run of each shape compiles (left out: a warm-up run goes first). Prints one
markdown row: suite, datasets, islands, generations, seconds, formulas refined per
second, and a hash of the results (the same hash: the same formulas bit for bit).
"""

import argparse
import hashlib
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sr_jax import metrics, search, suites, variation  # noqa: E402


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--suite", default="strogatz")
  parser.add_argument("--generations", type=int, default=60)
  parser.add_argument("--islands", type=int, default=search.SearchConfig().islands)
  args = parser.parse_args(argv)
  xs, ys, seeds = [], [], []
  for i, problem in enumerate(suites.load(args.suite)):
    x, y, _, _ = metrics.srbench_split(problem.x, problem.y, 0)
    xs.append(x)
    ys.append(y)
    draw = variation.Variation(variation.VariationConfig(), x.shape[1], random.Random(i))
    seeds.append([draw.random_formula() for _ in range(40)])
  streams = list(range(len(xs)))
  search.run(seeds, xs, ys, streams, search.SearchConfig(generations=5, islands=args.islands),
             None)  # compiles
  config = search.SearchConfig(generations=args.generations, islands=args.islands)
  begin = time.perf_counter()
  results = search.run(seeds, xs, ys, streams, config, None)
  seconds = time.perf_counter() - begin
  formulas = sum(r.evaluated for r in results)
  digest = hashlib.md5(repr([(r.front, r.best) for r in results]).encode()).hexdigest()[:10]
  print("| suite | datasets | islands | generations | seconds | formulas/s | results hash |")
  print("|---|---|---|---|---|---|---|")
  print(f"| {args.suite} | {len(xs)} | {args.islands} | {args.generations} | {seconds:.1f} | "
        f"{formulas / seconds:,.0f} | {digest} |")


if __name__ == "__main__":
  main()
