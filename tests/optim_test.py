"""The E2E learning-rate schedule and optimizer, against the formulas in reference.md."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sr_jax import optim


def test_inverse_sqrt_schedule_matches_e2e():
  cfg = optim.OptimConfig()
  schedule = optim.learning_rate_schedule(cfg)
  assert float(schedule(0)) == pytest.approx(1e-7)
  assert float(schedule(5000)) == pytest.approx(1e-7 + (2e-4 - 1e-7) / 2)
  assert float(schedule(10_000)) == pytest.approx(2e-4)
  for step in (10_001, 40_000, 150_000):  # lr * sqrt(warmup) / sqrt(step)
    assert float(schedule(step)) == pytest.approx(2e-4 * 100 / np.sqrt(step), rel=1e-5)


def test_cosine_schedule_option():
  cfg = optim.OptimConfig(schedule="cosine", warmup_steps=10, decay_steps=100)
  schedule = optim.learning_rate_schedule(cfg)
  assert float(schedule(10)) == pytest.approx(2e-4)
  assert float(schedule(60)) == pytest.approx(1e-4, rel=1e-4)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-12)
  with pytest.raises(ValueError, match="unknown schedule"):
    optim.learning_rate_schedule(optim.OptimConfig(schedule="linear"))


def test_gradient_clipping_at_half():
  """With a huge eps, Adam's first update is lr * g / eps: its norm shows the clip."""
  def first_update_norm(clip):
    cfg = optim.OptimConfig(warmup_steps=1, warmup_init_lr=1.0, learning_rate=1.0,
                            eps=1e6, clip_grad_norm=clip)
    tx = optim.make_optimizer(cfg)
    params = {"w": jnp.zeros(4)}
    updates, _ = tx.update({"w": jnp.full(4, 1e3)}, tx.init(params), params)
    return float(jnp.linalg.norm(updates["w"])) * 1e6

  assert first_update_norm(0.5) == pytest.approx(0.5, rel=1e-3)
  assert first_update_norm(0.0) == pytest.approx(2e3, rel=1e-3)  # disabled


def test_resumed_schedule_takes_the_rate_of_the_file_s_step_after_a_rewarmup():
  base = optim.OptimConfig(learning_rate=1e-3, warmup_steps=1_000)
  resumed = optim.learning_rate_schedule(
      dataclasses.replace(base, schedule_offset=6_000, rewarmup_steps=20))
  continued = optim.learning_rate_schedule(base)
  assert float(resumed(0)) == pytest.approx(float(continued(6_000)) / 20, rel=1e-5)
  assert float(resumed(9)) == pytest.approx(float(continued(6_009)) / 2, rel=1e-5)
  for step in (19, 100, 4_000):
    assert float(resumed(step)) == pytest.approx(1e-3 * np.sqrt(1_000 / (6_000 + step)),
                                                 rel=1e-5)
  with pytest.raises(ValueError, match="resolve -1"):
    optim.learning_rate_schedule(dataclasses.replace(base, schedule_offset=-1))


def test_lr_factor_scales_the_update_and_defaults_to_one():
  tx = optim.make_optimizer(optim.OptimConfig(warmup_steps=1, warmup_init_lr=1e-2,
                                              learning_rate=1e-2))
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.array([0.1, -0.2, 0.3])}
  full, _ = tx.update(grads, tx.init(params), params)
  tenth, _ = tx.update(grads, tx.init(params), params, lr_factor=jnp.float32(0.1))
  np.testing.assert_allclose(tenth["w"], 0.1 * full["w"], rtol=1e-6)
  assert float(jnp.abs(full["w"]).max()) > 0
  # The factor adds no state: checkpoints of the optimizer without it still restore.
  plain = optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(lambda step: 1e-2))
  assert (jax.tree.structure(tx.init(params))
          == jax.tree.structure(plain.init(params)))
