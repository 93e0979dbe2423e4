"""Batched JAX constant refinement vs E2E's per-expression scipy BFGS.

Expressions come from sr_jax.generator (the E2E distribution). True constants are
perturbed, c * exp(0.3 N(0,1)) + 0.1 N(0,1), and both sides refine from the same
starts on the same (first 1024) points; R2 is computed the same way for both, in
float64 numpy on all points. scipy (BFGS on 1/2 MSE, exact sympy gradients, float64,
1 s cap per expression with the best point kept, as E2E's TimedFun) appears only
here, never in the library.

sr_jax is timed twice per precision: the first call of the process (trace and XLA
compile included, unless JAX_COMPILATION_CACHE_DIR already holds the programs) and a
second, warm call (the table counts the programs each call had to build).

  python benchmarks/refine.py [--num 300] [--scipy_num 300] [--method lm]
  JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache python benchmarks/refine.py  # run twice
"""

import argparse
import dataclasses
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import sympy

from sr_jax import compiler
from sr_jax import expressions
from sr_jax import generator
from sr_jax import interpreter
from sr_jax import metrics
from sr_jax import operators
from sr_jax import refine

# Cache every program when a cache directory is configured (default: only slow ones).
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def _problems(num, seed):
  rng = np.random.default_rng(seed)
  config = generator.GeneratorConfig()
  problems = []
  index = 0
  while len(problems) < num:
    sample = generator.generate(config, seed, index)
    index += 1
    if sample.num_constants == 0 or not np.all(np.isfinite(sample.y)):
      continue
    start = [t if isinstance(t, str) else
             float(t * np.exp(0.3 * rng.normal()) + 0.1 * rng.normal())
             for t in sample.prefix]
    problems.append((start, sample.x, sample.y))
  return problems


def _r2_all(prefixes, xs, ys):
  return np.array([metrics.r2(y, expressions.evaluate(p, x))
                   for p, x, y in zip(prefixes, xs, ys)])


class _Timeout(Exception):
  pass


def _scipy_refine(prefix, x, y, time_limit=1.0):
  """E2E's BFGSRefinement: 1/2 MSE, exact gradients, best x kept at the time limit."""
  symbols = expressions.default_symbols(x.shape[1])
  constants = [sympy.Symbol(f"c_{k}", real=True) for k in range(expressions.num_constants(prefix))]
  slots = iter(constants)

  def build(node):
    if node.is_constant:
      return next(slots)
    if not node.children:
      return symbols[operators.variable_index(node.value)]
    return operators.OPERATORS[node.value].sympy_fn(*map(build, node.children))

  expr = build(expressions.parse(prefix))
  f = sympy.lambdify([constants, symbols], expr, "numpy")
  grads = sympy.lambdify([constants, symbols], [expr.diff(c) for c in constants],
                         "numpy")
  columns = list(x.T)
  best = {"loss": np.inf, "c": np.array([t for t in prefix if not isinstance(t, str)])}
  begin = time.perf_counter()

  def loss_and_grad(c):
    if time.perf_counter() - begin > time_limit:
      raise _Timeout
    with np.errstate(all="ignore"):
      residual = np.broadcast_to(f(c, columns), y.shape) - y
      loss = 0.5 * np.mean(residual**2)
      grad = np.array([np.mean(residual * np.broadcast_to(g, y.shape))
                       for g in grads(c, columns)])
    if np.isfinite(loss) and loss < best["loss"]:
      best.update(loss=loss, c=np.array(c))
    return loss, grad

  try:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
      warnings.simplefilter("ignore", RuntimeWarning)  # overflow in its line search
      scipy.optimize.minimize(loss_and_grad, best["c"], jac=True, method="BFGS")
  except _Timeout:
    pass
  return compiler.with_constants(prefix, best["c"])


def _compiled_programs():
  return refine._advance._cache_size() + refine._blank_carry._cache_size()


def _timed_refine(prefixes, xs, ys, config):
  """(seconds, programs the call had to build, result)."""
  programs = _compiled_programs()
  begin = time.perf_counter()
  result = refine.refine(prefixes, xs, ys, config)
  return time.perf_counter() - begin, _compiled_programs() - programs, result


def _evaluation_throughput(problems, num_expressions=4096, num_points=200):
  """(cold s, warm s, GPops/s warm): operator nodes x points per second of
  evaluate_batch (leaves are read, not computed)."""
  prefixes = [problems[i % len(problems)][0] for i in range(num_expressions)]
  x = np.random.default_rng(0).normal(size=(num_expressions, num_points, 10))
  program = compiler.compile_batch(prefixes)
  args = (*map(jnp.asarray, program.arrays),
          jnp.asarray(program.constants_BxK, interpreter.float_dtype()),
          jnp.asarray(x, interpreter.float_dtype()))
  begin = time.perf_counter()
  interpreter.evaluate_batch(*args).block_until_ready()
  cold = time.perf_counter() - begin
  warm = []
  for _ in range(3):
    begin = time.perf_counter()
    interpreter.evaluate_batch(*args).block_until_ready()
    warm.append(time.perf_counter() - begin)
  nodes = sum(compiler.num_operator_nodes(p) for p in prefixes)  # what the interpreter runs
  return cold, min(warm), nodes * num_points / min(warm) / 1e9


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num", type=int, default=300)
  parser.add_argument("--scipy_num", type=int, default=None, help="default: --num")
  parser.add_argument("--method", default="lm")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  scipy_num = args.num if args.scipy_num is None else args.scipy_num
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  cached_files = len(os.listdir(cache)) if cache and os.path.isdir(cache) else 0
  load_before = os.getloadavg()
  problems = _problems(args.num, args.seed)
  prefixes, xs, ys = map(list, zip(*problems))
  config = refine.RefineConfig(method=args.method)

  rows = []  # (side, precision, compile note, seconds, R2 array)
  # Under x64 the default refines in float32, then polishes in float64
  # (RefineConfig.polish_iters); polish_iters=0 is float64 throughout.
  for precision, x64, precision_config in (
      ("float32", False, config),
      ("float32 + float64 polish", True, config),
      ("float64", True, dataclasses.replace(config, polish_iters=0))):
    with jax.enable_x64(x64):
      for call in ("1st call", "2nd call"):
        seconds, compiled, result = _timed_refine(prefixes, xs, ys, precision_config)
        note = (f"{call}: {compiled} new program(s)" if compiled else
                f"{call}: 0 new programs (warm)")
        rows.append((f"sr_jax {args.method}, batched", precision, note, seconds,
                     _r2_all(result.prefixes, xs, ys), None))

  scipy_times, scipy_r2 = [], []
  for prefix, x, y in problems[:scipy_num]:
    begin = time.perf_counter()
    refined = _scipy_refine(prefix, x[:1024], y[:1024])
    scipy_times.append(time.perf_counter() - begin)
    scipy_r2.append(metrics.r2(y, expressions.evaluate(refined, x)))
  if scipy_num:
    rows.append(("scipy BFGS, per expression", "float64", "-", sum(scipy_times),
                 np.array(scipy_r2), np.median(scipy_times)))
  eval_cold, eval_warm, gpops = _evaluation_throughput(problems)
  load_after = os.getloadavg()

  print(f"device: {jax.devices()[0].platform}; {os.cpu_count()} CPUs; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; persistent compilation "
        f"cache: {cache or 'off'}" + (f" ({cached_files} files before the run)"
                                      if cache else ""))
  print("new program: traced, then XLA-compiled or, when the persistent cache holds "
        "it, loaded from disk")
  print()
  print("| side | precision | timed call | expressions | seconds | expr/s | "
        "s/expr | R2>0.99 | R2>0.999 |")
  print("|---|---|---|---|---|---|---|---|---|")
  for side, precision, note, seconds, r2, median in rows:
    count = len(r2)
    per = (f"{median:.4f} (median)" if median is not None
           else f"{seconds / count:.4f} (mean, batched)")
    print(f"| {side} | {precision} | {note} | {count} | {seconds:.2f} | "
          f"{count / seconds:.1f} | {per} | {np.mean(r2 > 0.99):.3f} | "
          f"{np.mean(r2 > 0.999):.3f} |")
  warm32 = rows[1]
  print()
  if scipy_num:  # --scipy_num 0: sr_jax alone
    scipy_rate = scipy_num / sum(scipy_times)
    print(f"warm float32 sr_jax vs this scipy baseline: "
          f"{args.num / warm32[3] / scipy_rate:.0f}x expressions/s")
  if 0 < scipy_num < args.num:
    subset = [np.mean(r[4][:scipy_num] > t) for r in (warm32,) for t in (0.99, 0.999)]
    print(f"same {scipy_num} expressions, warm float32 sr_jax: R2>0.99 {subset[0]:.3f}, "
          f"R2>0.999 {subset[1]:.3f}")
  print(f"evaluation: 4096 expressions x 200 points (float32), evaluate_batch "
        f"{eval_cold:.2f} s first call (compile included), {eval_warm:.3f} s warm = "
        f"{gpops:.3f} GPops/s (operator nodes x points / s)")


if __name__ == "__main__":
  main()
