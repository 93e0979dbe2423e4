"""A 4-layer-decoder model (d 256) for CPU-scale experiments and throughput comparisons.

    python train.py --config configs/small.py --workdir runs/small
"""

from configs import default


def get_config(options: str = ""):
  config = default.get_config("size=small" + ("," + options if options else ""))
  config.optim.warmup_steps = 2_000
  config.train.num_steps = 50_000
  return config
