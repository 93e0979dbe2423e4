"""Pretrain an sr_jax model (the command `sr-jax-train`; sr_jax/cli/train.py has the flags).

    python train.py --config configs/debug.py --workdir runs/debug
    python train.py --config configs/default.py:size=s20m --config.train.num_steps=20000
"""

from sr_jax.cli import train

if __name__ == "__main__":
  train.run()
