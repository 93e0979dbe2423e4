"""Views on data far from zero: in-domain problems with every feature shifted.

    python benchmarks/shifted_views.py --offset 100 --views standardised
    python benchmarks/shifted_views.py --offset 100 --views standardised,scaled

The 200 in-domain problems (split seed 0) with OFFSET added to every feature and y
unchanged, so each law reads x - OFFSET. The standardised view sees the same inputs as
without the shift; the scaled one (x / RMS) sees features nearly constant. Model +
refinement, no search; prints one line of rates.
"""

import argparse
import dataclasses

import numpy as np

from sr_jax import inference, suite_runner, suites


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--offset", type=float, default=100.0)
  parser.add_argument("--views", default="standardised,scaled")
  parser.add_argument("--size", type=int, default=200)
  parser.add_argument("--outdir", default=None, help="default: runs/shifted_OFFSET_VIEWS")
  args = parser.parse_args()
  views = tuple(args.views.split(","))
  problems = [dataclasses.replace(
      p, name=f"{p.name}_shift", x=p.x + args.offset, formula=None,
      metadata={k: v for k, v in p.metadata.items() if k != "extrapolation"})
      for p in suites.load("in_domain", size=args.size)]
  config = suite_runner.SuiteConfig(inference=inference.InferenceConfig(views=views,
                                                                        search_time=0))
  rows = suite_runner.run(inference.load_model(None), problems,
                          args.outdir or f"runs/shifted_{args.offset:g}_{args.views}", config)
  r2 = np.nan_to_num(np.array([r["test_r2"] for r in rows], float), nan=-np.inf)
  print(f"offset {args.offset:g}, views {args.views}: R2 > 0.99 {np.mean(r2 > 0.99):.3f}, "
        f"R2 > 0.999 {np.mean(r2 > 0.999):.3f}, mean clipped R2 "
        f"{np.mean(np.clip(r2, 0, 1)):.3f}")


if __name__ == "__main__":
  main()
