"""Test set-up: 8 fake CPU devices (sharded code is tested as on a pod slice) and a
persistent compilation cache, both before any JAX backend starts."""

import os

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                 os.path.join(os.path.dirname(__file__), "..", ".jax_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# The heaviest files (seconds of test time, measured: BENCHMARKS.md, "The test suite
# under 10 minutes"), heaviest first. pyproject.toml's --no-loadscope-reorder makes
# pytest-xdist hand files to workers in collection order, so this puts the long files
# first (longest-processing-time-first): no worker starts one when the other is almost
# done. Files not listed follow in name order.
_HEAVIEST_FIRST = ("training_test.py", "regressor_test.py", "decoding_test.py",
                   "inference_test.py", "cli_test.py", "losses_test.py",
                   "suite_runner_test.py", "interpreter_test.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: position for position, name in enumerate(_HEAVIEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
