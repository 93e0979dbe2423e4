"""Regression seeds alone (sparse_seeds.py): their cost and how often one already holds
the law, before any search or refinement.

    taskset -c 0 python benchmarks/regression_seeds.py --suites strogatz,feynman

Per problem (benchmarks/search.py's lists: SRBench's 117 Feynman, 14 Strogatz): SRBench's
split (seed 0), the seeds from the first 128 training rows (as
the search makes them), each scored on the test split with its least-squares
constants. Prints one markdown row per suite: datasets, seeds per dataset, milliseconds
per dataset, and the share whose best seed reaches test R2 > 0.99 / > 0.999.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sr_jax import expressions, metrics, search, sparse_seeds  # noqa: E402
import search as search_bench  # noqa: E402  benchmarks/search.py: the same problems


def _best_test_r2(found, x, y) -> float:
  best = -np.inf
  for prefix in found:
    with np.errstate(all="ignore"):
      prediction = expressions.evaluate(prefix, x)
      r2 = 1 - np.mean((prediction - y) ** 2) / np.var(y)
    if np.isfinite(r2):
      best = max(best, r2)
  return best


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--suites", default="strogatz,feynman")
  args = parser.parse_args(argv)
  rows, rows_used = [], search.SearchConfig().max_points
  problems = search_bench._problems(args.suites.split(","), 200, 0)
  for suite, items in problems.items():
    seconds, counts, r2 = [], [], []
    for problem in items:
      x, y, x_test, y_test = metrics.srbench_split(problem.x, problem.y, 0)
      begin = time.perf_counter()
      found = sparse_seeds.seeds(x[:rows_used], y[:rows_used])
      seconds.append(time.perf_counter() - begin)
      counts.append(len(found))
      r2.append(_best_test_r2(found, x_test, y_test))
    r2 = np.array(r2)
    rows.append(f"| {suite} | {len(r2)} | {np.mean(counts):.0f} | "
                f"{1e3 * np.mean(seconds):.0f} | {1e3 * np.max(seconds):.0f} | "
                f"{np.mean(r2 > 0.99):.3f} | {np.mean(r2 > 0.999):.3f} |")
  print("| suite | datasets | seeds/dataset | ms/dataset | max ms | best seed R2>0.99 | "
        "R2>0.999 |")
  print("|---|---|---|---|---|---|---|")
  print("\n".join(rows))


if __name__ == "__main__":
  main()
