"""Evaluate a trained sr_jax model.

    python eval.py --config configs/debug.py --workdir runs/debug

Restores the newest checkpoint in --workdir (built with the same --config) and reports
in-domain validation token loss and accuracy, also written to workdir/eval_results.json.
"""

from absl import app, flags
from ml_collections import config_flags

from sr_jax import evaluation

_CONFIG = config_flags.DEFINE_config_file("config", "configs/debug.py",
                                          "Config the checkpoint was trained with.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/debug", "Training run to evaluate.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", None, "Validation batches (default: "
                                    "config.train.eval_batches).")


def main(argv):
  del argv
  results = evaluation.run(_CONFIG.value, _WORKDIR.value, _NUM_BATCHES.value)
  print(" ".join(f"{k}={v:.4g}" for k, v in results.items()))


if __name__ == "__main__":
  app.run(main)
