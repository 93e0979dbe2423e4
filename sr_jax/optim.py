"""The optax optimizer of a training run: E2E's Adam with warmup and inverse-sqrt decay.

E2E (reference.md section 4): Adam(0.9, 0.999, eps 1e-8), no weight decay, learning
rate linear from 1e-7 to 2e-4 over 10,000 steps, then lr * sqrt(warmup / step); global
gradient-norm clipping at 0.5. Cosine decay is an option for scaling studies.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = 2e-4  # the paper's value (parsers.py default 1e-4 is a known pitfall)
  warmup_init_lr: float = 1e-7
  warmup_steps: int = 10_000
  schedule: str = "inverse_sqrt"  # or "cosine"
  decay_steps: int = 150_000  # cosine only: steps from warmup end to the final value
  final_lr_fraction: float = 0.0  # cosine only
  beta1: float = 0.9
  beta2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  clip_grad_norm: float = 0.5  # <= 0 disables clipping


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
  warmup = optax.linear_schedule(cfg.warmup_init_lr, cfg.learning_rate,
                                 max(cfg.warmup_steps, 1))
  if cfg.schedule == "inverse_sqrt":
    def decay(step):
      return cfg.learning_rate * jnp.sqrt(max(cfg.warmup_steps, 1) /
                                          jnp.maximum(step + cfg.warmup_steps, 1))
  elif cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(cfg.learning_rate, max(cfg.decay_steps, 1),
                                        alpha=cfg.final_lr_fraction)
  else:
    raise ValueError(f"unknown schedule {cfg.schedule!r}: use 'inverse_sqrt' or 'cosine'")
  return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  parts = []
  if cfg.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
  parts.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.beta1, b2=cfg.beta2,
                           eps=cfg.eps, weight_decay=cfg.weight_decay))
  return optax.chain(*parts)
