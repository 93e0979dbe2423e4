"""Two processes x 4 CPU devices train exactly like one process with 8 devices.

The test starts two copies of this file as workers on 127.0.0.1 (gloo collectives, as
on a two-host pod slice). Each runs the real `training.train_and_evaluate`: it builds
only its own rows of every global batch with the grain pipeline (data.py slices by
jax.process_index), turns them into global arrays with
make_array_from_process_local_data (training.to_global), trains on a mesh whose FSDP
axis spans both processes, validates, and writes one orbax checkpoint together. A
third worker runs the same config as one process with 8 devices; the test compares
the logged metrics and the checkpointed parameters of the two runs.

All three workers set jax_disable_most_optimizations (the test-suite setting of
style.md): it halves XLA:CPU compile time, which is most of this test's ~25 s.
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)  # for configs/ when this file runs as a worker

from configs import debug  # noqa: E402

NUM_PROCESSES = 2
STEPS = 3
TIMEOUT_S = 150  # a hang guard only: the test takes ~25 s on an idle 2-core machine


def _config():
  """The debug preset, cut to one small batch shape: 8 examples of <= 50 points."""
  config = debug.get_config()
  config.generator.max_points = 50
  config.generator.max_input_dimension = 3
  config.data.point_buckets = (50,)
  config.data.points_per_batch = 400  # 8 rows: 4 per process, 1 per device
  config.data.length_groups = 1  # targets padded to the longest bucket: one shape
  # FSDP across the two processes (devices 0-3 are process 0's): parameters are
  # all-gathered and gradients reduce-scattered over gloo every step.
  config.mesh.update(data=1, fsdp=4, tensor=2)
  # Adam's eps raised from 1e-8 so the comparison is well-conditioned: with eps 1e-8 an
  # entry whose gradient is zero in exact arithmetic (attention key biases: softmax
  # ignores a per-query shift) or cancels to rounding level moves by up to ~lr/100 per
  # step in the direction of its rounding noise, so a different summation order moves
  # it that much. With eps 1e-4 the update is (lr/eps = 30)-Lipschitz in the gradient:
  # a gradient rounding difference of ~1e-9 moves a parameter by < 1e-7.
  config.optim.update(warmup_steps=1, warmup_init_lr=3e-3, learning_rate=3e-3, eps=1e-4)
  config.train.update(num_steps=STEPS, log_every=1, eval_every=1_000, eval_batches=1,
                      checkpoint_every=1_000, async_checkpoints=False, tensorboard=False)
  return config


def _worker(process_id: int, num_processes: int, port: int, workdir: str) -> None:
  """One process of a run: num_processes x (8 / num_processes) CPU devices."""
  jax.config.update("jax_num_cpu_devices", 8 // num_processes)
  jax.config.update("jax_disable_most_optimizations", True)
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes,
                               process_id=process_id, initialization_timeout=60,
                               heartbeat_timeout_seconds=30, shutdown_timeout_seconds=30)
  assert jax.process_count() == num_processes and jax.device_count() == 8
  from sr_jax import training
  training.train_and_evaluate(_config(), workdir)
  if num_processes > 1:
    jax.distributed.shutdown()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(name, args, log_dir):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir
             or os.path.join(ROOT, ".jax_cache"))
  env.pop("XLA_FLAGS", None)  # a forced host device count would fight jax_num_cpu_devices
  log = open(os.path.join(log_dir, f"{name}.log"), "w")
  process = subprocess.Popen([sys.executable, os.path.abspath(__file__), *map(str, args)],
                             cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  return name, process, log


def _wait(workers, log_dir, deadline):
  """Waits for every worker; on a failure or the deadline, kills the rest and fails
  with the logs (a worker whose peer died would otherwise wait in a collective)."""
  def logs():
    return "\n".join(f"--- {name} (tail) ---\n"
                     + open(os.path.join(log_dir, f"{name}.log")).read()[-3000:]
                     for name, _, _ in workers)
  try:
    while True:
      codes = {name: p.poll() for name, p, _ in workers}
      if all(c == 0 for c in codes.values()):
        return
      if any(c not in (None, 0) for c in codes.values()):
        pytest.fail(f"a worker failed (exit codes {codes}):\n{logs()}")
      if time.time() > deadline:
        pytest.fail(f"workers still running after {TIMEOUT_S} s:\n{logs()}")
      time.sleep(0.2)
  finally:
    for _, p, log in workers:
      if p.poll() is None:
        p.kill()
        p.wait()
      log.close()


def _metrics(workdir):
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [m for m in lines if "loss" in m]
  valid = [m for m in lines if "valid_loss" in m]
  return train, valid


def _checkpoint(workdir):
  """The final checkpoint's state as numpy arrays, keyed by path (orbax reads it
  without a mesh, so the parent compiles nothing)."""
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, "checkpoints", str(STEPS), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata
  state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)))
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree.leaves_with_path(state)}


def test_two_processes_train_like_one_process(tmp_path):
  if "jax_cpu_collectives_implementation" not in jax.config.values:
    pytest.skip(f"jax {jax.__version__} has no CPU cross-process collectives (gloo)")
  port = _free_port()
  workers = [_start(f"process{i}", (i, NUM_PROCESSES, port, tmp_path / "two"), tmp_path)
             for i in range(NUM_PROCESSES)]
  workers.append(_start("single", (0, 1, 0, tmp_path / "one"), tmp_path))
  _wait(workers, tmp_path, time.time() + TIMEOUT_S)

  # The same losses step by step, and the same validation numbers. Both runs compute the
  # same global batches on the same mesh; only the cross-process collectives (gloo vs
  # in-process) may sum float32 in another order: ~1e-7 relative, rtol 1e-5 is 100x that.
  (train_one, valid_one), (train_two, valid_two) = (_metrics(tmp_path / "one"),
                                                    _metrics(tmp_path / "two"))
  assert [m["step"] for m in train_one] == [m["step"] for m in train_two] == [1, 2, 3]
  assert [m["step"] for m in valid_one] == [m["step"] for m in valid_two] == [STEPS]
  for a, b in zip(train_one + valid_one, train_two + valid_two):
    for key in ("loss", "grad_norm", "param_norm", "valid_loss"):
      if key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)
    for key in ("token_accuracy", "target_tokens", "learning_rate", "valid_token_accuracy"):
      if key in a:
        assert b[key] == a[key], (a["step"], key)
  assert train_one[-1]["loss"] < train_one[0]["loss"]  # it did train

  # The checkpoint the two processes wrote together holds the single run's parameters
  # (item 0 of the saved (model, optimizer) state) and optimizer step. Parameters are
  # O(0.1-1): rtol 1e-5 plus atol 1e-7 (one float32 ulp at 1) is ~50x the measured gap (2e-9).
  one, two = _checkpoint(tmp_path / "one"), _checkpoint(tmp_path / "two")
  assert one.keys() == two.keys()
  params = [k for k in one if k.startswith("['0']")]
  assert len(params) > 20 and any("step" in k for k in one)
  for name in params:
    np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-7, err_msg=name)
  for name in (k for k in one if "step" in k):
    np.testing.assert_array_equal(two[name], one[name], err_msg=name)


if __name__ == "__main__":
  _worker(*map(int, sys.argv[1:4]), sys.argv[4])
