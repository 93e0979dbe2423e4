"""The device lease script (benchmarks/device_train.py) rehearsed on the CPU with a tiny
budget: every stage (devices, throughput, training, the fitting pipeline with the new
model) runs and leaves its numbers and a loadable model file in --out."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import jax

from sr_jax import data, pretrained, sharding, training

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
  assert training["midpoint_file"] is None  # one validation, the final one
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


def _device_train_module():
  spec = importlib.util.spec_from_file_location(
      "device_train", os.path.join(ROOT, "benchmarks", "device_train.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _train_step_hlo(config) -> str:
  cfg = training.resolve_schedule_offset(training.RunConfig.from_config_dict(config))
  mesh = sharding.make_mesh(cfg.mesh)
  graphdef, state, shardings = training.create_state(cfg, mesh)
  train, _, batch_shardings = training.compile_steps(cfg, graphdef, shardings, mesh)
  batch = data.HostBatch(dataclasses.replace(cfg.data, length_groups=1))(0)
  with jax.set_mesh(mesh):
    return train.lower(state, training.to_global(batch, batch_shardings),
                       training.cooldown_factor(cfg.train, 0, 0.0)).as_text()


def test_throughput_stage_compiles_the_training_step():
  """The throughput stage's train step is the training stage's, so training finds it
  in the persistent compile cache (the first lease recompiled it for ~50 s when their
  warmups differed); another learning rate is another program."""
  device_train = _device_train_module()
  args = device_train.parse_args(["--size", "debug", "--points_per_batch", "1600",
                                  "--warmup_steps", "7"])
  throughput = _train_step_hlo(device_train._run_config("debug", args))
  assert throughput == _train_step_hlo(device_train._training_config(args))
  args.learning_rate = 5e-4  # the preset's is 1e-3
  assert throughput != _train_step_hlo(device_train._training_config(args))


def test_a_warm_started_lease_resumes_the_file_s_schedule_in_both_stages():
  """Warm-starting the shipped s7m, both stages build the step with the rate of the
  file's next step (one program, in the cache for training), and the training stage
  cools down over its budget's last minutes."""
  device_train = _device_train_module()
  args = device_train.parse_args(["--size", "s7m", "--train_minutes", "6"])
  run = device_train._run_config("s7m", args)
  trained = device_train._training_config(args)
  assert run.train.init_from == trained.train.init_from
  assert os.path.samefile(trained.train.init_from, pretrained.DEFAULT_MODEL)
  resumed = training.resolve_schedule_offset(training.RunConfig.from_config_dict(trained))
  assert resumed.optim.schedule_offset == pretrained.card()["data_steps"] > 0
  assert trained.train.max_minutes == 6 and trained.train.cooldown_minutes > 0
  hlo = _train_step_hlo(run)
  assert hlo == _train_step_hlo(trained)
  args.schedule_offset = 0  # warm up to the peak again: another program
  assert hlo != _train_step_hlo(device_train._run_config("s7m", args))


def test_the_accelerator_preset_is_the_shipped_models_recipe():
  """configs/accelerator.py builds the shipped model's architecture and data layout
  (its card), so train.py with it continues or reproduces that model."""
  from configs import accelerator
  cfg = training.RunConfig.from_config_dict(accelerator.get_config())
  header, _ = pretrained.read(pretrained.DEFAULT_MODEL)
  assert pretrained.model_config(header) == pretrained.architecture(cfg.model)
  card = header["card"]
  assert card["compute_dtype"] == cfg.model.dtype == "bfloat16"
  for key in ("points_per_batch", "length_groups"):
    assert card["data"][key] == getattr(cfg.data, key)
  assert tuple(card["data"]["point_buckets"]) == cfg.data.point_buckets
  assert tuple(card["data"]["target_buckets"]) == cfg.data.target_buckets


def test_the_midpoint_model_is_the_kept_file_nearest_half_way(tmp_path, monkeypatch):
  """Of the files kept at validations 2, 4, 6 and 8 (the final), step 4's comes back
  under its step's name; nothing when only the final was kept, or when the file would
  not fit one returned file."""
  device_train = _device_train_module()
  models = tmp_path / "work" / "models"
  models.mkdir(parents=True)
  for step in (2, 4, 6, 8):
    (models / f"step_{step}.srj").write_bytes(bytes([step]) * 100)
  out = tmp_path / "out"
  out.mkdir()
  name = device_train._midpoint_model(str(tmp_path / "work"), 8, str(out), "s7m")
  assert name == "model_s7m_step4.srj" and (out / name).read_bytes() == bytes([4]) * 100
  assert device_train._midpoint_model(str(tmp_path / "work"), 2, str(out), "s7m") is None
  assert device_train._midpoint_model(str(tmp_path / "absent"), 8, str(out), "s7m") is None
  monkeypatch.setattr(device_train, "PART_BYTES", 99)
  assert device_train._midpoint_model(str(tmp_path / "work"), 8, str(out), "s7m") is None
