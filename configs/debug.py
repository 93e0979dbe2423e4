"""A tiny model that trains in about a minute on a laptop CPU: the smoke-test preset.

    python train.py --config configs/debug.py --workdir runs/debug
"""

from configs import default


def get_config(options: str = ""):
  config = default.get_config("size=debug" + ("," + options if options else ""))
  config.data.points_per_batch = 1_600  # 32 examples at 50 points ... 8 at 200
  config.optim.warmup_steps = 100
  config.optim.learning_rate = 1e-3
  config.train.num_steps = 300
  config.train.log_every = 20
  config.train.eval_every = 100
  config.train.eval_batches = 2
  config.train.checkpoint_every = 100
  return config
