"""Search vs no search vs random-seeded search vs Operon, at equal seconds per dataset.

    pip install -e ".[bench]"          # pyoperon
    taskset -c 0 python benchmarks/search.py --systems sr_jax,random,model_only --out runs/search
    taskset -c 1 python benchmarks/search.py --systems operon --out runs/search   # beside it
    python benchmarks/search.py --report --out runs/search   # table + plot from the rows

Systems, each given the same SRBench split (75/25, training capped at 10,000 rows) and
the same wall-clock seconds per dataset (--budgets):
- sr_jax: the shipped model (or --pretrained) reading --max_bags bags of 200 points
  (3; E2E reads 10), its candidates ranked on --max_score_points training points
  (2,000, as the regressor), then search for the rest of the budget
  (budget minus what decoding and refinement took per dataset in model_only, run
  first), so that the whole pipeline spends about the budget per dataset;
- random: the same pipeline and search, seeded with random formulas instead of the
  model's candidates (what the transformer adds);
- model_only: no search (search_time 0): the model and refinement alone, once;
- operon: pyoperon's SymbolicRegressor, 1 thread, max_time = budget, SRBench-like
  settings (population and pool 500, length <= 50, 10 LM iterations, linear scaling).
Pin each process to its own core (taskset) to compare one core against one core.

--noise adds SRBench's target noise to the training y of every system (N(0, level *
RMS(y_train)), metrics.srbench_split; the test y stays clean), one level per run.

Metrics per (suite, noise, system, budget), pooled over --seeds (each seed its own split, pipeline
and Operon run): test R2 > 0.99 and > 0.999 rates, SRBench's
symbolic-solution rate (sympy, 20 s per check), median SRBench model size, the
median number of search generations (sr_jax's), and datasets/s (all datasets of a
suite run through sr_jax's pipeline in one batched call;
Operon fits one at a time). Rows go to --out/results.jsonl as they finish; a rerun skips
what is there.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sr_jax import expressions, inference, metrics, suite_runner, suites  # noqa: E402
from sr_jax import search, tidy, variation  # noqa: E402

SYSTEMS = ("sr_jax", "random", "model_only", "operon")


def _problems(names: list[str], in_domain_size: int, max_datasets: int):
  out = {}
  for name in names:
    if name == "feynman":
      problems = [p for p in suites.load("feynman") + suites.load("feynman_bonus")
                  if not p.metadata["srbench_excluded"]]
    elif name == "in_domain":
      problems = suites.load("in_domain", size=in_domain_size)
    else:
      problems = suites.load(name)
    out[name] = problems[:max_datasets] if max_datasets else problems
  return out


def _random_proposer(seed: int, count: int):
  """Bags -> `count` random formulas each (variation.py's random_formula), in place of
  the model's candidates."""
  def propose(bags):
    out = []
    for i, x, _, _ in bags:
      v = variation.Variation(variation.VariationConfig(), x.shape[1],
                              random.Random(seed * 1_000_003 + i))
      out.append([v.random_formula() for _ in range(count)])
    return out
  return propose


def _sr_jax_rows(system, model, problems, budget, args, seed, model_seconds=0.0):
  """model_seconds: what the model stages (decoding, refinement) took per dataset on
  this suite without search; the search gets the rest of the budget, so that the
  whole pipeline spends about `budget` seconds per dataset."""
  splits = [metrics.srbench_split(p.x, p.y, seed, noise=args.noise) for p in problems]
  search_time = max(0.1 * budget, budget - model_seconds)
  config = inference.InferenceConfig(search_time=0.0 if system == "model_only" else search_time,
                                     max_bags=args.max_bags,
                                     max_score_points=args.max_score_points, seed=seed,
                                     selection=args.selection,
                                     tidy=None if args.no_tidy else tidy.TidyConfig(),
                                     search=search.SearchConfig(
                                         generations=0 if system == "model_only"
                                         else args.generations,
                                         max_points=args.search_points))
  propose = _random_proposer(seed, config.num_candidates + 1) if system == "random" else None
  begin = time.perf_counter()
  output = inference.run(None if propose else model, [(s[0], s[1]) for s in splits], config,
                         propose=propose)
  seconds = time.perf_counter() - begin
  rows = []
  for problem, (_, _, x_test, y_test), result in zip(problems, splits, output.results):
    names = [problem.feature_names[f] for f in result.features]
    with np.errstate(all="ignore"):
      r2 = metrics.r2(y_test, result.predict(x_test))
    rows.append((problem, expressions.model_string(list(result.best.prefix), names), r2,
                 seconds / len(problems), _generations(result.notes),
                 _front_record(result, x_test, y_test, names, problem.feature_names)))
  return rows


def _front_record(result, x_test, y_test, names, feature_names) -> list[list]:
  """[complexity, training R2, test R2, SRBench model size] of each formula on the
  Pareto front, simplest first: selection_rules.py scores other model-selection rules
  from these without rerunning the search."""
  x_kept = np.asarray(x_test, np.float64)[:, list(result.features)]
  out = []
  for candidate in result.front:
    with np.errstate(all="ignore"):
      test_r2 = metrics.r2(y_test, expressions.evaluate(list(candidate.prefix), x_kept))
    try:
      size = metrics.model_size(expressions.model_string(list(candidate.prefix), names),
                                feature_names)
    except Exception:  # an unparsable string counts as no size
      size = None
    out.append([candidate.complexity, candidate.r2,
                test_r2 if np.isfinite(test_r2) else None, size])
  return out


def _generations(notes: list[str]) -> int | None:
  """The search's generation count from the pipeline's note (None: no search)."""
  found = [re.match(r"search: (\d+) generations", note) for note in notes]
  return next((int(m.group(1)) for m in found if m), None)


def _operon_rows(problems, budget, seed, noise):
  from pyoperon.sklearn import SymbolicRegressor
  rows = []
  for problem in problems:
    x_train, y_train, x_test, y_test = metrics.srbench_split(problem.x, problem.y, seed,
                                                             noise=noise)
    regressor = SymbolicRegressor(
        allowed_symbols="add,sub,mul,div,constant,variable,sin,cos,exp,log,sqrt,square",
        max_length=50, population_size=500, pool_size=500, optimizer_iterations=10,
        n_threads=1, max_time=max(1, round(budget)), generations=10 ** 6,
        max_evaluations=10 ** 9,
        random_state=seed)
    begin = time.perf_counter()
    try:
      regressor.fit(x_train, y_train)
    except ValueError as error:  # pyoperon scores its front with sklearn, which refuses inf
      print(f"operon failed on {problem.name}: {error}", flush=True)
      rows.append((problem, "", np.nan, time.perf_counter() - begin, None, None))  # a miss
      continue
    seconds = time.perf_counter() - begin
    with np.errstate(all="ignore"):
      r2 = metrics.r2(y_test, regressor.predict(x_test))
    names = problem.feature_names
    model = regressor.get_model_string(regressor.model_, 12, names=list(names))
    rows.append((problem, model, r2, seconds, None, None))
  return rows


def run(args) -> None:
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "results.jsonl")
  done = set()
  if os.path.exists(path):
    with open(path) as f:
      done = {(r["suite"], r.get("noise", 0.0), r["system"], r["budget"], r["name"],
               r.get("seed", 0)) for r in map(json.loads, f)}
  model = None
  if set(args.systems) & {"sr_jax", "model_only"}:
    model = inference.load_model(args.pretrained)
  problems = _problems(args.suites, args.in_domain_size, args.max_datasets)
  model_seconds = {}  # suite -> model_only seconds per dataset
  if os.path.exists(path):
    with open(path) as f:
      for r in map(json.loads, f):
        if r["system"] == "model_only" and r.get("noise", 0.0) == args.noise:
          model_seconds.setdefault(r["suite"], []).append(r["seconds"])
  model_seconds = {k: float(np.mean(v)) for k, v in model_seconds.items()}
  with suite_runner._SymbolicChecker(20.0) as checker, open(path, "a") as out:
    for suite, items in problems.items():
      for budget in args.budgets:
        for seed in args.seeds:
          for system in args.systems:
            if system == "model_only" and budget != args.budgets[0]:
              continue  # budget-independent: once per seed
            _run_rows(suite, system, budget, seed, items, done, model, model_seconds,
                      args, checker, out)


def _run_rows(suite, system, budget, seed, items, done, model, model_seconds, args,
              checker, out) -> None:
  """One (suite, system, budget, seed) cell: its datasets not in `done`, appended to
  `out` as they finish."""
  todo = [p for p in items
          if (suite, args.noise, system, budget, p.name, seed) not in done]
  if not todo:
    return
  rows = (_operon_rows(todo, budget, seed, args.noise) if system == "operon" else
          _sr_jax_rows(system, model, todo, budget, args, seed,
                       model_seconds.get(suite, 0.0)))
  if system == "model_only":
    model_seconds[suite] = float(np.mean([r[3] for r in rows]))
  for problem, model_string, r2, seconds, generations, front in rows:
    record = {"suite": suite, "noise": args.noise, "system": system, "budget": budget,
              "seed": seed,
              "name": problem.name, "test_r2": r2 if np.isfinite(r2) else None,
              "model": model_string, "seconds": seconds, "generations": generations}
    if front is not None:
      record["front"] = front
    try:
      record["model_size"] = metrics.model_size(model_string, problem.feature_names)
    except Exception:  # an unparsable string counts as no size
      record["model_size"] = None
    if problem.formula is not None and suite != "in_domain" and model_string:
      record["symbolic"] = checker.check(model_string, problem.formula,
                                         problem.feature_names, r2, 100).solved
    out.write(json.dumps(record) + "\n")
  out.flush()
  print(f"{suite} noise {args.noise:g} {system} budget {budget} seed {seed}: "
        f"{len(rows)} datasets done",
        flush=True)


_COLORS = {"sr_jax": "tab:green", "random": "tab:orange", "operon": "tab:blue"}


def report(out_dir: str) -> str:
  """The markdown table and a PNG of R2 > 0.99 vs seconds per dataset."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import pandas as pd
  with open(os.path.join(out_dir, "results.jsonl")) as f:
    frame = pd.DataFrame([json.loads(line) for line in f])
  frame["r2"] = frame["test_r2"].astype(float).fillna(-np.inf)
  frame["seed"] = frame["seed"].fillna(0).astype(int) if "seed" in frame else 0
  frame["noise"] = frame["noise"].fillna(0.0) if "noise" in frame else 0.0
  for column in ("symbolic", "generations"):
    if column not in frame:
      frame[column] = np.nan
  table = frame.groupby(["suite", "noise", "system", "budget"]).agg(
      datasets=("name", "nunique"), seeds=("seed", "nunique"),
      r2_99=("r2", lambda r: np.mean(r > 0.99)),
      r2_999=("r2", lambda r: np.mean(r > 0.999)),
      symbolic=("symbolic", lambda s: s.dropna().astype(float).mean() if s.notna().any()
                else np.nan),
      median_size=("model_size", "median"), seconds=("seconds", "mean"),
      generations=("generations", lambda g: g.dropna().median() if g.notna().any()
                   else np.nan)).reset_index()
  table["datasets_per_s"] = 1 / table["seconds"]
  lines = ["| suite | noise | system | s/dataset budget | datasets | seeds | R2>0.99 | "
           "R2>0.999 | symbolic | median size | datasets/s | generations |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for row in table.itertuples():
    lines.append(f"| {row.suite} | {row.noise:g} | {row.system} | {row.budget:g} | "
                 f"{row.datasets} | {row.seeds} | "
                 f"{row.r2_99:.3f} | {row.r2_999:.3f} | {row.symbolic:.3f} | "
                 f"{row.median_size:.0f} | {row.datasets_per_s:.2f} | "
                 f"{'-' if np.isnan(row.generations) else f'{row.generations:.0f}'} |")
  suites_seen = sorted(table["suite"].unique())
  figure, axes = plt.subplots(1, len(suites_seen), figsize=(5 * len(suites_seen), 4),
                              squeeze=False)
  for axis, suite in zip(axes[0], suites_seen):
    part = table[table["suite"] == suite]
    for (system, noise), rows in part.groupby(["system", "noise"]):
      rows = rows.sort_values("budget")
      label = ("model only" if system == "model_only" else system) + (
          f" (noise {noise:g})" if noise else "")
      style = {"linestyle": "--"} if noise else {}
      if system == "model_only":
        axis.axhline(rows["r2_99"].iloc[0], linestyle=":", color="gray", label=label)
      else:
        axis.plot(rows["budget"], rows["r2_99"], marker="o", label=label,
                  color=_COLORS.get(system), **style)
    axis.set(xscale="log", xlabel="seconds per dataset", ylabel="test R2 > 0.99",
             title=suite, ylim=(0, 1))
    axis.legend()
  figure.tight_layout()
  figure.savefig(os.path.join(out_dir, "accuracy_vs_time.png"), dpi=110)
  text = "\n".join(lines)
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(text + "\n")
  return text


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/search_bench")
  parser.add_argument("--systems", default="sr_jax,random,model_only,operon")
  parser.add_argument("--suites", default="feynman,strogatz,in_domain")
  parser.add_argument("--budgets", default="1,2,5,10")
  parser.add_argument("--in_domain_size", type=int, default=200)
  parser.add_argument("--max_datasets", type=int, default=0, help="per suite; 0 = all")
  # 3 bags of 200 points instead of E2E's 10: on the first 30 Feynman problems the model
  # alone took 0.62 s per dataset instead of 2.16 s, at the same R2 (BENCHMARKS.md),
  # which leaves the search the rest of a short budget.
  parser.add_argument("--max_bags", type=int, default=3)
  # The regressor's default (E2E: all training points, up to 10,000): ranking on 10,000
  # points took a third of the model stages' time on Feynman (BENCHMARKS.md).
  parser.add_argument("--max_score_points", type=int, default=2_000)
  parser.add_argument("--pretrained", default="default")
  # Seeds of the SRBench split, the pipeline and Operon: every cell runs once per seed
  # and the table pools them (Strogatz's 14 problems swing by 2-3 solved across seeds).
  parser.add_argument("--seeds", default="0")
  # Ablations of the last stages (sr_jax/tidy.py, selection.py); the defaults are the
  # pipeline's.
  parser.add_argument("--selection", default=inference.InferenceConfig.selection)
  parser.add_argument("--no_tidy", action="store_true", help="return formulas untidied")
  parser.add_argument("--generations", type=int, default=0,
                      help="sr_jax: this many search generations instead of the budget's "
                      "time (reproducible ablations)")
  parser.add_argument("--search_points", type=int,
                      default=search.SearchConfig.max_points,
                      help="sr_jax: points each offspring is fitted and scored on")
  parser.add_argument("--noise", type=float, default=0.0,
                      help="SRBench target noise level on the training y (0.001, 0.01, 0.1)")
  parser.add_argument("--report", action="store_true", help="only summarise --out")
  args = parser.parse_args()
  if not args.report:
    args.systems = args.systems.split(",")
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
      raise SystemExit(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    args.suites = args.suites.split(",")
    args.budgets = [float(b) for b in args.budgets.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    run(args)
  print(report(args.out))


if __name__ == "__main__":
  main()
