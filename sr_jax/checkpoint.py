"""Everything orbax: asynchronous saves of the whole training state, exact resume,
restore onto whatever mesh is current.

A checkpoint holds the model parameters, optimizer state and step (one pytree, each
array saved with its sharding) plus a small JSON record of the data position and the
run's config. Restore goes through an abstract state that carries the *current*
shardings, so a run saved on 8 devices restores onto 1 (or onto another mesh shape).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """No usable checkpoint: missing, or every candidate unreadable or corrupt."""


def abstract_like(state):
  """A tree of ShapeDtypeStruct carrying each array's current sharding."""
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """Orbax's pytree handler (the format StandardSave writes), with one change on the CPU:
  a replicated array is written whole by its first replica, not sliced across replicas.

  Replica-parallel saving compiles a slicing program per array shape and moves one slice
  per device: on 8 CPU devices the first save of the debug model took 3.7 s and later
  ones 0.55-0.66 s, against 0.25-0.33 s for every save this way (BENCHMARKS.md, "The test
  suite under 10 minutes"). CPU devices share one host's memory and disk, so the slices
  bought nothing there; orbax itself turns replica-parallel off when JAX_PLATFORMS names
  a GPU. On other platforms orbax's default stays.
  """
  if jax.default_backend() != "cpu":
    return ocp.PyTreeCheckpointHandler()
  defaults = [(kind, ocp.type_handlers.get_type_handler(kind))
              for kind in ocp.type_handlers.supported_types() if kind is not jax.Array]
  registry = ocp.type_handlers.create_type_handler_registry(
      *defaults, (jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False)))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class Checkpointer:
  """Wraps an orbax CheckpointManager: save every N steps, keep the last K."""

  def __init__(self, directory: str, save_every: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=save_every,
        enable_async_checkpointing=async_save, create=True)
    self._manager = self._new_manager()

  def _new_manager(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory, options=self._options,
        item_handlers={"state": _state_handler(), "extra": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, extra: dict[str, Any], force: bool = False) -> bool:
    """Starts an (asynchronous) save if `step` is due, or if `force`; returns whether."""
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                      extra=ocp.args.JsonSave(extra)),
        force=force)

  def restore(self, abstract_state, step: int | None = None):
    """Returns (step, state, extra). Without `step`, the newest readable checkpoint:
    a corrupt newer one is reported and moved aside (to `<directory>-corrupt/`, never
    deleted), so an interrupted save loses at most the steps since the one before it
    and later saves of those steps go ahead."""
    self._manager.wait_until_finished()
    steps = [step] if step is not None else self.all_steps()[::-1]
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    errors = []
    for candidate in steps:
      try:
        restored = self._manager.restore(
            candidate, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    abstract_state,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)),
                extra=ocp.args.JsonRestore()))
      except Exception as e:  # orbax raises many types for unreadable data
        message = f"checkpoint step {candidate} in {self.directory} is unreadable: " \
                  f"{type(e).__name__}: {e}"
        logging.warning(message)
        errors.append(message)
        continue
      if step is None and errors:
        self._move_aside(steps[:len(errors)])
      return candidate, restored["state"], restored["extra"]
    raise CheckpointError("no usable checkpoint:\n  " + "\n  ".join(errors))

  def _move_aside(self, steps: list[int]) -> None:
    """Moves unreadable step folders out of orbax's sight (orbax would keep treating the
    newest as the latest and refuse to save that step again) and says where."""
    aside = self.directory + "-corrupt"
    if jax.process_index() == 0:
      os.makedirs(aside, exist_ok=True)
      for bad in steps:
        target = os.path.join(aside, f"{bad}-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(os.path.join(self.directory, str(bad)), target)
        logging.warning("moved unreadable checkpoint step %d to %s; training goes on from "
                        "the step before it", bad, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("sr_jax checkpoint moved aside")
    self._manager.close()
    self._manager = self._new_manager()

  def close(self) -> None:
    """Waits for pending asynchronous saves; call before the process exits."""
    self._manager.wait_until_finished()
    self._manager.close()
