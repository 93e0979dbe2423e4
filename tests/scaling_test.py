"""Scaling studies: the power-law fit recovers a planted law from noisy points, the
iso-FLOP optimum a planted minimum, and the runner skips finished runs and resumes a
killed one."""

import json
import os

import numpy as np
import pytest

from sr_jax import scaling


def test_fit_recovers_a_planted_power_law():
  rng = np.random.default_rng(0)
  compute = np.geomspace(1e12, 1e16, 24)
  loss = 3.0 * compute ** -0.07 * np.exp(rng.normal(0, 0.01, compute.size))
  fit = scaling.fit_power_law(compute, loss)
  assert fit["alpha"] == pytest.approx(0.07, abs=0.004)
  assert fit["alpha_low"] < 0.07 < fit["alpha_high"]
  assert fit["a"] == pytest.approx(3.0, rel=0.3)
  with pytest.raises(ValueError, match="two distinct"):
    scaling.fit_power_law([1e12, 1e12], [1.0, 2.0])


def test_iso_flop_optimum_recovers_a_planted_minimum():
  records = [{"budget_kind": "flops", "budget": 1e14, "parameters": p, "size": str(p),
              "valid_loss": 2.0 + 0.3 * (np.log(p) - np.log(4e6)) ** 2}
             for p in (1e6, 2e6, 4e6, 8e6, 16e6)]
  (optimum,) = scaling.compute_optimal(records)
  assert optimum["optimal_parameters"] == pytest.approx(4e6, rel=1e-6)
  assert optimum["best_measured"] == str(4e6)


def test_budgets_and_grid():
  assert scaling.parse_budgets("flops=1e13,3e13") == [("flops", 1e13), ("flops", 3e13)]
  with pytest.raises(ValueError):
    scaling.parse_budgets("steps=10")
  runs = scaling.grid(["a", "b"], [("examples", 10.0)], [0, 1])
  assert len(runs) == 4 and len({r.name for r in runs}) == 4


def test_runner_skips_finished_runs_and_resumes_a_killed_one(tmp_path):
  tiny = {"data.point_buckets": (200,), "data.points_per_batch": 1600,
          "data.length_groups": 1, "generator.max_input_dimension": 2,
          "train.eval_every": 2, "train.eval_batches": 1, "train.checkpoint_every": 2,
          "train.async_checkpoints": False, "train.tensorboard": False}
  run = scaling.Run("debug", "examples", 32, 0)  # 4 steps of 8 examples
  # A run killed after its first checkpoint: 2 steps done, the command run again.
  killed = scaling.run_config(run, {**tiny, "train.num_steps": 2})
  from sr_jax import training
  training.train_and_evaluate(killed, str(tmp_path / "runs" / run.name))
  record = scaling.train_run(run, str(tmp_path), tiny)
  assert record["steps"] == 4 and record["examples"] == 32
  lines = [json.loads(l) for l in open(tmp_path / "runs" / run.name / "metrics.jsonl")]
  assert min(l["step"] for l in lines if "loss" in l) <= 2  # the first run's steps
  assert max(l["step"] for l in lines) == 4
  mtime = os.path.getmtime(tmp_path / "runs" / run.name / "model.srj")
  again = scaling.train_run(run, str(tmp_path), tiny)  # finished: skipped
  assert again == record
  assert os.path.getmtime(tmp_path / "runs" / run.name / "model.srj") == mtime
  # An evaluated run (the columns evaluate_run adds) shows its rates in the table.
  done = tmp_path / "runs" / run.name / "done.json"
  done.write_text(json.dumps({**record, "in_domain_r2_above_0.99_c10": 0.25}))
  (tmp_path / "crosscheck.json").write_text(json.dumps(
      {"debug": {"analytic": 9.0e9, "xla": 1.0e10, "ratio": 0.9}}))
  text = scaling.report(str(tmp_path))
  assert "debug_examples32_seed0" in text and os.path.exists(tmp_path / "points.csv")
  assert "| debug | 9e+09 | 1e+10 | 0.900 |" in text
  assert "| 0.250 |" in text


def test_each_run_s_learning_rate_schedule_spans_its_budget():
  # 1,600 points per batch at 200 points: 8 examples a step, so 320 examples are 40 steps.
  fixed = {"data.point_buckets": (200,), "data.points_per_batch": 1600,
           "data.length_groups": 1}
  config = scaling.run_config(scaling.Run("debug", "examples", 320, 0), fixed)
  assert config.optim.schedule == "cosine"
  assert (config.optim.warmup_steps, config.optim.decay_steps) == (4, 36)
  # A FLOP budget: the steps it buys times the FLOPs of a step give the budget back.
  from sr_jax import data, training
  config = scaling.run_config(scaling.Run("debug", "flops", 1e12, 0), fixed)
  cfg = training.RunConfig.from_config_dict(config)
  per_step = np.mean([training._flops_of_batch(cfg, data.HostBatch(cfg.data)(s))[0]
                      for s in range(16)])
  steps = config.optim.warmup_steps + config.optim.decay_steps
  assert steps * per_step == pytest.approx(1e12, rel=per_step / 1e12 + 1e-9)
  # An explicit optimizer override is left alone.
  config = scaling.run_config(scaling.Run("debug", "examples", 320, 0),
                              {**fixed, "optim.warmup_steps": 7})
  assert config.optim.schedule == "inverse_sqrt" and config.optim.warmup_steps == 7
