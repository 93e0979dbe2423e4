"""Evaluation of a trained checkpoint (what eval.py runs).

Today: teacher-forced token loss and accuracy on the fixed, seeded in-domain
validation stream, for the newest checkpoint in a workdir. Full symbolic-regression
evaluation (decoding, refinement, SRBench suites) builds on this module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import ml_collections

from sr_jax import checkpoint, sharding, training


def run(config: ml_collections.ConfigDict, workdir: str,
        num_batches: int | None = None) -> dict[str, float]:
  """Restores the newest checkpoint under workdir and writes eval_results.json there."""
  cfg = training.RunConfig.from_config_dict(config)
  if num_batches is not None:
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, eval_batches=num_batches))
  mesh = sharding.make_mesh(cfg.mesh)
  graphdef, state, state_shardings = training.create_state(cfg, mesh)
  _, evaluate, batch_shardings = training.compile_steps(cfg, graphdef, state_shardings, mesh)
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise checkpoint.CheckpointError(f"no checkpoints under {workdir!r}: train first "
                                     f"(python train.py --workdir {workdir})")
  checkpointer = checkpoint.Checkpointer(directory, 1, 1)
  step, state, _ = checkpointer.restore(checkpoint.abstract_like(state))
  checkpointer.close()
  with jax.set_mesh(mesh):
    results = training.run_validation(cfg, evaluate, state, batch_shardings)
  results = {"step": step, **{k: float(v) for k, v in results.items()}}
  logging.info("step %d: %s", step, results)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "eval_results.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results
