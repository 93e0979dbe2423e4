"""Batched evaluation of a model on benchmark suites with SRBench's protocol.

Every (problem, noise level, seed) is one task: split 75/25 (training capped at 10k
rows, noise on the training y only, metrics.srbench_split), formulas found by the
batched pipeline (inference.run) for a whole chunk of tasks at once, then scored on
the test rows (metrics.compute_metrics), checked symbolically against the true formula
when there is one, and on in-domain problems scored on the extrapolation points.

Each finished chunk is appended to `results.jsonl`, so a killed run restarts where it
stopped: tasks already in the file are not redone. `report.py` turns the rows into the
summary table and plots.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from typing import Sequence

import numpy as np

from sr_jax import expressions, inference, metrics, monitor, suites
from sr_jax.model import Transformer

RESULTS_FILE = "results.jsonl"
CURVE_POINTS = 50  # test points kept per row for the predicted-vs-true plots


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
  noise_levels: tuple[float, ...] = (0.0,)
  seeds: tuple[int, ...] = (0,)
  train_cap: int = 10_000
  chunk_size: int = 256  # tasks per inference.run call
  # SRBench's symbolic-solution check (sympy, ~1 s per model here) on these suites:
  # SRBench's ground-truth ones by default, not the generated in-domain formulas.
  symbolic_suites: tuple[str, ...] = ("feynman", "feynman_bonus", "strogatz")
  symbolic_max_nodes: int = 100
  symbolic_timeout: float = 20.0  # seconds per check; sympy's simplify can run for hours
  inference: inference.InferenceConfig = inference.InferenceConfig()


def task_key(problem: suites.Problem, noise: float, seed: int) -> str:
  return f"{problem.suite}/{problem.name}/noise={noise:g}/seed={seed}"


def read_results(outdir: str) -> list[dict]:
  """Rows written so far; a line cut short by a crash is ignored (its task reruns)."""
  path = os.path.join(outdir, RESULTS_FILE)
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          continue
  return rows


def test_r2(model: Transformer | None, problems: Sequence[suites.Problem],
            config: inference.InferenceConfig, seed: int = 0, propose=None) -> np.ndarray:
  """Test R2 of the pipeline's formula for each problem on its SRBench split (seed, no
  noise), all problems in one batched call: the quick accuracy probe of learning curves
  and scaling runs, without run()'s result files and reports. `propose` as in run()."""
  splits = [metrics.srbench_split(p.x, p.y, seed) for p in problems]
  output = inference.run(model, [(s[0], s[1]) for s in splits], config, propose=propose)
  with np.errstate(all="ignore"):
    return np.array([metrics.r2(y_test, result.predict(x_test))
                     for (_, _, x_test, y_test), result in zip(splits, output.results)])


def run(model: Transformer | None, problems: Sequence[suites.Problem], outdir: str,
        config: SuiteConfig = SuiteConfig(), propose=None) -> list[dict]:
  """Evaluates every task not yet in outdir/results.jsonl; returns all rows.

  `propose` is passed to inference.run (a test double for the model)."""
  os.makedirs(outdir, exist_ok=True)
  finished = read_results(outdir)
  # Rewrite the file without a line a crash cut short, so appends start on a new line:
  # into a new file, renamed over the old one, so a kill here loses nothing.
  path = os.path.join(outdir, RESULTS_FILE)
  with open(path + ".tmp", "w") as out:
    out.writelines(json.dumps(row) + "\n" for row in finished)
  os.replace(path + ".tmp", path)
  done = {row["key"] for row in finished}
  tasks = [(p, noise, seed) for p in problems for noise in config.noise_levels
           for seed in config.seeds if task_key(p, noise, seed) not in done]
  progress = monitor.Progress(len(tasks), unit=" tasks")
  with open(path, "a") as out, \
      _SymbolicChecker(config.symbolic_timeout) as checker:
    for begin in range(0, len(tasks), config.chunk_size):
      chunk = tasks[begin:begin + config.chunk_size]

      def report(done, begin=begin, chunk=chunk):
        progress.update(begin + done, f"{chunk[min(done, len(chunk)) - 1][0].suite}")
      for row in _evaluate_chunk(model, chunk, config, propose, checker, report):
        out.write(json.dumps(row) + "\n")
      out.flush()
  progress.close()
  return read_results(outdir)


class _SymbolicChecker:
  """metrics.symbolic_solution in a worker process with a time limit: a check that
  runs over is reported unsolved and its worker replaced, so nothing hangs (and no
  signal handler is needed)."""

  def __init__(self, timeout: float):
    self.timeout = timeout
    self._pool = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self._pool is not None:
      self._pool.terminate()

  def check(self, model: str, formula: str, feature_names, r2_test: float,
            max_nodes: int) -> metrics.SymbolicCheck:
    if self._pool is None:
      self._pool = multiprocessing.get_context("spawn").Pool(1)
    pending = self._pool.apply_async(metrics.symbolic_solution,
                                     (model, formula, tuple(feature_names), r2_test,
                                      max_nodes))
    try:
      return pending.get(self.timeout)
    except multiprocessing.TimeoutError:
      self._pool.terminate()
      self._pool = None
      return metrics.SymbolicCheck(False, f"sympy took over {self.timeout:g} s: not checked")


def _evaluate_chunk(model, chunk, config: SuiteConfig, propose,
                    checker: _SymbolicChecker, progress) -> list[dict]:
  splits = [metrics.srbench_split(p.x, p.y, seed, train_cap=config.train_cap, noise=noise)
            for p, noise, seed in chunk]
  begin = time.perf_counter()
  output = inference.run(model, [(s[0], s[1]) for s in splits], config.inference,
                         propose=propose, progress=progress)
  seconds_per_task = (time.perf_counter() - begin) / len(chunk)
  # Each task's share of the chunk's stage times: summed over rows they give the run's.
  stage_share = {stage: s / len(chunk) for stage, s in output.seconds.items()}
  rows = []
  for (problem, noise, seed), split, result in zip(chunk, splits, output.results):
    rows.append(_row(problem, noise, seed, split, result, config, seconds_per_task,
                     stage_share, checker))
  return rows


def _row(problem: suites.Problem, noise: float, seed: int, split, result, config,
         seconds: float, stage_seconds: dict, checker: _SymbolicChecker) -> dict:
  _, _, x_test, y_test = split
  best = result.best
  with np.errstate(all="ignore"):
    prediction = result.predict(x_test)
  names = [problem.feature_names[f] for f in result.features]
  model_string = expressions.model_string(list(best.prefix), names)
  row = {"key": task_key(problem, noise, seed), "suite": problem.suite,
         "name": problem.name, "noise": noise, "seed": seed,
         "dimension": problem.metadata["dimension"],
         "num_operators": problem.metadata.get("num_operators"),
         "num_unary_ops": problem.metadata.get("num_unary_ops"),
         "num_binary_ops": problem.metadata.get("num_binary_ops"),
         "srbench_excluded": problem.metadata["srbench_excluded"],
         "model": model_string, "complexity": best.complexity,
         "model_size": metrics.model_size(model_string, names),
         "refined": best.refined, "train_r2": best.r2,
         "num_decoded": result.num_decoded, "num_invalid": result.num_invalid,
         "notes": list(result.notes), "seconds": seconds,
         "stage_seconds": stage_seconds,
         **{f"test_{k}": _plain(v) for k, v in metrics.compute_metrics(y_test,
                                                                        prediction).items()},
         "curve_true": y_test[:CURVE_POINTS].tolist(),
         "curve_pred": [float(v) if np.isfinite(v) else None
                        for v in prediction[:CURVE_POINTS]]}
  if problem.suite in config.symbolic_suites and problem.formula is not None:
    check = checker.check(model_string, problem.formula, problem.feature_names,
                          row["test_r2"], config.symbolic_max_nodes)
    row["symbolic_solution"], row["symbolic_reason"] = check.solved, check.reason
  for sigma, (x, y) in problem.metadata.get("extrapolation", {}).items():
    with np.errstate(all="ignore"):
      row[f"extrapolation_r2_sigma{sigma:g}"] = _plain(metrics.r2(y, result.predict(x)))
  return row


def _plain(value):
  """JSON has no inf/NaN literals that every reader accepts: a non-finite metric is
  stored as null (and counted as a failure by report.summary)."""
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  value = float(value)
  return value if np.isfinite(value) else None
