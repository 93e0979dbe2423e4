"""One-accelerator pretraining: the recipe of the shipped default model (s7m, trained
on one NVIDIA H200 by benchmarks/device_train.sh, which builds its runs from this).

    python train.py --config configs/accelerator.py --workdir runs/s7m \
        --config.train.max_minutes=6

configs/cpu.py's model, data and schedule shape (lr 1e-3, inverse-sqrt decay) with
what an accelerator needs: bf16 compute (float32 master weights), one batch shape
(200-point and 128-word buckets: on an H200 each new shape compiles for 25-50 s, and
the CPU recipe has 24), 80,000 padded points per batch (400 examples), 1,000 warmup
steps, the input pipeline in grain workers on all but two of the host's cores, and
validation (an export of the model file) every 1,000 steps.
"""

import os

from configs import cpu


def get_config(options: str = ""):
  config = cpu.get_config(options if "size=" in options else
                          "size=s7m" + ("," + options if options else ""))
  config.model.dtype = "bfloat16"
  config.data.points_per_batch = 80_000
  config.data.point_buckets = (200,)
  config.data.target_buckets = (128,)
  config.data.num_workers = max((os.cpu_count() or 2) - 2, 0)
  config.optim.warmup_steps = 1_000
  config.train.eval_every = 1_000
  config.train.checkpoint_every = 1_000
  return config
