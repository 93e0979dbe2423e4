"""Pretrain an sr_jax model on expressions generated on the fly.

    sr-jax-train --config configs/debug.py --workdir runs/debug
    python train.py --config configs/cpu.py:size=s7m --workdir runs/s7m --config.train.max_minutes=60

Rerunning with the same --workdir resumes from its newest checkpoint, exactly.
Several processes (one per host): set --coordinator, --num_processes, --process_id.
The console shows a progress line and warnings; every log line goes to
workdir/train.log (--verbosity=0 shows them on the console too).
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

import jax

import configs
from sr_jax import console, training

_DEFAULT_CONFIG = os.path.join(os.path.dirname(configs.__file__), "debug.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG,
                                          "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/debug", "Checkpoints, metrics, config.")
_COORDINATOR = flags.DEFINE_string("coordinator", None,
                                   "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def main(argv):
  del argv
  console.setup(os.path.join(_WORKDIR.value, "train.log"))
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  logging.info("process %d of %d, %d local devices", jax.process_index(),
               jax.process_count(), jax.local_device_count())
  metrics = training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    shown = {k: round(float(v), 4) for k, v in metrics.items()
             if k in ("loss", "token_accuracy", "valid_loss", "valid_token_accuracy",
                      "examples_per_sec", "mfu", "mfu_real")}
    print(f"final metrics: {shown}; model file: {os.path.join(_WORKDIR.value, 'model.srj')}")


def run():
  """The console command."""
  app.run(main)
