"""Model-selection rules compared on recorded Pareto fronts, without rerunning the search.

    python benchmarks/selection_rules.py runs/search/results.jsonl

benchmarks/search.py records, for each sr_jax dataset, every formula of the final
Pareto front with its training R2 (what a rule may look at) and its test R2 and SRBench
model size (what the rule is judged by). Each rule below picks one formula per dataset
from the training numbers alone; the table gives, per suite / system / budget, the test
R2 > 0.99 and > 0.999 rates and the median size of the picked formulas. The rules are
selection.py's, so the table measures exactly what `InferenceConfig.selection` would
return.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sr_jax import selection  # noqa: E402

RULES = {
    "r2": dict(rule="r2"),
    "penalized 1e-3": dict(rule="penalized", complexity_penalty=1e-3),
    "penalized 1e-4": dict(rule="penalized", complexity_penalty=1e-4),
    "penalized 1e-5": dict(rule="penalized", complexity_penalty=1e-5),
    "simplest 1e-3": dict(rule="simplest", r2_tolerance=1e-3, relative_tolerance=0.0,
                          error_ratio=float("inf")),
    "simplest 1e-4": dict(rule="simplest", r2_tolerance=1e-4, relative_tolerance=0.0,
                          error_ratio=float("inf")),
    "simplest 1e-5": dict(rule="simplest", r2_tolerance=1e-5, relative_tolerance=0.0,
                          error_ratio=float("inf")),
    "simplest 1e-4, relative 0.1 (uncapped, before)": dict(
        rule="simplest", r2_tolerance=1e-4, max_tolerance=float("inf"),
        error_ratio=float("inf")),
    "simplest 1e-4, relative 0.5 (uncapped)": dict(
        rule="simplest", r2_tolerance=1e-4, relative_tolerance=0.5,
        max_tolerance=float("inf"), error_ratio=float("inf")),
    "simplest 1e-4, relative 0.1, at most 3e-4 (before)": dict(
        rule="simplest", r2_tolerance=1e-4, max_tolerance=3e-4, error_ratio=float("inf")),
    "simplest 1e-4, relative 0.1, at most 3e-4, ratio 1e3 near exact fits (default)": dict(
        rule="simplest", r2_tolerance=1e-4, max_tolerance=3e-4),
    "simplest 1e-4, relative 0.1, at most 1e-3": dict(
        rule="simplest", r2_tolerance=1e-4, max_tolerance=1e-3, error_ratio=float("inf")),
    "simplest 1e-4, relative 0.1, at most 3e-3": dict(
        rule="simplest", r2_tolerance=1e-4, max_tolerance=3e-3, error_ratio=float("inf")),
}


def pick(front: list[list], **rule) -> list | None:
  """The front entry [complexity, train R2, test R2, size] that selection_score with
  these arguments (a RULES entry) selects."""
  usable = [f for f in front if f[1] is not None and np.isfinite(f[1])]
  if not usable:
    return None
  complexity = np.array([f[0] for f in usable])
  r2 = np.array([f[1] for f in usable])
  score = selection.selection_score(r2, complexity, **rule)
  return usable[int(np.argmax(score))]


def table(path: str) -> str:
  cells = collections.defaultdict(list)
  with open(path) as f:
    for record in map(json.loads, f):
      if record.get("front"):
        cells[(record["suite"], record.get("noise", 0.0), record["system"],
               record["budget"])].append(record["front"])
  lines = ["| suite | noise | system | budget | datasets | rule | R2>0.99 | R2>0.999 | "
           "median size |", "|---|---|---|---|---|---|---|---|---|"]
  for (suite, noise, system, budget), fronts in sorted(cells.items()):
    choices = {name: [pick(front, **kwargs) for front in fronts]
               for name, kwargs in RULES.items()}
    # No rule can beat the front's best test R2: what the search found at all.
    choices["best on test (an oracle)"] = [
        max((f for f in front if f[2] is not None), key=lambda f: f[2], default=None)
        for front in fronts]
    for name, picked in choices.items():
      test = np.array([-np.inf if p is None or p[2] is None else p[2] for p in picked])
      sizes = [p[3] for p in picked if p is not None and p[3] is not None]
      lines.append(f"| {suite} | {noise:g} | {system} | {budget:g} | {len(fronts)} | "
                   f"{name} | {np.mean(test > 0.99):.3f} | {np.mean(test > 0.999):.3f} | "
                   f"{np.median(sizes):.0f} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("results", help="a results.jsonl written by benchmarks/search.py")
  print(table(parser.parse_args().results))


if __name__ == "__main__":
  main()
