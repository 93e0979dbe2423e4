"""The optax optimizer of a training run: E2E's Adam with warmup and inverse-sqrt decay.

E2E (reference.md section 4): Adam(0.9, 0.999, eps 1e-8), no weight decay, learning
rate linear from 1e-7 to 2e-4 over 10,000 steps, then lr * sqrt(warmup / step); global
gradient-norm clipping at 0.5. Cosine decay is an option for scaling studies.

Two additions for runs that continue a model or end at a budget (neither is in E2E):
a warm start can resume the schedule where the file's run left it (schedule_offset,
after a short re-warmup because Adam's moments start from zero) instead of warming up
to the peak again; and every update is scaled by a factor the training loop passes at
each step (`lr_factor`), which is how a run ends with a cooldown, a linear decay to 0
over its last steps or minutes (training.cooldown_factor; the "warmup-stable-decay"
schedule of Hagele et al. 2024, where a cooldown of a few percent of the steps gives
most of what a schedule fitted to the run's length would). A factor fed at run time
keeps the run's length out of the compiled step: a time budget's end is known only
while the run goes, and one program serves every length.
"""

from __future__ import annotations

import dataclasses

import jax
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
  # Steps the schedule has already run: step s of this run takes the rate of step
  # s + schedule_offset; -1: the warm-start file's steps (its card's data_steps, right
  # when both runs use the same batch size). 0: the schedule starts from its beginning.
  schedule_offset: int = 0
  rewarmup_steps: int = 100  # offset > 0: linear ramp of the resumed rate (fresh Adam)


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
  """The rate at each step of this run, before the loop's lr_factor."""
  if cfg.schedule_offset < 0:
    raise ValueError(f"schedule_offset={cfg.schedule_offset}: resolve -1 (the warm-start "
                     "file's steps) before building the schedule (training.py does)")
  base = _base_schedule(cfg)
  if cfg.schedule_offset == 0:
    return base

  def resumed(step):
    lr = base(step + cfg.schedule_offset)
    if cfg.rewarmup_steps > 0:
      lr = lr * jnp.minimum(1.0, (step + 1) / cfg.rewarmup_steps)
    return lr
  return resumed


def _base_schedule(cfg: OptimConfig) -> optax.Schedule:
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


def with_lr_factor(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """`inner` with its updates multiplied by the `lr_factor` given to update() (1 when
  not given). Its state is inner's own, so checkpoints written before keep restoring."""
  def update(updates, state, params=None, *, lr_factor=1.0, **extra):
    del extra
    updates, state = inner.update(updates, state, params)
    return jax.tree.map(lambda u: u * lr_factor, updates), state
  return optax.GradientTransformationExtraArgs(inner.init, update)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformationExtraArgs:
  """Clipping, Adam(W) on the schedule, then the loop's lr_factor."""
  parts = []
  if cfg.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
  parts.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.beta1, b2=cfg.beta2,
                           eps=cfg.eps, weight_decay=cfg.weight_decay))
  return with_lr_factor(optax.chain(*parts))
