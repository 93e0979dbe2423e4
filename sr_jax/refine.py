"""Batched refinement of expression constants: a JAX replacement for per-expression BFGS.

E2E refines each candidate's constants with scipy BFGS, one expression at a time
(reference.md 5.3). Here B expressions, each with its own dataset, are refined in one
jitted `lax.while_loop` per bucket shape: Levenberg-Marquardt (default) or L-BFGS,
a fixed iteration budget, and an early exit once every expression has converged.

Jacobians use forward mode (`jax.jacfwd`): expressions have few constants, and forward
mode keeps each data point's derivatives separate, so a NaN at one (masked) point
cannot leak into the others. An expression keeps its best finite constants; if its
loss is never finite it keeps its start and gets status NON_FINITE.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sr_jax import compiler
from sr_jax import expressions
from sr_jax import interpreter

POINT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024)


class Status(enum.IntEnum):
  CONVERGED = 0  # relative loss change below tolerance
  MAX_ITERS = 1  # budget spent; the best constants so far are returned
  NO_CONSTANTS = 2  # nothing to refine; loss and R2 are still reported
  NO_DATA = 3  # no point with finite x and y
  NON_FINITE = 4  # the loss was not finite at any constants tried


@dataclasses.dataclass(frozen=True)
class RefineConfig:
  method: str = "lm"  # "lm" (Levenberg-Marquardt) or "lbfgs" (optax)
  max_iters: int = 100
  max_points: int = 1024  # E2E refines on the first 1024 points
  ftol: float = 1e-9  # converged when the relative loss change is below this
  initial_damping: float = 1e-3  # LM lambda, relative to diag(J^T J)
  n_starts: int = 1  # starts per expression: the given constants + perturbed ones
  start_log_scale: float = 0.3  # perturbed start: c * exp(s * N(0,1)) + a * N(0,1)
  start_shift: float = 0.1
  seed: int = 0
  batch_size: int = 256  # expressions x starts per jitted call

  def __post_init__(self):
    if self.method not in ("lm", "lbfgs"):
      raise ValueError(f"method must be 'lm' or 'lbfgs', got {self.method!r}")
    if self.n_starts < 1 or self.max_iters < 0 or self.max_points < 1:
      raise ValueError(f"invalid RefineConfig: {self}")


@dataclasses.dataclass(frozen=True)
class RefineResult:
  """Per expression: refined prefix and constants, MSE and R2 on the refinement
  points, status, and iterations used (by the best start)."""

  prefixes: list
  constants: list[np.ndarray]
  loss: np.ndarray
  r2: np.ndarray
  status: np.ndarray
  iterations: np.ndarray

  def status_names(self) -> list[str]:
    return [Status(s).name for s in self.status]


# ---------------------------------------------------------------------------------
# device side: one expression (vmapped), then the batch loop


def _residuals(constants_K, program, x_NxD, y_N, mask_N):
  """Residuals on valid points; invalid points give exactly 0 (a select, not a
  product, so NaN values there do not leak)."""
  prediction_N = interpreter.evaluate_one(*program, constants_K, x_NxD)
  return jnp.where(mask_N, prediction_N - y_N, 0.0)


def _residuals_and_jacobian(constants_K, program, x_NxD, y_N, mask_N):
  fn = lambda c: (_residuals(c, program, x_NxD, y_N, mask_N),) * 2
  jacobian_NxK, residuals_N = jax.jacfwd(fn, has_aux=True)(constants_K)
  return residuals_N, jnp.where(mask_N[:, None], jacobian_NxK, 0.0)


def _mse(residuals_N, mask_N):
  return jnp.sum(residuals_N**2) / jnp.maximum(jnp.sum(mask_N), 1)


def _relative_change(old, new):
  return jnp.abs(old - new) / jnp.maximum(jnp.abs(old), jnp.finfo(old.dtype).tiny)


def _lm_init(constants_K, active_K, program, x_NxD, y_N, mask_N, config):
  residuals_N, jacobian_NxK = _residuals_and_jacobian(constants_K, program, x_NxD,
                                                      y_N, mask_N)
  loss = _mse(residuals_N, mask_N)
  return dict(constants=constants_K, residuals=residuals_N, jacobian=jacobian_NxK,
              loss=loss, damping=jnp.asarray(config.initial_damping, loss.dtype),
              done=~jnp.isfinite(loss) | ~jnp.any(active_K) | ~jnp.any(mask_N),
              converged=jnp.asarray(False), iterations=jnp.asarray(0, jnp.int32))


def _lm_step(state, active_K, program, x_NxD, y_N, mask_N, config):
  """One damped Gauss-Newton step; a step that does not lower the loss is rejected
  and the damping raised."""
  jacobian_NxK = state["jacobian"]
  gram_KxK = jacobian_NxK.T @ jacobian_NxK
  gradient_K = jacobian_NxK.T @ state["residuals"]
  diagonal_K = jnp.diagonal(gram_KxK)
  # Marquardt scaling; slots the data cannot see (or padding) get a unit diagonal.
  floor = jnp.finfo(gram_KxK.dtype).eps * jnp.max(diagonal_K)
  scale_K = jnp.where(active_K, jnp.maximum(diagonal_K, floor), 1.0)
  damped_KxK = (jnp.where(active_K[:, None] & active_K[None, :], gram_KxK, 0.0)
                + jnp.diag(state["damping"] * scale_K + ~active_K))
  step_K = -jnp.linalg.solve(damped_KxK, jnp.where(active_K, gradient_K, 0.0))
  trial_K = state["constants"] + jnp.where(active_K, step_K, 0.0)
  residuals_N, trial_jacobian_NxK = _residuals_and_jacobian(trial_K, program, x_NxD,
                                                            y_N, mask_N)
  trial_loss = _mse(residuals_N, mask_N)
  running = ~state["done"]
  accepted = running & jnp.isfinite(trial_loss) & (trial_loss < state["loss"])
  converged = running & jnp.isfinite(trial_loss) & (
      _relative_change(state["loss"], trial_loss) <= config.ftol)
  pick = lambda new, old: jnp.where(accepted, new, old)
  damping = jnp.where(accepted, state["damping"] * 0.3, state["damping"] * 10.0)
  return dict(constants=pick(trial_K, state["constants"]),
              residuals=pick(residuals_N, state["residuals"]),
              jacobian=pick(trial_jacobian_NxK, jacobian_NxK),
              loss=pick(trial_loss, state["loss"]),
              damping=jnp.clip(damping, 1e-12, 1e12),
              done=state["done"] | converged | (damping > 1e11),
              converged=state["converged"] | converged,
              iterations=state["iterations"] + running)


@jax.custom_vjp
def _normalized_mse(constants_K, program, x_NxD, y_N, mask_N, y_scale):
  """MSE / y_scale, with a forward-mode gradient (see `_normalized_mse_forward`)."""
  return _mse(_residuals(constants_K, program, x_NxD, y_N, mask_N), mask_N) / y_scale


def _normalized_mse_forward(constants_K, program, x_NxD, y_N, mask_N, y_scale):
  # Reverse mode through the interpreter's node loop would store every node buffer;
  # with a handful of constants, J^T r from jacfwd is cheaper and NaN-isolating.
  residuals_N, jacobian_NxK = _residuals_and_jacobian(constants_K, program, x_NxD,
                                                      y_N, mask_N)
  count = jnp.maximum(jnp.sum(mask_N), 1)
  gradient_K = 2.0 * (jacobian_NxK.T @ residuals_N) / count / y_scale
  return _mse(residuals_N, mask_N) / y_scale, gradient_K


def _normalized_mse_backward(gradient_K, cotangent):
  return (cotangent * gradient_K, None, None, None, None, None)


_normalized_mse.defvjp(_normalized_mse_forward, _normalized_mse_backward)
_LBFGS = optax.lbfgs()


def _lbfgs_value_fn(program, x_NxD, y_N, mask_N):
  y_scale = _y_scale(y_N, mask_N)
  return lambda c: _normalized_mse(c, program, x_NxD, y_N, mask_N, y_scale)


def _masked_variance(y_N, mask_N):
  count = jnp.maximum(jnp.sum(mask_N), 1)
  mean = jnp.sum(jnp.where(mask_N, y_N, 0.0)) / count
  return jnp.sum(jnp.where(mask_N, (y_N - mean)**2, 0.0)) / count


def _y_scale(y_N, mask_N):
  """Masked variance of y (1 where it is 0), so tolerances are scale-free."""
  variance = _masked_variance(y_N, mask_N)
  return jnp.where(variance > 0, variance, 1.0)


def _lbfgs_init(constants_K, active_K, program, x_NxD, y_N, mask_N, config):
  loss = _lbfgs_value_fn(program, x_NxD, y_N, mask_N)(constants_K)
  return dict(constants=constants_K, opt_state=_LBFGS.init(constants_K), loss=loss,
              done=~jnp.isfinite(loss) | ~jnp.any(active_K) | ~jnp.any(mask_N),
              converged=jnp.asarray(False), iterations=jnp.asarray(0, jnp.int32))


def _lbfgs_step(state, active_K, program, x_NxD, y_N, mask_N, config):
  """One L-BFGS step with optax's zoom line search. The loss only decreases, and a
  non-finite trial ends the run at the last (finite) iterate."""
  value_fn = _lbfgs_value_fn(program, x_NxD, y_N, mask_N)
  constants_K, opt_state = state["constants"], state["opt_state"]
  value, gradient_K = optax.value_and_grad_from_state(value_fn)(constants_K,
                                                                state=opt_state)
  gradient_K = jnp.where(active_K, gradient_K, 0.0)
  updates_K, new_opt_state = _LBFGS.update(gradient_K, opt_state, constants_K,
                                           value=value, grad=gradient_K,
                                           value_fn=value_fn)
  trial_K = constants_K + jnp.where(active_K, updates_K, 0.0)
  trial_loss = optax.tree_utils.tree_get(new_opt_state, "value")
  running = ~state["done"]
  finite = jnp.isfinite(trial_loss) & jnp.all(jnp.isfinite(trial_K))
  accepted = running & finite & (trial_loss <= state["loss"])
  converged = running & finite & (
      _relative_change(state["loss"], trial_loss) <= config.ftol)
  new = dict(constants=trial_K, opt_state=new_opt_state, loss=trial_loss)
  old = dict(constants=constants_K, opt_state=opt_state, loss=state["loss"])
  picked = jax.tree.map(lambda n, o: jnp.where(accepted, n, o), new, old)
  return dict(**picked, done=state["done"] | converged | ~accepted,
              converged=state["converged"] | converged,
              iterations=state["iterations"] + running)


_METHODS = {"lm": (_lm_init, _lm_step), "lbfgs": (_lbfgs_init, _lbfgs_step)}


@functools.partial(jax.jit, static_argnames="config")
def _refine_chunk(program, constants_BxK, active_BxK, x_BxNxD, y_BxN, mask_BxN,
                  config):
  """Refines a bucketed chunk; returns constants, MSE, R2, status, iterations."""
  init, step = _METHODS[config.method]
  data = (active_BxK, program, x_BxNxD, y_BxN, mask_BxN)
  state = jax.vmap(functools.partial(init, config=config))(constants_BxK, *data)
  batched_step = jax.vmap(functools.partial(step, config=config))

  def keep_going(carry):
    iteration, state = carry
    return (iteration < config.max_iters) & ~jnp.all(state["done"])

  def advance(carry):
    iteration, state = carry
    return iteration + 1, batched_step(state, *data)

  _, state = jax.lax.while_loop(keep_going, advance, (0, state))
  constants_BxK = state["constants"]
  residuals_BxN = jax.vmap(_residuals)(constants_BxK, program, x_BxNxD, y_BxN,
                                       mask_BxN)
  count_B = jnp.sum(mask_BxN, axis=1)
  loss_B = jax.vmap(_mse)(residuals_BxN, mask_BxN)
  variance_B = jax.vmap(_masked_variance)(y_BxN, mask_BxN)
  # sklearn's convention for constant y: R2 = 1 if fitted exactly, else 0.
  r2_B = jnp.where(variance_B > 0, 1.0 - loss_B / jnp.where(variance_B > 0, variance_B, 1.0),
                   jnp.where(loss_B == 0, 1.0, 0.0))
  status_B = jnp.select(
      [count_B == 0, ~jnp.any(active_BxK, axis=1), ~jnp.isfinite(loss_B),
       state["converged"]],
      [Status.NO_DATA, Status.NO_CONSTANTS, Status.NON_FINITE, Status.CONVERGED],
      Status.MAX_ITERS)
  return constants_BxK, loss_B, r2_B, status_B, state["iterations"]


# ---------------------------------------------------------------------------------
# host side: inputs, starts, buckets, best start


def _start_constants(constants: np.ndarray, config: RefineConfig,
                     rng: np.random.Generator) -> list[np.ndarray]:
  """The given constants, then n_starts - 1 perturbations of them."""
  starts = [constants]
  for _ in range(config.n_starts - 1):
    noise = rng.standard_normal((2, constants.size))
    starts.append(constants * np.exp(config.start_log_scale * noise[0])
                  + config.start_shift * noise[1])
  return starts


def _points(x, y, max_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The first max_points rows, and a mask of rows with finite x and y."""
  x_NxD = np.asarray(x, np.float64)[:max_points]
  y_N = np.asarray(y, np.float64).reshape(-1)[:max_points]
  if x_NxD.ndim != 2 or x_NxD.shape[0] != y_N.shape[0]:
    raise ValueError(f"x must be N x D and y of length N; got {x_NxD.shape}, "
                     f"{y_N.shape}")
  mask_N = np.isfinite(y_N) & np.all(np.isfinite(x_NxD), axis=1)
  return np.where(mask_N[:, None], x_NxD, 0.0), np.where(mask_N, y_N, 0.0), mask_N


def refine(prefixes: Sequence[expressions.Prefix], xs: Sequence[np.ndarray],
           ys: Sequence[np.ndarray], config: RefineConfig = RefineConfig()
           ) -> RefineResult:
  """Refines the constants of prefixes[i] to minimise MSE on (xs[i], ys[i]).

  Each dataset is N_i x D_i (a B x N x D array works too); only its first
  `config.max_points` rows with finite x and y count. The prefixes' own constants
  are the starting point. Runs in float64 when x64 is enabled, else float32.
  """
  if not len(prefixes) == len(xs) == len(ys):
    raise ValueError(f"{len(prefixes)} prefixes, {len(xs)} x and {len(ys)} y")
  rng = np.random.default_rng(config.seed)
  dtype = interpreter.float_dtype()
  data = [_points(x, y, config.max_points) for x, y in zip(xs, ys)]
  num_features = max((x.shape[1] for x, _, _ in data), default=1) or 1
  num_points = compiler.bucket(max((len(y) for _, y, _ in data), default=1) or 1,
                               POINT_BUCKETS)
  entries = []  # (expression index, start constants)
  for i, prefix in enumerate(prefixes):
    compiler.compile_batch([prefix], num_features=data[i][0].shape[1])  # validates
    constants = np.array([t for t in prefix if not isinstance(t, str)], np.float64)
    entries += [(i, c) for c in _start_constants(constants, config, rng)]
  groups: dict[tuple[int, int], list[int]] = {}
  for e, (i, _) in enumerate(entries):
    key = (compiler.bucket(len(prefixes[i]), compiler.LENGTH_BUCKETS),
           compiler.bucket(max(expressions.num_constants(prefixes[i]), 1),
                           compiler.CONSTANT_BUCKETS))
    groups.setdefault(key, []).append(e)
  outputs = [None] * len(entries)
  for (length, slots), members in groups.items():
    for begin in range(0, len(members), config.batch_size):
      chunk = members[begin:begin + config.batch_size]
      size = min(max(8, 1 << (len(chunk) - 1).bit_length()), config.batch_size)
      padded = chunk + [chunk[0]] * (max(size, len(chunk)) - len(chunk))
      program = compiler.compile_batch([prefixes[entries[e][0]] for e in padded],
                                       length, slots)
      constants_BxK = np.zeros((len(padded), slots))
      active_BxK = np.zeros((len(padded), slots), bool)
      x_BxNxD = np.zeros((len(padded), num_points, num_features))
      y_BxN = np.zeros((len(padded), num_points))
      mask_BxN = np.zeros((len(padded), num_points), bool)
      for row, e in enumerate(chunk):
        i, start = entries[e]
        x_NxD, y_N, mask_N = data[i]
        constants_BxK[row, :start.size] = start
        active_BxK[row, :start.size] = True
        x_BxNxD[row, :len(y_N), :x_NxD.shape[1]] = x_NxD
        y_BxN[row, :len(y_N)] = y_N
        mask_BxN[row, :len(y_N)] = mask_N
      results = _refine_chunk(
          tuple(jnp.asarray(a) for a in program.arrays),
          jnp.asarray(constants_BxK, dtype), jnp.asarray(active_BxK),
          jnp.asarray(x_BxNxD, dtype), jnp.asarray(y_BxN, dtype),
          jnp.asarray(mask_BxN), config=config)
      results = [np.asarray(r) for r in results]
      for row, e in enumerate(chunk):
        outputs[e] = [r[row] for r in results]
  best: dict[int, list] = {}
  for (i, start), output in zip(entries, outputs):
    loss = output[1] if np.isfinite(output[1]) else np.inf
    if i not in best or loss < best[i][0]:
      best[i] = [loss, output[0][:start.size].astype(np.float64), *output[1:]]
  ordered = [best[i] for i in range(len(prefixes))]
  return RefineResult(
      prefixes=[compiler.with_constants(p, b[1]) for p, b in zip(prefixes, ordered)],
      constants=[b[1] for b in ordered],
      loss=np.array([b[2] for b in ordered], np.float64),
      r2=np.array([b[3] for b in ordered], np.float64),
      status=np.array([b[4] for b in ordered], np.int32),
      iterations=np.array([b[5] for b in ordered], np.int32))
