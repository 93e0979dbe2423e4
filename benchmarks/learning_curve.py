"""Learning curve of a training run: validation loss and in-domain R2 > 0.99 vs examples.

    python benchmarks/learning_curve.py --workdir runs/default_model --problems 100

Reads workdir/metrics.jsonl (validation loss at each validation) and evaluates every
model file train.py kept (workdir/models/step_<N>.srj, train.keep_model_files) on the
same in-domain problems (suites.in_domain, SRBench's split, no search: the model and
refinement alone), then writes learning_curve.csv and learning_curve.png beside them
and prints the table. Several --workdir (comma separated) share one plot, e.g. the
runs of an equal-compute size comparison; --x chooses the horizontal axis.
"""

import argparse
import glob
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sr_jax import inference, pretrained, suite_runner, suites  # noqa: E402


def curve(workdir: str, problems, evaluated: dict) -> list[dict]:
  """One row per kept model file: step, examples, CPU/wall seconds, validation loss,
  in-domain R2 > 0.99. `evaluated` caches rows by file (re-runs skip them)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  valid = {l["step"]: l["valid_loss"] for l in lines if "valid_loss" in l}
  rows = []
  files = glob.glob(os.path.join(workdir, "models", "step_*.srj"))
  for path in sorted(files, key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0])):
    if path not in evaluated:
      card = pretrained.card(path)
      r2 = suite_runner.test_r2(pretrained.load(path), problems,
                                inference.InferenceConfig(search_time=0.0))
      evaluated[path] = {"run": os.path.basename(workdir.rstrip("/")), "step": card["steps"],
                         "examples": card["examples"], "seconds": card["seconds"],
                         "valid_loss": valid.get(card["steps"], card["validation"].get(
                             "valid_loss")),
                         "r2_above_0.99": float(np.mean(r2 > 0.99)),
                         "mean_r2_clipped": float(np.mean(np.clip(np.nan_to_num(
                             r2, nan=0.0, neginf=0.0), 0, 1)))}
      print(json.dumps(evaluated[path]), flush=True)
    rows.append(evaluated[path])
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="one or more, comma separated")
  parser.add_argument("--problems", type=int, default=100, help="in-domain problems")
  parser.add_argument("--x", default="examples", choices=("examples", "seconds", "step"))
  parser.add_argument("--out", default=None, help="folder for the CSV and PNG")
  args = parser.parse_args()
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import pandas as pd
  workdirs = args.workdir.split(",")
  out = args.out or workdirs[0]
  os.makedirs(out, exist_ok=True)
  cache_path = os.path.join(out, "learning_curve_cache.json")
  evaluated = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
  problems = suites.load("in_domain", size=args.problems)
  rows = []
  for workdir in workdirs:
    rows += curve(workdir, problems, evaluated)
    with open(cache_path, "w") as f:
      json.dump(evaluated, f)
  frame = pd.DataFrame(rows)
  frame.to_csv(os.path.join(out, "learning_curve.csv"), index=False)
  figure, (loss_axis, r2_axis) = plt.subplots(1, 2, figsize=(11, 4))
  for run, part in frame.groupby("run"):
    loss_axis.plot(part[args.x], part["valid_loss"], marker="o", label=run)
    r2_axis.plot(part[args.x], part["r2_above_0.99"], marker="o", label=run)
  loss_axis.set(xlabel=args.x, ylabel="validation loss (nats/token)", xscale="log")
  r2_axis.set(xlabel=args.x, ylabel=f"in-domain test R2 > 0.99 ({args.problems} problems)",
              xscale="log")
  loss_axis.legend()
  r2_axis.legend()
  figure.tight_layout()
  figure.savefig(os.path.join(out, "learning_curve.png"), dpi=110)
  print(frame.to_string(index=False))


if __name__ == "__main__":
  main()
