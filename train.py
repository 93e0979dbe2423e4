"""Pretrain an sr_jax model on expressions generated on the fly.

    python train.py --config configs/debug.py --workdir runs/debug
    python train.py --config configs/default.py:size=s20m --config.train.num_steps=20000

Rerunning with the same --workdir resumes from its newest checkpoint, exactly.
Several processes (one per host): set --coordinator, --num_processes, --process_id.
"""

from absl import app, flags, logging
from ml_collections import config_flags

import jax

from sr_jax import training

_CONFIG = config_flags.DEFINE_config_file("config", "configs/debug.py",
                                          "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/debug", "Checkpoints, metrics, config.")
_COORDINATOR = flags.DEFINE_string("coordinator", None,
                                   "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def main(argv):
  del argv
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  logging.info("process %d of %d, %d local devices", jax.process_index(),
               jax.process_count(), jax.local_device_count())
  metrics = training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("final metrics: %s", metrics)


if __name__ == "__main__":
  app.run(main)
