"""The device lease script (benchmarks/device_train.py) rehearsed on the CPU with a tiny
budget: every stage (devices, throughput, training, the fitting pipeline with the new
model) runs and leaves its numbers and a loadable model file in --out."""

import json
import os
import subprocess
import sys

from sr_jax import pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rehearse(tmp_path, *extra: str):
  """The script on the CPU at a tiny budget (debug size, no warm start); returns the
  finished process and its results.json."""
  out = tmp_path / "out"
  command = [sys.executable, os.path.join(ROOT, "benchmarks", "device_train.py"),
             "--out", str(out), "--workdir", str(tmp_path / "work"), "--allow_cpu",
             "--sizes", "debug", "--size", "debug", "--points_per_batch", "1600",
             "--workers", "0", "--eval_every", "1000", "--dtype", "float32",
             "--init_from", "", "--infer_problems", "3", *extra]
  done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert done.returncode == 0, done.stderr[-3000:]
  return done, json.loads((out / "results.json").read_text())


def test_device_script_rehearses_on_cpu(tmp_path):
  done, results = _rehearse(tmp_path, "--throughput_steps", "2", "--train_minutes", "0.05",
                            "--infer_decode_batch", "2")
  assert results["devices"]["platform"] == "cpu"
  (throughput,) = results["throughput"]
  assert throughput["examples_per_s"] > 0 and 0 < throughput["mfu_real"] <= throughput["mfu"]
  # The accelerator's one batch shape (each new one compiled for ~25 s on the H200),
  # which the training stage then uses too; no orbax checkpoints on a lent machine.
  assert (throughput["points"], throughput["target_len"]) == (200, 128)
  assert not (tmp_path / "work" / "debug" / "checkpoints").exists()
  training = results["training"]
  assert training["steps"] >= 1 and training["files"] == ["model_debug.srj"]
  model = pretrained.load(str(tmp_path / "out" / "model_debug.srj"))
  assert model.config.d_model == 64
  assert "trained debug" in done.stdout
  (inferred,) = results["inference"]  # the trained model's; no --init_from to compare
  assert inferred["model"] == "model_debug.srj" and inferred["problems"] == 3
  assert 0 <= inferred["r2_above_0.99"] <= 1 and inferred["stage_seconds"]["decode"] > 0
  assert "model_debug.srj on 3 in-domain problems" in done.stdout


def test_device_script_skips_inference_past_its_deadline(tmp_path):
  """With less than a minute of --deadline_minutes left (here always: 30 s in all) the
  inference stage starts no model, which the lease would kill mid-run; the stages
  before it still leave their numbers."""
  done, results = _rehearse(tmp_path, "--throughput_steps", "1", "--train_minutes", "0.02",
                            "--deadline_minutes", "0.5")
  assert results["training"]["steps"] >= 1 and results["inference"] == []
  assert "inference of" in done.stdout and "skipped" in done.stdout


def test_device_script_refuses_the_cpu_without_allow_cpu(tmp_path):
  done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "device_train.py"),
                         "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert done.returncode != 0 and "no accelerator" in done.stderr
