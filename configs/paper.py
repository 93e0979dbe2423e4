"""E2E as published: encoder 4 / decoder 16 layers, d 512, 16 heads, FFN 2048, lr 2e-4
with 10k warmup steps and inverse-sqrt decay, ~10,000 points per batch, 150k steps.

    python train.py --config configs/paper.py --workdir runs/paper
"""

from configs import default


def get_config(options: str = ""):
  return default.get_config("size=paper" + ("," + options if options else ""))
