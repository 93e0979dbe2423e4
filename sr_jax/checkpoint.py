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
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """No usable checkpoint: missing, or every candidate unreadable or corrupt."""


def abstract_like(state):
  """A tree of ShapeDtypeStruct carrying each array's current sharding."""
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)


class Checkpointer:
  """Wraps an orbax CheckpointManager: save every N steps, keep the last K."""

  def __init__(self, directory: str, save_every: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=save_every,
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, extra: dict[str, Any], force: bool = False) -> bool:
    """Starts an (asynchronous) save if `step` is due, or if `force`; returns whether."""
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      extra=ocp.args.JsonSave(extra)),
        force=force)

  def restore(self, abstract_state, step: int | None = None):
    """Returns (step, state, extra). Without `step`, the newest readable checkpoint:
    a corrupt newest one is reported and skipped, so an interrupted save loses at
    most the steps since the one before it."""
    self._manager.wait_until_finished()
    steps = [step] if step is not None else self.all_steps()[::-1]
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    errors = []
    for candidate in steps:
      try:
        restored = self._manager.restore(
            candidate, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                extra=ocp.args.JsonRestore()))
        return candidate, restored["state"], restored["extra"]
      except Exception as e:  # orbax raises many types for unreadable data
        message = f"checkpoint step {candidate} in {self.directory} is unreadable: " \
                  f"{type(e).__name__}: {e}"
        logging.warning(message)
        errors.append(message)
    raise CheckpointError("no usable checkpoint:\n  " + "\n  ".join(errors))

  def close(self) -> None:
    """Waits for pending asynchronous saves; call before the process exits."""
    self._manager.wait_until_finished()
    self._manager.close()
