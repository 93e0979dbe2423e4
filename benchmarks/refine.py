"""Batched JAX constant refinement vs E2E's per-expression scipy BFGS.

Expressions come from sr_jax.generator (the E2E distribution). True constants are
perturbed, c * exp(0.3 N(0,1)) + 0.1 N(0,1), and both sides refine from the same
starts on the same (first 1024) points. scipy (BFGS, exact sympy gradients, float64,
1 s cap per expression as E2E's TimedFun) appears only here, never in the library.

  python benchmarks/refine.py [--num 300] [--scipy_num 100] [--method lm]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import sympy

from sr_jax import compiler
from sr_jax import expressions
from sr_jax import generator
from sr_jax import interpreter
from sr_jax import operators
from sr_jax import refine


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


def _r2(y, prediction):
  with np.errstate(all="ignore"):
    sse = np.sum((prediction - y)**2)
    sst = np.sum((y - y.mean())**2)
  return 1 - sse / sst if sst > 0 else float(sse == 0)


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
    scipy.optimize.minimize(loss_and_grad, best["c"], jac=True, method="BFGS")
  except _Timeout:
    pass
  return compiler.with_constants(prefix, best["c"])


def _evaluation_throughput(problems, num_expressions=4096, num_points=200):
  prefixes = [problems[i % len(problems)][0] for i in range(num_expressions)]
  x = np.random.default_rng(0).normal(size=(num_expressions, num_points, 10))
  program = compiler.compile_batch(prefixes)
  args = (*map(jnp.asarray, program.arrays),
          jnp.asarray(program.constants_BxK, interpreter.float_dtype()),
          jnp.asarray(x, interpreter.float_dtype()))
  interpreter.evaluate_batch(*args).block_until_ready()
  begin = time.perf_counter()
  interpreter.evaluate_batch(*args).block_until_ready()
  seconds = time.perf_counter() - begin
  nodes = sum(len(p) for p in prefixes)
  return nodes * num_points / seconds / 1e9, seconds


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num", type=int, default=300)
  parser.add_argument("--scipy_num", type=int, default=100)
  parser.add_argument("--method", default="lm")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  problems = _problems(args.num, args.seed)
  prefixes, xs, ys = map(list, zip(*problems))
  config = refine.RefineConfig(method=args.method)
  refine.refine(prefixes[:8], xs[:8], ys[:8], config)  # warm the common buckets
  begin = time.perf_counter()
  result = refine.refine(prefixes, xs, ys, config)
  jax_seconds = time.perf_counter() - begin
  jax_r2 = np.array([_r2(y, expressions.evaluate(p, x))
                     for p, x, y in zip(result.prefixes, xs, ys)])

  scipy_times, scipy_r2 = [], []
  for prefix, x, y in problems[:args.scipy_num]:
    begin = time.perf_counter()
    refined = _scipy_refine(prefix, x[:1024], y[:1024])
    scipy_times.append(time.perf_counter() - begin)
    scipy_r2.append(_r2(y, expressions.evaluate(refined, x)))
  scipy_r2 = np.array(scipy_r2)

  print(f"device: {jax.devices()[0].platform}, dtype {interpreter.float_dtype()}, "
        f"method {args.method}")
  print("| side | expressions | expr/s | median s/expr | R2>0.99 | R2>0.999 |")
  print("|---|---|---|---|---|---|")
  print(f"| sr_jax batched | {args.num} | {args.num / jax_seconds:.1f} | "
        f"{jax_seconds / args.num:.4f} (batch) | {np.mean(jax_r2 > 0.99):.3f} | "
        f"{np.mean(jax_r2 > 0.999):.3f} |")
  print(f"| scipy BFGS per expression | {args.scipy_num} | "
        f"{len(scipy_times) / sum(scipy_times):.1f} | {np.median(scipy_times):.4f} | "
        f"{np.mean(scipy_r2 > 0.99):.3f} | {np.mean(scipy_r2 > 0.999):.3f} |")
  sub = slice(0, args.scipy_num)
  print(f"same {args.scipy_num} expressions, sr_jax: R2>0.99 "
        f"{np.mean(jax_r2[sub] > 0.99):.3f}, R2>0.999 {np.mean(jax_r2[sub] > 0.999):.3f}")
  gpops, seconds = _evaluation_throughput(problems)
  print(f"evaluation: 4096 expressions x 200 points in {seconds:.3f} s = "
        f"{gpops:.3f} GPops/s (nodes x points)")


if __name__ == "__main__":
  main()
