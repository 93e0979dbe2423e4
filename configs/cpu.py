"""CPU-scale pretraining: the recipe of the s3m default model shipped until 2026-12-04 (the
shipped s7m was trained on a GPU with configs/accelerator.py, which builds on this).

    python train.py --config configs/cpu.py --workdir runs/default_s3m \
        --config.train.max_minutes=120

At a few CPU-hours the paper's 2e-4 learning rate with 10k warmup steps never leaves
warmup, and 10,000-point batches give few updates; this recipe takes E2E's model and
data unchanged and trains with lr 1e-3 after 500 warmup steps (inverse-sqrt decay) on
4,000-point batches (~30 examples), validating and exporting the model file every 250
steps. Stop it with a budget (max_minutes, or max_cpu_minutes for equal-compute
comparisons on a shared machine) and rerun the same command to continue.
"""

from configs import default


def get_config(options: str = ""):
  config = default.get_config(options if "size=" in options else
                              "size=s3m" + ("," + options if options else ""))
  config.data.points_per_batch = 4_000  # 80 examples at <=50 points ... 16 at <=200
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 500
  config.train.num_steps = 1_000_000  # stopped by a budget
  config.train.log_every = 50
  config.train.eval_every = 250
  config.train.eval_batches = 16
  config.train.checkpoint_every = 250
  config.train.keep_model_files = True
  return config
