"""E2E's in-domain Table 2 against training compute: what each model file scores with
today's pipeline, and how many training examples each target projects to.

    python benchmarks/projection.py --models A.srj,B.srj,... --problems 200 \
        --out benchmarks/results/projection

Evaluates every model file on the same in-domain problems with eval.py's protocol and
defaults, model alone (`eval.py --suite in_domain --in_domain_size 600 --max_datasets
N --search_time 0`: refinement, residual rounds, tidying, relative polish; no search),
into OUT/<file name>/results.jsonl (a rerun reads finished tasks back). Then fits each
metric of E2E's Table 2 (report.E2E_IN_DOMAIN), and R2 > 0.99, as a + b log10(examples)
over the files (examples from each file's card) and prints, per metric, the last
file's value, E2E's, the gain per 10x examples and the examples the fit reaches E2E's
at. Writes projection.csv and projection.png into OUT. A line through files of
different sizes and schedules is a guide, not a scaling law: say so where it is quoted.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sr_jax import inference, pretrained, report, suite_runner, suites  # noqa: E402

METRICS = ("R2>0.99", *report.E2E_IN_DOMAIN)


def scores(path: str, problems, out: str) -> dict:
  """The file's card facts and report.summary's in-domain metrics."""
  card = pretrained.card(path)
  config = suite_runner.SuiteConfig(inference=inference.InferenceConfig(search_time=0.0))
  outdir = os.path.join(out, os.path.splitext(os.path.basename(path))[0])
  rows = suite_runner.run(pretrained.load(path), problems, outdir, config)
  summary = report.summary(rows).iloc[0]
  return {"file": os.path.basename(path), "size": card.get("size"),
          "examples": card["examples"], "train_flops": card.get("compute", {}).get("flops"),
          "valid_loss": card.get("validation", {}).get("valid_loss"),
          **{m: float(summary[m]) for m in METRICS}}


def projection(examples: np.ndarray, values: np.ndarray, target: float | None
               ) -> tuple[float, float, float | None]:
  """The fit values = intercept + slope log10(examples) as (slope: the gain per 10x
  examples, intercept, the examples where it reaches target): inf where the fit does
  not rise, the last file's examples where that file is there, None without a target."""
  slope, intercept = (float(v) for v in np.polyfit(np.log10(examples), values, 1))
  if target is None:
    return slope, intercept, None
  if values[np.argmax(examples)] >= target:
    return slope, intercept, float(examples.max())
  if slope <= 0:
    return slope, intercept, float("inf")
  return slope, intercept, float(10 ** ((target - intercept) / slope))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", required=True, help="model files, comma separated")
  parser.add_argument("--problems", type=int, default=200, help="in-domain problems")
  parser.add_argument("--out", default="runs/projection")
  args = parser.parse_args()
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import pandas as pd
  os.makedirs(args.out, exist_ok=True)
  problems = suites.load("in_domain", size=600)[:args.problems]
  frame = pd.DataFrame([scores(path, problems, args.out)
                        for path in args.models.split(",")]).sort_values("examples")
  frame.to_csv(os.path.join(args.out, "projection.csv"), index=False)
  print(frame.to_string(index=False))
  examples = frame["examples"].to_numpy(float)
  targets = {"R2>0.99": None, **report.E2E_IN_DOMAIN}
  print("\n| metric | last file | E2E Table 2 | gain per 10x examples | examples to E2E's |")
  print("|---|---|---|---|---|")
  figure, (loss_axis, axis) = plt.subplots(1, 2, figsize=(12, 4.5))
  for size, part in frame.groupby("size"):
    loss_axis.plot(part["examples"], part["valid_loss"], marker="o", label=size)
  # Each file's card holds the validation loss of its own run's recipe (the CPU
  # recipe's four point buckets, the accelerator's one): compare within a size only.
  loss_axis.set(xscale="log", xlabel="training examples seen",
                ylabel="validation loss (nats/token), each run's recipe")
  loss_axis.legend(fontsize=8)
  grid = np.logspace(np.log10(examples.min()), np.log10(examples.max()) + 1.5, 50)
  for metric, target in targets.items():
    values = frame[metric].to_numpy(float)
    line = axis.plot(examples, values, marker="o", label=metric)[0]
    slope, intercept, needed = projection(examples, values, target)
    axis.plot(grid, intercept + slope * np.log10(grid), ls=":", color=line.get_color())
    if target is None:
      print(f"| {metric} | {values[-1]:.3f} | | {slope:+.3f} | |")
      continue
    axis.axhline(target, ls="--", lw=0.8, color=line.get_color())
    print(f"| {metric} | {values[-1]:.3f} | {target} | {slope:+.3f} | {needed:.3g} |")
  axis.set(xscale="log", xlabel="training examples seen", ylim=(0, 1),
           ylabel=f"in-domain test metric ({args.problems} problems, model alone)",
           title="dotted: fit a + b log10(examples); dashed: E2E's Table 2")
  axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(os.path.join(args.out, "projection.png"), dpi=110)


if __name__ == "__main__":
  main()
