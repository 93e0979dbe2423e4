"""Batched refinement of expression constants: a JAX replacement for per-expression BFGS.

E2E refines each candidate's constants with scipy BFGS, one expression at a time
(reference.md 5.3). Here all expressions of a call stream through B *slots* of one
jitted Levenberg-Marquardt (default) or L-BFGS loop. The host hands the device a
queue of waiting expressions at a time, and the loop moves the next one into a slot
the moment its expression finishes, so no slot idles behind a slow neighbour and the
host is only needed once per queue. The expressions are dealt to `num_streams` such
loops, each driven by its own host thread (a step this small runs on one CPU core).
A call has one shape (B slots x L nodes x K constants x N points, each bucketed by
compiler.CALL_*_BUCKETS), hence one compiled program; points are evaluated in chunks
and a step only runs the chunks its slots' datasets fill.

LM needs the Jacobian of the residuals, one row per point; `interpreter` gets it with
one reverse sweep over the expression tree (a NaN at one masked point stays in its
own row). An expression keeps its best finite constants; if its loss is never finite
it keeps its start and gets status NON_FINITE.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import functools
import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sr_jax import compiler
from sr_jax import expressions
from sr_jax import interpreter
from sr_jax import operators

class Status(enum.IntEnum):
  CONVERGED = 0  # relative loss change below tolerance
  MAX_ITERS = 1  # budget spent; the best constants so far are returned
  NO_CONSTANTS = 2  # nothing to refine; loss and R2 are still reported
  NO_DATA = 3  # no point with finite x and y (loss and R2 are NaN)
  NON_FINITE = 4  # the loss was not finite at any constants tried


@dataclasses.dataclass(frozen=True)
class RefineConfig:
  method: str = "lm"  # "lm" (Levenberg-Marquardt) or "lbfgs" (optax)
  max_iters: int = 100
  max_points: int = 1024  # E2E refines on the first 1024 points
  ftol: float = 1e-9  # converged when the relative loss change is below this
  # (or below 8 ulp of the working precision, which float32 cannot resolve)
  initial_damping: float = 1e-3  # LM lambda, relative to diag(J^T J)
  n_starts: int = 1  # starts per expression: the given constants + perturbed ones
  start_log_scale: float = 0.3  # perturbed start: c * exp(s * N(0,1)) + a * N(0,1)
  start_shift: float = 0.1
  seed: int = 0
  batch_size: int = 8  # slots: expressions x starts refined side by side
  # Independent streams of slots, each driven by its own host thread. A step at these
  # sizes runs on one CPU core, so two streams use two cores (1.65x measured on 2
  # cores); on an accelerator one stream's host work overlaps the other's device work.
  # A process pinned to one core gets one stream: two threads there took 1.4x as long
  # (search on Strogatz, 30 generations: 20 s vs 14 s). Results do not depend on it:
  # slots never interact.
  num_streams: int = dataclasses.field(default_factory=lambda: min(2, _usable_cores()))
  # Expressions handed to the device loop per call (its queue): the loop returns to
  # the host when the queue is spent and a slot is free.
  queue_size: int = 32
  # Under x64: up to max_iters iterations run in float32 (2-3x faster per iteration on
  # CPU), then up to polish_iters in float64 from that result (see _refine_mixed);
  # 0 runs them all in float64.
  polish_iters: int = 5

  def __post_init__(self):
    if self.method not in ("lm", "lbfgs"):
      raise ValueError(f"method must be 'lm' or 'lbfgs', got {self.method!r}")
    if (self.n_starts < 1 or self.max_iters < 0 or self.max_points < 1
        or self.batch_size < 1 or self.queue_size < 1 or self.polish_iters < 0
        or self.num_streams < 1):
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
# device side. `slots` holds the B expressions being refined (program rows, start
# constants, data); `state` their optimiser state. A *fresh* slot has just received
# a new expression: its first iteration only evaluates the start. A slot without an
# expression is `done`.


def _point_chunk(num_points: int) -> int:
  """Points evaluated together: a slot only pays for its dataset's chunks, but a node
  step has a fixed cost (~2.5 us on CPU) that small chunks pay often. Measured on
  decoded candidates of 200-point datasets: 256 points 10% faster than 64; on
  1,000 points, 128 to 1,024 within 5%."""
  return min(num_points, 256)


def _converged(old, new, config):
  """The relative loss change is below ftol, or below what the dtype resolves."""
  tolerance = max(config.ftol, 8 * float(jnp.finfo(old.dtype).eps))
  change = jnp.abs(old - new) / jnp.maximum(jnp.abs(old), jnp.finfo(old.dtype).tiny)
  return change <= tolerance


def _evaluate(constants_BxK, slots, running_B):
  """The normal equations' J^T J (B x K x K) and J^T r (B x K), and the MSE, over
  chunks of points: only as many chunks as the largest running dataset needs.
  Residuals and Jacobian rows are scaled by each point's weight (1 unless given).

  Residuals are exactly 0 at invalid points (a select, so NaN there does not leak).
  Jacobian entries at invalid points, inactive slots, or that are not finite are
  dropped: the step is only a proposal, the loss decides.
  """
  batch, num_slots = constants_BxK.shape
  chunk = _point_chunk(slots["y"].shape[1])
  num_chunks = -(-jnp.max(jnp.where(running_B, slots["num_points"], 0)) // chunk)

  def accumulate(c, totals):
    gram_BxKxK, gradient_BxK, sse_B = totals
    take = lambda a: jax.lax.dynamic_slice_in_dim(a, c * chunk, chunk, axis=1)
    prediction_BxC, jacobian_BxKxC = interpreter.values_and_jacobian(
        slots["opcode"], slots["left"], slots["right"], slots["edge"],
        slots["constant_edge"], constants_BxK, take(slots["x"]))
    mask_BxC, weight_BxC = take(slots["mask"]), take(slots["weight"])
    residuals_BxC = jnp.where(mask_BxC, (prediction_BxC - take(slots["y"])) * weight_BxC,
                              0.0)
    keep_BxKxC = (mask_BxC[:, None, :] & slots["active"][:, :, None]
                  & jnp.isfinite(jacobian_BxKxC))
    jacobian_BxKxC = jnp.where(keep_BxKxC, jacobian_BxKxC * weight_BxC[:, None, :], 0.0)
    return (gram_BxKxK + jnp.einsum("bkn,bjn->bkj", jacobian_BxKxC, jacobian_BxKxC),
            gradient_BxK + jnp.einsum("bkn,bn->bk", jacobian_BxKxC, residuals_BxC),
            sse_B + jnp.sum(residuals_BxC**2, axis=1))

  zeros = lambda *shape: jnp.zeros(shape, constants_BxK.dtype)
  gram_BxKxK, gradient_BxK, sse_B = jax.lax.fori_loop(
      0, num_chunks, accumulate,
      (zeros(batch, num_slots, num_slots), zeros(batch, num_slots), zeros(batch)))
  count_B = jnp.maximum(jnp.sum(slots["mask"], axis=1), 1)
  return gram_BxKxK, gradient_BxK, sse_B / count_B


def _lm_blank(slots, config):
  batch, num_slots = slots["start"].shape
  dtype = slots["x"].dtype
  return dict(constants=slots["start"],
              gram=jnp.zeros((batch, num_slots, num_slots), dtype),
              gradient=jnp.zeros((batch, num_slots), dtype),
              loss=jnp.zeros(batch, dtype), damping=jnp.zeros(batch, dtype),
              done=jnp.ones(batch, bool), converged=jnp.zeros(batch, bool),
              iterations=jnp.zeros(batch, jnp.int32), fresh=jnp.zeros(batch, bool))


def _lm_refill(state, slots, fresh_B, config):
  return dict(state,
              constants=jnp.where(fresh_B[:, None], slots["start"], state["constants"]),
              damping=jnp.where(fresh_B, config.initial_damping, state["damping"]),
              done=state["done"] & ~fresh_B,
              converged=state["converged"] & ~fresh_B,
              iterations=jnp.where(fresh_B, 0, state["iterations"]), fresh=fresh_B)


def cholesky_solve(matrix_BxKxK, rhs_BxK):
  """x with matrix x = rhs for each batch row, matrix symmetric positive definite, in
  plain XLA operations (NaN where it is not positive definite).

  Not jax.scipy.linalg.cho_factor: on the CPU its LAPACK kernel splits the batch over
  XLA's intra-op thread pool and waits for the parts, so two programs factorising at
  once (two refinement streams) can hold both threads of a 2-core machine waiting for
  work that no thread is left to run: eval.py hung that way (jaxlib 0.10.2). The
  Cholesky factor L of [[matrix, rhs], [rhs^T, 0]] carries L^-1 rhs in its last row,
  so the forward solve comes with the factor's K column steps; K more solve L^T x =
  L^-1 rhs. K is at most 32 (compiler.CALL_CONSTANT_BUCKETS). Scaled to a unit
  diagonal first, float32 LM solved 2 more of 1,000 perturbed generator expressions
  than with LAPACK (BENCHMARKS.md, 2026-12-04)."""
  batch, num = rhs_BxK.shape
  # Jacobi scaling (unit diagonal): a Gram matrix of constants spans orders of
  # magnitude, and float32 keeps more of the solution when the factor need not.
  inverse_root_BxK = jax.lax.rsqrt(jnp.diagonal(matrix_BxKxK, axis1=1, axis2=2))
  matrix_BxKxK = matrix_BxKxK * inverse_root_BxK[:, :, None] * inverse_root_BxK[:, None, :]
  rhs_BxK = rhs_BxK * inverse_root_BxK
  augmented_BxCxC = jnp.concatenate([
      jnp.concatenate([matrix_BxKxK, rhs_BxK[:, :, None]], axis=2),
      jnp.concatenate([rhs_BxK, jnp.zeros((batch, 1), rhs_BxK.dtype)], axis=1)[:, None]],
      axis=1)
  index_C = jnp.arange(num + 1)

  def factor_column(j, lower_BxCxC):
    row_j_BxC = jax.lax.dynamic_index_in_dim(lower_BxCxC, j, axis=1, keepdims=False)
    column_BxC = (jax.lax.dynamic_index_in_dim(augmented_BxCxC, j, axis=2, keepdims=False)
                  - jnp.einsum("bik,bk->bi", lower_BxCxC, row_j_BxC))
    pivot_B = jnp.sqrt(jax.lax.dynamic_index_in_dim(column_BxC, j, axis=1, keepdims=False))
    column_BxC = jnp.where(index_C >= j, column_BxC / pivot_B[:, None], 0.0)
    return jax.lax.dynamic_update_index_in_dim(lower_BxCxC, column_BxC, j, axis=2)

  lower_BxCxC = jax.lax.fori_loop(0, num, factor_column, jnp.zeros_like(augmented_BxCxC))
  lower_BxKxK, y_BxK = lower_BxCxC[:, :num, :num], lower_BxCxC[:, num, :num]
  diagonal_BxK = jnp.diagonal(lower_BxKxK, axis1=1, axis2=2)

  def backward(k, x_BxK):  # L^T x = y, from the last row up
    i = num - 1 - k
    column_BxK = jax.lax.dynamic_index_in_dim(lower_BxKxK, i, axis=2, keepdims=False)
    value_B = ((jax.lax.dynamic_index_in_dim(y_BxK, i, axis=1, keepdims=False)
                - jnp.sum(column_BxK * x_BxK, axis=1))
               / jax.lax.dynamic_index_in_dim(diagonal_BxK, i, axis=1, keepdims=False))
    return jax.lax.dynamic_update_index_in_dim(x_BxK, value_B, i, axis=1)

  return jax.lax.fori_loop(0, num, backward, jnp.zeros_like(rhs_BxK)) * inverse_root_BxK


def _lm_step(state, slots, config):
  """One damped Gauss-Newton step per slot; a step that does not lower the loss is
  rejected and the damping raised. A fresh slot evaluates its start instead."""
  gram_BxKxK, active_BxK, fresh_B = state["gram"], slots["active"], state["fresh"]
  diagonal_BxK = jnp.diagonal(gram_BxKxK, axis1=1, axis2=2)
  # Marquardt scaling. Slots the data cannot see (or padding) get a unit diagonal,
  # so the damped matrix is positive definite and Cholesky applies.
  floor_B = jnp.finfo(gram_BxKxK.dtype).eps * jnp.max(diagonal_BxK, axis=1)
  seen_BxK = active_BxK & (diagonal_BxK > 0)
  scale_BxK = jnp.where(seen_BxK, jnp.maximum(diagonal_BxK, floor_B[:, None]), 1.0)
  damped_BxKxK = (
      jnp.where(seen_BxK[:, :, None] & seen_BxK[:, None, :], gram_BxKxK, 0.0)
      + jax.vmap(jnp.diag)(state["damping"][:, None] * scale_BxK + ~seen_BxK))
  step_BxK = -cholesky_solve(damped_BxKxK, jnp.where(seen_BxK, state["gradient"], 0.0))
  trial_BxK = state["constants"] + jnp.where(seen_BxK & ~fresh_B[:, None], step_BxK,
                                             0.0)
  running_B = ~state["done"]
  trial_gram_BxKxK, trial_gradient_BxK, trial_loss_B = _evaluate(trial_BxK, slots,
                                                                 running_B)
  finite_B = jnp.isfinite(trial_loss_B)
  accepted_B = running_B & finite_B & (fresh_B | (trial_loss_B < state["loss"]))
  converged_B = (running_B & ~fresh_B & finite_B
                 & _converged(state["loss"], trial_loss_B, config))
  take_B = accepted_B | (running_B & fresh_B)  # a fresh slot records its start's loss
  pick = lambda new, old: jnp.where(
      take_B.reshape(take_B.shape + (1,) * (new.ndim - 1)), new, old)
  damping_B = jnp.where(fresh_B, state["damping"],
                        jnp.where(accepted_B, state["damping"] * 0.3,
                                  state["damping"] * 10.0))
  iterations_B = state["iterations"] + (running_B & ~fresh_B)
  done_B = (state["done"] | converged_B | (damping_B > 1e11)
            | (iterations_B >= slots["budget"])
            | (fresh_B & ~(finite_B & jnp.any(active_BxK, axis=1))))
  return dict(constants=pick(trial_BxK, state["constants"]),
              gram=pick(trial_gram_BxKxK, gram_BxKxK),
              gradient=pick(trial_gradient_BxK, state["gradient"]),
              loss=pick(trial_loss_B, state["loss"]),
              damping=jnp.clip(damping_B, 1e-12, 1e12), done=done_B,
              converged=state["converged"] | converged_B, iterations=iterations_B,
              fresh=fresh_B & ~running_B)


# L-BFGS works per slot (optax's line search evaluates one parameter vector at a
# time), on the normalised loss MSE / var(y), with a forward-mode gradient J^T r.


def _row_residuals(constants_K, slot):
  prediction_N = interpreter.evaluate_one(slot["opcode"], slot["left"], slot["right"],
                                          constants_K, slot["x"])
  return jnp.where(slot["mask"], (prediction_N - slot["y"]) * slot["weight"], 0.0)


def _row_mse(residuals_N, mask_N):
  return jnp.sum(residuals_N**2) / jnp.maximum(jnp.sum(mask_N), 1)


def _y_scale(y_N, mask_N):
  """Masked variance of y (1 where it is 0), so tolerances are scale-free. Callers
  pass the weighted y when the residuals are weighted."""
  count = jnp.maximum(jnp.sum(mask_N), 1)
  mean = jnp.sum(jnp.where(mask_N, y_N, 0.0)) / count
  variance = jnp.sum(jnp.where(mask_N, (y_N - mean)**2, 0.0)) / count
  return jnp.where(variance > 0, variance, 1.0)


@jax.custom_vjp
def _normalized_mse(constants_K, slot):
  return _row_mse(_row_residuals(constants_K, slot), slot["mask"]) / _y_scale(
      slot["y"] * slot["weight"], slot["mask"])


def _normalized_mse_forward(constants_K, slot):
  # Forward mode keeps each point's derivatives separate (a NaN at a masked point
  # cannot leak), and with few constants it is cheap.
  fn = lambda c: (_row_residuals(c, slot),) * 2
  jacobian_NxK, residuals_N = jax.jacfwd(fn, has_aux=True)(constants_K)
  jacobian_NxK = jnp.where(slot["mask"][:, None] & jnp.isfinite(jacobian_NxK),
                           jacobian_NxK, 0.0)
  scale = _y_scale(slot["y"] * slot["weight"], slot["mask"])
  count = jnp.maximum(jnp.sum(slot["mask"]), 1)
  gradient_K = 2.0 * (jacobian_NxK.T @ residuals_N) / count / scale
  return _row_mse(residuals_N, slot["mask"]) / scale, gradient_K


def _normalized_mse_backward(gradient_K, cotangent):
  return cotangent * gradient_K, None


_normalized_mse.defvjp(_normalized_mse_forward, _normalized_mse_backward)
_LBFGS = optax.lbfgs()


def _lbfgs_blank(slots, config):
  batch = slots["start"].shape[0]
  dtype = slots["x"].dtype
  return dict(constants=slots["start"], opt_state=jax.vmap(_LBFGS.init)(slots["start"]),
              loss=jnp.zeros(batch, dtype), done=jnp.ones(batch, bool),
              converged=jnp.zeros(batch, bool), iterations=jnp.zeros(batch, jnp.int32),
              fresh=jnp.zeros(batch, bool))


def _lbfgs_refill(state, slots, fresh_B, config):
  restart = jax.vmap(_LBFGS.init)(slots["start"])
  pick = lambda new, old: jnp.where(
      fresh_B.reshape(fresh_B.shape + (1,) * (new.ndim - 1)), new, old)
  return dict(state, constants=pick(slots["start"], state["constants"]),
              opt_state=jax.tree.map(pick, restart, state["opt_state"]),
              done=state["done"] & ~fresh_B,
              converged=state["converged"] & ~fresh_B,
              iterations=jnp.where(fresh_B, 0, state["iterations"]), fresh=fresh_B)


def _lbfgs_row_step(state, slot, config):
  """One L-BFGS step with optax's zoom line search. The loss only decreases, and a
  non-finite trial ends the run at the last (finite) iterate. `loss` is the MSE."""
  value_fn = lambda c: _normalized_mse(c, slot)
  scale = _y_scale(slot["y"] * slot["weight"], slot["mask"])
  constants_K, opt_state = state["constants"], state["opt_state"]
  value, gradient_K = optax.value_and_grad_from_state(value_fn)(constants_K,
                                                                state=opt_state)
  gradient_K = jnp.where(slot["active"], gradient_K, 0.0)
  updates_K, new_opt_state = _LBFGS.update(gradient_K, opt_state, constants_K,
                                           value=value, grad=gradient_K,
                                           value_fn=value_fn)
  trial_K = constants_K + jnp.where(slot["active"], updates_K, 0.0)
  trial = optax.tree_utils.tree_get(new_opt_state, "value")
  current = jnp.where(state["fresh"], value, state["loss"] / scale)
  running = ~state["done"] & jnp.isfinite(current) & jnp.any(slot["active"])
  finite = jnp.isfinite(trial) & jnp.all(jnp.isfinite(trial_K))
  accepted = running & finite & (trial <= current)
  converged = running & finite & _converged(current, trial, config)
  new = dict(constants=trial_K, opt_state=new_opt_state, loss=trial * scale)
  old = dict(constants=constants_K, opt_state=opt_state, loss=current * scale)
  picked = jax.tree.map(lambda n, o: jnp.where(accepted, n, o), new, old)
  iterations = state["iterations"] + running
  return dict(**picked, converged=state["converged"] | converged, iterations=iterations,
              done=(state["done"] | converged | ~accepted
                    | (iterations >= slot["budget"])), fresh=jnp.asarray(False))


def _lbfgs_step(state, slots, config):
  rows = {k: v for k, v in slots.items() if k not in ("edge", "constant_edge")}
  return jax.vmap(functools.partial(_lbfgs_row_step, config=config))(state, rows)


_METHODS = {"lm": (_lm_blank, _lm_refill, _lm_step),
            "lbfgs": (_lbfgs_blank, _lbfgs_refill, _lbfgs_step)}


@functools.partial(jax.jit, static_argnames=("batch", "config", "layout"))
def _blank_carry(queue_buffers, batch, config, layout):
  """B empty slots shaped like the queue's rows, their (done) optimiser state, and
  which slots hold an expression (none)."""
  queue = _unpack(queue_buffers, layout)
  slots = {name: jnp.zeros((batch,) + a.shape[1:], a.dtype) for name, a in queue.items()}
  # Every node of an empty slot is padding (its own operand), as the interpreter reads it.
  slots["left"] = slots["right"] = jnp.broadcast_to(
      jnp.arange(slots["left"].shape[1], dtype=jnp.int32), slots["left"].shape)
  return dict(slots=slots, state=_METHODS[config.method][0](slots, config),
              occupied=jnp.zeros(batch, bool))


@functools.partial(jax.jit, static_argnames=("config", "layout"), donate_argnames="carry")
def _advance(carry, queue_buffers, queue_length, last, config, layout):
  """Iterates the slots, moving the queue's first `queue_length` expressions into
  slots as they free up, until the queue is spent while a slot is free (the host has
  more), or, for the `last` queue, until every slot is done.

  Returns the carry and, for each expression finished in this call, a row of
  [constants, loss, converged, iterations] and its entry number (-1: unused row).
  """
  _, refill, step = _METHODS[config.method]
  queue = _unpack(queue_buffers, layout)
  batch = carry["occupied"].shape[0]
  capacity = batch + queue["entry"].shape[0]  # the slots' expressions and the queue's
  dtype = carry["state"]["loss"].dtype

  def place(slots, placed_B, source_B):
    return jax.tree.map(lambda slot, waiting: jnp.where(
        placed_B.reshape(placed_B.shape + (1,) * (slot.ndim - 1)), waiting[source_B],
        slot), slots, queue)

  def keep_going(loop):
    occupied_B, taken = loop[0]["occupied"], loop[1]
    free = ~jnp.all(occupied_B)
    return (free & (taken < queue_length)) | (jnp.any(occupied_B) & (~free | last))

  def iterate(loop):
    carry, taken, report_FxR, entry_F, num_finished = loop
    free_B = ~carry["occupied"]
    source_B = taken + jnp.cumsum(free_B, dtype=jnp.int32) - 1
    placed_B = free_B & (source_B < queue_length)
    slots = jax.lax.cond(jnp.any(placed_B), place, lambda slots, *_: slots,
                         carry["slots"], placed_B, jnp.where(placed_B, source_B, 0))
    state = step(refill(carry["state"], slots, placed_B, config), slots, config)
    occupied_B = carry["occupied"] | placed_B
    finished_B = occupied_B & state["done"]
    row_B = jnp.where(finished_B,
                      num_finished + jnp.cumsum(finished_B, dtype=jnp.int32) - 1, capacity)
    report_BxR = jnp.concatenate(
        [state["constants"], state["loss"][:, None],
         state["converged"][:, None].astype(dtype),
         state["iterations"][:, None].astype(dtype)], axis=1)
    return (dict(slots=slots, state=state, occupied=occupied_B & ~finished_B),
            taken + jnp.sum(placed_B, dtype=jnp.int32),
            report_FxR.at[row_B].set(report_BxR, mode="drop"),
            entry_F.at[row_B].set(slots["entry"], mode="drop"),
            num_finished + jnp.sum(finished_B, dtype=jnp.int32))

  num_slots = queue["start"].shape[1]
  carry, _, report_FxR, entry_F, _ = jax.lax.while_loop(keep_going, iterate, (
      carry, jnp.int32(0), jnp.zeros((capacity, num_slots + 3), dtype),
      jnp.full(capacity, -1, jnp.int32), jnp.int32(0)))
  return carry, report_FxR, entry_F


# ---------------------------------------------------------------------------------
# host side: inputs, starts, groups of equal shapes, slot scheduling, best start


def _start_constants(constants: np.ndarray, held: np.ndarray, config: RefineConfig,
                     rng: np.random.Generator) -> list[np.ndarray]:
  """The given constants, then n_starts - 1 perturbations of the ones not held."""
  starts = [constants]
  for _ in range(config.n_starts - 1):
    noise = rng.standard_normal((2, constants.size))
    starts.append(np.where(held, constants,
                           constants * np.exp(config.start_log_scale * noise[0])
                           + config.start_shift * noise[1]))
  return starts


def _usable_cores() -> int:
  """CPU cores this process may run on (taskset / cgroup affinity where the OS says)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def _points(x, y, max_points: int, dtype, weight=None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """The first max_points rows in `dtype`, a mask of the rows whose x and y (and
  weight) are finite in it (float32 cannot hold 1e300: such a point counts as
  missing), and the rows' weights (1 when none are given)."""
  x_NxD = np.asarray(x, np.float64)[:max_points]
  y_N = np.asarray(y, np.float64).reshape(-1)[:max_points]
  if x_NxD.ndim != 2 or x_NxD.shape[0] != y_N.shape[0]:
    raise ValueError(f"x must be N x D and y of length N; got {x_NxD.shape}, "
                     f"{y_N.shape}")
  w_N = np.ones_like(y_N) if weight is None else np.asarray(
      weight, np.float64).reshape(-1)[:max_points]
  if w_N.shape != y_N.shape:
    raise ValueError(f"weights must have one value per point of y; got {w_N.shape} "
                     f"for {y_N.shape}")
  with np.errstate(over="ignore"):
    x_NxD, y_N, w_N = x_NxD.astype(dtype), y_N.astype(dtype), w_N.astype(dtype)
  mask_N = np.isfinite(y_N) & np.all(np.isfinite(x_NxD), axis=1) & np.isfinite(w_N)
  return (np.where(mask_N[:, None], x_NxD, 0), np.where(mask_N, y_N, 0), mask_N,
          np.where(mask_N, w_N, 0))


def _same_data_key(x, y, w=None):
  """Equal for arrays viewing the same memory the same way (candidates of one
  dataset are usually slices of one array); None when that cannot be told."""
  if not all(isinstance(a, np.ndarray) for a in (x, y) + ((w,) if w is not None else ())):
    return None
  view = lambda a: (a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str)
  return view(x), view(y), None if w is None else view(w)


def _variance(y_N, mask_N, w_N) -> float:
  """The variance of the weighted residuals of the best constant prediction: the
  denominator of a (weighted) R2."""
  if not mask_N.any():
    return 0.0
  y_N, w_N = y_N[mask_N].astype(np.float64), w_N[mask_N].astype(np.float64)
  if np.all(w_N == 1):
    return float(np.var(y_N))
  weight_N = w_N**2
  mean = np.sum(weight_N * y_N) / np.sum(weight_N) if np.sum(weight_N) > 0 else 0.0
  return float(np.mean(weight_N * (y_N - mean)**2))


class _Queue:
  """Host rows of slot inputs (in the working dtype): a queue of expressions, each
  with its program, start, budget, data and entry number.

  The named arrays are views into one buffer per dtype, so a queue reaches the device
  in three transfers instead of one per array; `_unpack` names them again inside the
  jitted functions."""

  def __init__(self, rows, num_nodes, num_slots, num_points, dtype):
    fields = dict(  # name: (dtype, shape of one row)
        opcode=(np.int32, (num_nodes,)), left=(np.int32, (num_nodes,)),
        right=(np.int32, (num_nodes,)), edge=(np.int32, (num_nodes,)),
        constant_edge=(np.int32, (num_slots,)), num_points=(np.int32, ()),
        budget=(np.int32, ()), entry=(np.int32, ()), start=(dtype, (num_slots,)),
        x=(dtype, (num_points, operators.MAX_VARIABLES)), y=(dtype, (num_points,)),
        weight=(dtype, (num_points,)), active=(bool, (num_slots,)),
        mask=(bool, (num_points,)))
    group_dtypes = (np.dtype(np.int32), np.dtype(dtype), np.dtype(bool))
    widths = [0] * len(group_dtypes)
    layout = []  # (name, buffer index, first column, row shape): static under jit
    for name, (field_dtype, row_shape) in fields.items():
      group = group_dtypes.index(np.dtype(field_dtype))
      layout.append((name, group, widths[group], row_shape))
      widths[group] += math.prod(row_shape)
    self.layout = tuple(layout)
    self.buffers = [np.zeros((rows, width), d) for d, width in zip(group_dtypes, widths)]
    self.arrays = _unpack(self.buffers, self.layout)

  def fill(self, program, members: range, starts, held, data, budgets) -> None:
    """Rows 0.. of this (new, zeroed) queue: entries `members` of the program, their
    start constants (those `held` are not fitted), datasets and iteration budgets.
    Vectorised: filling row by row was a fifth of the search's time."""
    a, n = self.arrays, len(members)
    rows = slice(members.start, members.stop)
    for name, source in (("opcode", program.opcode_BxL), ("left", program.left_BxL),
                         ("right", program.right_BxL), ("edge", program.edge_BxL),
                         ("constant_edge", program.constant_edge_BxK)):
      a[name][:n] = source[rows]
    a["budget"][:n], a["entry"][:n] = budgets, members
    sizes = np.array([start.size for start in starts])
    present = np.arange(a["active"].shape[1]) < sizes[:, None]
    a["active"][:n][present] = ~np.concatenate(held) if n else []
    with np.errstate(over="ignore"):  # beyond float32: a NON_FINITE start, handled
      a["start"][:n][present] = np.concatenate(starts) if n else []
    # Datasets are shared by many entries: pad each one once, then gather.
    index, padded = {}, []
    for d in data:
      if id(d) not in index:
        index[id(d)] = len(padded)
        padded.append(d)
    num_points = a["y"].shape[1]
    x_UxNxD = np.zeros((len(padded), num_points, a["x"].shape[2]), a["x"].dtype)
    y_UxN = np.zeros((len(padded), num_points), a["y"].dtype)
    mask_UxN = np.zeros((len(padded), num_points), bool)
    weight_UxN = np.zeros((len(padded), num_points), a["weight"].dtype)
    for u, (x_NxD, y_N, mask_N, w_N) in enumerate(padded):
      x_NxD = x_NxD[:, :operators.MAX_VARIABLES]  # columns no variable can name
      x_UxNxD[u, :len(y_N), :x_NxD.shape[1]] = x_NxD
      y_UxN[u, :len(y_N)] = y_N
      mask_UxN[u, :len(y_N)] = mask_N
      weight_UxN[u, :len(y_N)] = w_N
    which = np.array([index[id(d)] for d in data], np.intp)
    a["x"][:n], a["y"][:n], a["mask"][:n] = x_UxNxD[which], y_UxN[which], mask_UxN[which]
    a["weight"][:n] = weight_UxN[which]
    a["num_points"][:n] = [len(padded[u][1]) for u in which]

  def device(self):
    return jax.device_put(self.buffers)


def _unpack(buffers, layout) -> dict:
  """The named arrays (views, for numpy buffers) of _Queue's packed buffers."""
  batch = buffers[0].shape[0]
  return {name: buffers[group][:, first:first + math.prod(row_shape)].reshape(
      batch, *row_shape) for name, group, first, row_shape in layout}


def _device_config(config: RefineConfig) -> RefineConfig:
  """`config` with the fields only the host reads at their defaults: the jitted
  functions take it as a static argument, and these should not cause recompiles."""
  default = RefineConfig()
  host_only = ("max_iters", "max_points", "n_starts", "start_log_scale", "start_shift",
               "seed", "batch_size", "polish_iters", "num_streams", "queue_size")
  return dataclasses.replace(config, **{n: getattr(default, n) for n in host_only})


def _refine_stream(program, starts, held, data, budgets, num_points, config, dtype):
  """Streams entries (one program row each, at most budgets[e] iterations, the
  constants held[e] fixed) through the slots; returns per entry constants, loss (MSE),
  converged flag and iterations."""
  num_entries, num_nodes, num_slots = program.shape
  batch = min(config.batch_size, max(8, 1 << (num_entries - 1).bit_length()))
  device_config = _device_config(config)
  carry, outputs = None, []
  for begin in range(0, num_entries, config.queue_size):
    # A new queue each call: the device may still be copying the previous one.
    queue = _Queue(config.queue_size, num_nodes, num_slots, num_points, dtype)
    end = min(begin + config.queue_size, num_entries)
    queue.fill(program, range(begin, end), starts[begin:end], held[begin:end],
               data[begin:end], budgets[begin:end])
    buffers = queue.device()
    if carry is None:
      carry = _blank_carry(buffers, batch=batch, config=device_config, layout=queue.layout)
    # Not waited for: the host fills the next queue while the device iterates.
    carry, *finished = _advance(carry, buffers, np.int32(end - begin),
                                np.bool_(end == num_entries), config=device_config,
                                layout=queue.layout)
    outputs.append(finished)
  constants_ExK = np.zeros((num_entries, num_slots))
  loss_E = np.zeros(num_entries)
  converged_E = np.zeros(num_entries, bool)
  iterations_E = np.zeros(num_entries, np.int32)
  for report_FxR, entry_F in outputs:
    entry_F = np.asarray(entry_F)
    rows_F = np.asarray(report_FxR)[entry_F >= 0]
    entry_F = entry_F[entry_F >= 0]
    constants_ExK[entry_F] = rows_F[:, :num_slots]
    loss_E[entry_F], converged_E[entry_F], iterations_E[entry_F] = rows_F[:, num_slots:].T
  return constants_ExK, loss_E, converged_E, iterations_E


def refine(prefixes: Sequence[expressions.Prefix], xs: Sequence[np.ndarray],
           ys: Sequence[np.ndarray], config: RefineConfig = RefineConfig(),
           check: bool = True, held: Sequence[np.ndarray] | None = None,
           weights: Sequence[np.ndarray | None] | None = None) -> RefineResult:
  """Refines the constants of prefixes[i] to minimise MSE on (xs[i], ys[i]).

  Each dataset is N_i x D_i (a B x N x D array works too); only its first
  `config.max_points` rows with finite x and y count. The prefixes' own constants
  are the starting point. Runs in float32, or with x64 enabled in float64 (after
  float32 iterations unless config.polish_iters is 0, see `_refine_mixed`).
  check=False skips validating prefixes that are valid by construction and read only
  their dataset's features (the search's offspring). held[i]: a mask over prefixes[i]'s
  constants (in prefix order) that keep their given values (tidy.py refits the rest
  of a formula after rounding one constant). weights[i] (one per point of ys[i], or
  None): the residuals are scaled by them, so the weighted MSE is minimised, and loss
  and R2 are the weighted ones (inference.py's relative polish weighs 1 / |y|).
  """
  if not len(prefixes) == len(xs) == len(ys):
    raise ValueError(f"{len(prefixes)} prefixes, {len(xs)} x and {len(ys)} y")
  held = _held_masks(prefixes, held)
  if weights is None:
    weights = [None] * len(prefixes)
  elif len(weights) != len(prefixes):
    raise ValueError(f"{len(weights)} weight arrays for {len(prefixes)} prefixes")
  if not prefixes:
    return RefineResult([], [], np.zeros(0), np.zeros(0), np.zeros(0, np.int32),
                        np.zeros(0, np.int32))
  if config.polish_iters and interpreter.float_dtype() == jnp.float64:
    return _refine_mixed(prefixes, xs, ys, config, held, weights)
  return _refine(prefixes, xs, ys, config, [config.max_iters] * len(prefixes), held,
                 weights, check)


def _held_masks(prefixes, held) -> list[np.ndarray]:
  """One bool mask per prefix over its constants (all False when held is None)."""
  counts = [expressions.num_constants(p) for p in prefixes]
  if held is None:
    return [np.zeros(n, bool) for n in counts]
  if len(held) != len(prefixes):
    raise ValueError(f"{len(held)} held masks for {len(prefixes)} prefixes")
  masks = [np.asarray(h, bool).reshape(-1) for h in held]
  for i, (mask, n) in enumerate(zip(masks, counts)):
    if mask.size != n:
      raise ValueError(f"held mask {i} has {mask.size} entries for {n} constants")
  return masks


def _refine(prefixes, xs, ys, config: RefineConfig, budgets: Sequence[int],
            held: Sequence[np.ndarray], weights: Sequence[np.ndarray | None],
            check: bool = True) -> RefineResult:
  """refine() in the current precision, with at most budgets[i] iterations for
  prefixes[i] (the budget is data, not part of the compiled program), the constants
  held[i] fixed and the residuals weighted by weights[i] (None: 1)."""
  rng = np.random.default_rng(config.seed)
  dtype = interpreter.float_dtype()
  prepared = {}  # one copy per dataset, not per candidate
  keys = {}  # ids of x, y, w -> _same_data_key: the search passes one pair per dataset
  data = []
  for x, y, w in zip(xs, ys, weights):
    ids = (id(x), id(y), id(w))
    if ids not in keys:
      keys[ids] = _same_data_key(x, y, w)
    key = keys[ids]
    if key is None or key not in prepared:
      prepared[key] = _points(x, y, config.max_points, dtype, w)
    data.append(prepared[key])
  for prefix, (x_NxD, *_) in zip(prefixes, data) if check else ():
    expressions.validate(prefix)
    used = expressions.variables_used(prefix)
    if used and max(used) >= x_NxD.shape[1]:
      raise expressions.ExpressionError(
          f"expression uses x_{max(used)} but the data has {x_NxD.shape[1]} feature(s)")
  num_points = compiler.bucket(max((len(d[1]) for d in data), default=1) or 1,
                               compiler.CALL_POINT_BUCKETS)
  entries = []  # (expression index, start constants)
  for i, prefix in enumerate(prefixes):
    constants = np.array([t for t in prefix if not isinstance(t, str)], np.float64)
    entries += [(i, c) for c in _start_constants(constants, held[i], config, rng)]
  # One shape for the whole call (one compiled program). Slots refilled together
  # should need as many point chunks and nodes: sort by both, largest first, so the
  # last slots to finish run short programs.
  nodes = [compiler.num_operator_nodes(p) for p in prefixes]
  has_points = {id(d): d[2].any() for d in data}
  members = sorted(
      (e for e, (i, _) in enumerate(entries) if has_points[id(data[i])]),
      key=lambda e: (-(-len(data[entries[e][0]][1]) // _point_chunk(num_points)),
                     -nodes[entries[e][0]]))
  outputs = {}  # entry -> (constants, loss, converged, iterations)
  if members:
    num_nodes = compiler.bucket(max(nodes[entries[e][0]] for e in members),
                                compiler.CALL_NODE_BUCKETS)
    num_constants = compiler.bucket(max(max(entries[e][1].size for e in members), 1),
                                    compiler.CALL_CONSTANT_BUCKETS)

    def stream(part):
      with jax.enable_x64(dtype == np.float64):  # the precision is thread-local
        program = compiler.compile_batch([prefixes[entries[e][0]] for e in part],
                                         num_nodes, num_constants, check=False)
        return _refine_stream(program, [entries[e][1] for e in part],
                              [held[entries[e][0]] for e in part],
                              [data[entries[e][0]] for e in part],
                              [budgets[entries[e][0]] for e in part], num_points, config,
                              dtype)

    # Round robin over the sorted entries: every stream gets a similar mix of sizes.
    parts = [members[s::config.num_streams] for s in range(config.num_streams)]
    parts = [part for part in parts if part]
    if len(parts) == 1:
      streamed = [stream(parts[0])]
    else:
      with concurrent.futures.ThreadPoolExecutor(len(parts)) as pool:
        streamed = list(pool.map(stream, parts))
    members = [e for part in parts for e in part]
    results = [np.concatenate(field) for field in zip(*streamed)]
    outputs = {member: output for member, *output in zip(members, *results)}
  best: dict[int, tuple] = {}
  for e, (i, start) in enumerate(entries):
    if e in outputs:
      constants, loss, converged, iterations = outputs[e]
      # Held values as given, not as the working dtype rounded them.
      constants = np.where(held[i], start, constants[:start.size].astype(np.float64))
    else:
      constants, loss, converged, iterations = start, np.nan, False, 0
    rank = loss if np.isfinite(loss) else np.inf
    if i not in best or rank < best[i][0]:
      best[i] = (rank, constants, float(loss), converged, iterations)
  constants = [best[i][1] for i in range(len(prefixes))]
  loss = np.array([best[i][2] for i in range(len(prefixes))], np.float64)
  variances = {}  # once per dataset, not per candidate
  for d in data:
    if id(d) not in variances:
      variances[id(d)] = _variance(d[1], d[2], d[3])
  variance = np.array([variances[id(d)] for d in data])
  with np.errstate(divide="ignore", invalid="ignore"):
    # sklearn's convention for constant y: R2 = 1 if fitted exactly, else 0.
    r2 = np.where(variance > 0, 1.0 - loss / np.where(variance > 0, variance, 1.0),
                  np.where(loss == 0, 1.0, 0.0))
  has_data = np.array([d[2].any() for d in data], bool)
  r2 = np.where(has_data, r2, np.nan)
  status = np.select(
      [~has_data, np.array([c.size == 0 for c in constants]), ~np.isfinite(loss),
       np.array([best[i][3] for i in range(len(prefixes))], bool)],
      [Status.NO_DATA, Status.NO_CONSTANTS, Status.NON_FINITE, Status.CONVERGED],
      Status.MAX_ITERS).astype(np.int32)
  return RefineResult(
      prefixes=[compiler.with_constants(p, c) for p, c in zip(prefixes, constants)],
      constants=constants, loss=loss, r2=r2, status=status,
      iterations=np.array([best[i][4] for i in range(len(prefixes))], np.int32))


def _refine_mixed(prefixes, xs, ys, config: RefineConfig, held: Sequence[np.ndarray],
                  weights: Sequence[np.ndarray | None]) -> RefineResult:
  """float32 iterations, then a float64 polish: LM converges quadratically near a
  minimum, so a few float64 steps from the float32 result reach float64 accuracy.
  Where float32 fails (the expression overflows its range, or the data does: float32
  would drop those points and fit the rest), or its result does not evaluate in
  float64, the expression is refined in float64 from its own constants with the whole
  budget instead. A result worse in float64 than the given constants is replaced by
  them, so no expression ends worse than its start. Measured (BENCHMARKS.md) on decoded
  candidates: 1.2-1.5x faster than float64 throughout, with more R2 > 0.99 (15.6% vs
  14.1% of 256 datasets); on perturbed generated expressions 1.3x faster, at 0.4
  points more R2 > 0.99. Iterations count both stages."""
  with jax.enable_x64(False):
    rough = _refine(prefixes, xs, ys, config, [config.max_iters] * len(prefixes), held,
                    weights)
  all_points = _float32_keeps_every_point(xs, ys, weights, config.max_points)
  usable = [bool(np.isfinite(loss) and np.all(np.isfinite(c)) and complete)
            for c, loss, complete in zip(rough.constants, rough.loss, all_points)]
  polished = [i for i, ok in enumerate(usable) if ok]
  # One float64 call: the polish (or the whole budget), and the given constants of the
  # polished expressions evaluated as they are (budget 0) to compare with.
  both = _refine([p if ok else list(start)
                  for start, p, ok in zip(prefixes, rough.prefixes, usable)]
                 + [prefixes[i] for i in polished],
                 list(xs) + [xs[i] for i in polished], list(ys) + [ys[i] for i in polished],
                 dataclasses.replace(config, n_starts=1),
                 [config.polish_iters if ok else config.max_iters for ok in usable]
                 + [0] * len(polished), list(held) + [held[i] for i in polished],
                 list(weights) + [weights[i] for i in polished])
  n = len(prefixes)
  polish = RefineResult(**{f.name: getattr(both, f.name)[:n]
                           for f in dataclasses.fields(RefineResult)})
  start = {i: n + k for k, i in enumerate(polished)}
  # float32 constants that do not evaluate in float64: start over from the given ones.
  again = [i for i in polished if not np.isfinite(polish.loss[i])]
  if again:
    redo = _refine([prefixes[i] for i in again], [xs[i] for i in again],
                   [ys[i] for i in again], dataclasses.replace(config, n_starts=1),
                   [config.max_iters] * len(again), [held[i] for i in again],
                   [weights[i] for i in again])
    polish = RefineResult(**{
        field.name: _replace_at(getattr(polish, field.name), again, getattr(redo, field.name))
        for field in dataclasses.fields(RefineResult)})
  worse = [i for i in polished if np.isfinite(both.loss[start[i]])
           and not polish.loss[i] <= both.loss[start[i]]]
  if worse:
    polish = RefineResult(**{
        field.name: _replace_at(getattr(polish, field.name), worse,
                                [getattr(both, field.name)[start[i]] for i in worse])
        for field in dataclasses.fields(RefineResult)})
  return dataclasses.replace(polish, iterations=polish.iterations + np.where(
      usable, rough.iterations, 0))


def _float32_keeps_every_point(xs, ys, weights, max_points: int) -> list[bool]:
  """Per dataset: whether every point that counts in float64 is finite in float32."""
  verdicts, out = {}, []
  for x, y, w in zip(xs, ys, weights):
    key = _same_data_key(x, y, w)
    if key is None or key not in verdicts:
      verdicts[key] = bool(np.array_equal(_points(x, y, max_points, np.float32, w)[2],
                                          _points(x, y, max_points, np.float64, w)[2]))
    out.append(verdicts[key])
  return out


def _replace_at(values, indices, replacements):
  values = list(values) if isinstance(values, list) else values.copy()
  for i, value in zip(indices, replacements):
    values[i] = value
  return values
