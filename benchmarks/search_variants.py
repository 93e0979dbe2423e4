"""Search settings compared at a fixed number of generations (an ablation, not a race).

    python benchmarks/search_variants.py --generations 300 --variant population=256
    python benchmarks/search_variants.py --generations 300 --variant population=64 --random_seeds

A fixed number of generations makes each variant's result independent of the machine and
of what else runs on it (a time budget would not), so settings can be compared on a busy
machine. Each run: the shipped model's candidates (or random formulas with
--random_seeds, as benchmarks/search.py's `random` system) seed the search on the first
--max_datasets problems of each suite (Strogatz has 14; Feynman is SRBench's list),
SRBench's split, at each of --seeds (pooled); prints and appends to --out one line per suite: test R2 > 0.99 and
> 0.999 rates and the seconds.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sr_jax import inference, search, suite_runner  # noqa: E402
import search as search_bench  # noqa: E402  benchmarks/search.py


def parse_variant(text: str) -> dict:
  """'population=256,variation.crossover=0.5,mutation.hoist=1' -> SearchConfig
  overrides, typed like the field: `variation.F` sets VariationConfig's field F,
  `mutation.M` the relative frequency of mutation M, `regression_seeds=off` turns
  those seeds off."""
  defaults = search.SearchConfig()
  out, variation_fields, weights = {}, {}, dict(defaults.variation.mutations)
  for item in filter(None, text.split(",")):
    key, _, value = item.partition("=")
    group, _, name = key.partition(".")
    if group == "mutation" and name in weights:
      weights[name] = float(value)
    elif group == "variation" and name not in ("mutations", "binary", "unary") and hasattr(
        defaults.variation, name):
      variation_fields[name] = type(getattr(defaults.variation, name))(value)
    elif key == "regression_seeds" and value == "off":
      out[key] = None
    elif hasattr(defaults, key) and key not in ("generations", "variation",
                                                "regression_seeds"):
      out[key] = type(getattr(defaults, key))(value)
    else:
      raise ValueError(f"unknown search setting {key!r}")
  if variation_fields or weights != dict(defaults.variation.mutations):
    out["variation"] = dataclasses.replace(defaults.variation, **variation_fields,
                                           mutations=tuple(weights.items()))
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--generations", type=int, default=300)
  parser.add_argument("--variant", default="", help="SearchConfig overrides, k=v,...")
  parser.add_argument("--random_seeds", action="store_true")
  parser.add_argument("--suites", default="strogatz,feynman")
  parser.add_argument("--max_datasets", type=int, default=30)
  parser.add_argument("--seeds", default="0",
                      help="comma-separated; each its own split, pipeline and search "
                      "stream, pooled into one line per suite")
  parser.add_argument("--out", default="runs/search_variants.jsonl")
  args = parser.parse_args(argv)
  overrides = parse_variant(args.variant)
  seeds = [int(s) for s in args.seeds.split(",")]
  model = None if args.random_seeds else inference.load_model(None)
  problems = search_bench._problems(args.suites.split(","), 50, args.max_datasets)
  for suite, items in problems.items():
    begin = time.perf_counter()
    r2 = []
    for seed in seeds:
      config = inference.InferenceConfig(
          search=dataclasses.replace(search.SearchConfig(), generations=args.generations,
                                     seed=seed, **overrides), seed=seed)
      propose = (search_bench._random_proposer(seed, config.num_candidates + 1)
                 if args.random_seeds else None)
      r2.append(suite_runner.test_r2(model, items, config, seed, propose=propose))
    seconds = time.perf_counter() - begin
    r2 = np.nan_to_num(np.concatenate(r2), nan=-np.inf)
    line = {"suite": suite, "datasets": len(items), "run_seeds": seeds,
            "generations": args.generations,
            "variant": args.variant, "seeds": "random" if args.random_seeds else "model",
            "r2_above_0.99": float(np.mean(r2 > 0.99)),
            "r2_above_0.999": float(np.mean(r2 > 0.999)), "seconds": round(seconds, 1)}
    print(json.dumps(line), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "a") as f:
      f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
  main()
