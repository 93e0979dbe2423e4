"""Seconds per checkpoint save of a training state on CPU devices: orbax's StandardSave
(replica-parallel: each replicated array sliced across the devices) against
sr_jax.checkpoint.Checkpointer (on the CPU the first replica writes each array whole).

    python benchmarks/checkpoint_save.py --devices 8,1 --saves 5

Each setting runs in a new process (the first save there includes compiling orbax's
slicing programs, as in a training run) with sr_jax's compilation cache off. Saves are
synchronous, one after another, of the `debug` preset's state (parameters + Adam) on a
data-parallel mesh over all devices.
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, tempfile, time
import jax
jax.config.update("jax_num_cpu_devices", DEVICES)
import orbax.checkpoint as ocp
from configs import debug
from sr_jax import checkpoint, sharding, training
cfg = training.RunConfig.from_config_dict(debug.get_config())
_, state, _ = training.create_state(cfg, sharding.make_mesh(cfg.mesh))
directory = tempfile.mkdtemp()
if WRITER == "orbax StandardSave":
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      create=True, enable_async_checkpointing=False))
  def save(step):
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               extra=ocp.args.JsonSave({})))
    manager.wait_until_finished()
else:
  checkpointer = checkpoint.Checkpointer(directory, 1, SAVES, async_save=False)
  def save(step):
    checkpointer.save(step, state, {})
seconds = []
for step in range(SAVES):
  start = time.perf_counter()
  save(step)
  seconds.append(time.perf_counter() - start)
print(json.dumps(seconds))
"""

WRITERS = ("orbax StandardSave", "sr_jax Checkpointer")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--devices", default="8,1", help="CPU device counts, comma-separated")
  parser.add_argument("--saves", type=int, default=5)
  args = parser.parse_args()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "SR_JAX_CACHE_DIR": "off", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
  print(f"| devices | writer | first save s | later saves s (min-max) |")
  print(f"|---|---|---|---|")
  for devices in map(int, args.devices.split(",")):
    for writer in WRITERS:
      code = (CHILD.replace("DEVICES", str(devices)).replace("SAVES", str(args.saves))
              .replace("WRITER", repr(writer)))
      done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=root, check=True)
      seconds = json.loads(done.stdout.strip().splitlines()[-1])
      later = seconds[1:]
      print(f"| {devices} | {writer} | {seconds[0]:.2f} | "
            f"{min(later):.2f}-{max(later):.2f} |", flush=True)


if __name__ == "__main__":
  main()
