"""Seconds of one `fit` in a new process: cold (empty compilation cache) and warm.

    python benchmarks/single_fit.py                 # 3 fresh processes per setting

Each measurement is a new Python process that imports sr_jax, builds the default
regressor and fits y = 1.5 x0 x1 + sin(x2) on 200 points; the clock covers the fit
alone (the process also reports import and model-load seconds). Settings:
- cold: an empty persistent compilation cache (every program is compiled);
- warm: the cache filled by an earlier process (sr_jax's default: on, in the user's
  cache directory; here a temporary one);
- no cache: SR_JAX_CACHE_DIR=off, as before the cache was on by default.
search_time=0 isolates the model stages; --search_time adds the default search;
--views sets the regressor's views (default: its own).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, time
begin = time.perf_counter()
import numpy as np
from sr_jax.regressor import SymbolicTransformerRegressor
from sr_jax import inference
imported = time.perf_counter()
model = inference.load_model(None)
loaded = time.perf_counter()
rng = np.random.default_rng(0)
x = rng.uniform(-2, 2, size=(200, 3))
y = 1.5 * x[:, 0] * x[:, 1] + np.sin(x[:, 2])
est = SymbolicTransformerRegressor(model, search_time=SEARCH, random_state=0, **VIEWS)
start = time.perf_counter()
est.fit(x, y)
print(json.dumps({"import_s": imported - begin, "load_s": loaded - imported,
                  "fit_s": time.perf_counter() - start, "r2": float(est.score(x, y))}))
"""


def measure(env: dict, search_time: float, views: str | None) -> dict:
  options = {"views": tuple(views.split(","))} if views else {}
  child = CHILD.replace("SEARCH", repr(search_time)).replace("VIEWS", repr(options))
  done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                        env=env, timeout=900)
  if done.returncode:
    raise RuntimeError(done.stderr[-2000:])
  return json.loads(done.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--search_time", type=float, default=0.0)
  parser.add_argument("--views", default=None, help="e.g. standardised,scaled")
  args = parser.parse_args()
  base = {k: v for k, v in os.environ.items()
          if k not in ("JAX_COMPILATION_CACHE_DIR", "SR_JAX_CACHE_DIR")}
  rows = []
  with tempfile.TemporaryDirectory() as cache:
    for setting in ("no cache", "cold", "warm"):
      for repeat in range(args.repeats):
        if setting == "cold":  # each cold process starts from an empty cache
          directory = os.path.join(cache, f"cold{repeat}")
        else:
          directory = os.path.join(cache, "shared")
        env = dict(base, SR_JAX_CACHE_DIR="off" if setting == "no cache" else directory)
        if setting == "warm" and repeat == 0:
          measure(env, args.search_time, args.views)  # fills the shared cache
        rows.append({"setting": setting, **measure(env, args.search_time, args.views)})
  print(f"search_time={args.search_time}, views={args.views or 'default'}; one fit of 200 "
        "points x 3 features in a new process")
  print("| setting | fit s (each run) | import s | model load s | R2 |")
  print("|---|---|---|---|---|")
  for setting in ("no cache", "cold", "warm"):
    part = [r for r in rows if r["setting"] == setting]
    fits = ", ".join(f"{r['fit_s']:.2f}" for r in part)
    print(f"| {setting} | {fits} | "
          f"{sum(r['import_s'] for r in part) / len(part):.2f} | "
          f"{sum(r['load_s'] for r in part) / len(part):.2f} | "
          f"{sum(r['r2'] for r in part) / len(part):.4f} |")


if __name__ == "__main__":
  main()
