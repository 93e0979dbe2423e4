"""JAX's persistent compilation cache, on by default for every sr_jax process.

A single fit compiles a dozen programs (decoding, scoring, refinement buckets): ~7-10 s
on a CPU, in every new process. With the cache, the second process reads them from
disk. Where: $SR_JAX_CACHE_DIR, else $XDG_CACHE_HOME/sr_jax/jax (~/.cache/sr_jax/jax).
SR_JAX_CACHE_DIR=off turns it off; a cache directory the user already gave JAX
(JAX_COMPILATION_CACHE_DIR, jax.config) is left as it is.

compile_seconds() counts the time this process spent tracing, lowering and compiling
(or reading compiled programs from the cache); a Stopwatch leaves it out, so that a time
budget such as the search's does not spend this one-time cost: otherwise the first fit
in a process would search for a fraction of the time the second one does.
"""

from __future__ import annotations

import os
import time

import jax

ENVIRONMENT_VARIABLE = "SR_JAX_CACHE_DIR"
_OFF = ("off", "0", "none", "false")
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_compile_seconds = [0.0]


def _count_compile_time(event: str, duration_secs: float, **unused_metadata) -> None:
  if event in _COMPILE_EVENTS:
    _compile_seconds[0] += duration_secs


jax.monitoring.register_event_duration_secs_listener(_count_compile_time)


def compile_seconds() -> float:
  """Seconds this process has spent so far turning JAX functions into programs."""
  return _compile_seconds[0]


class Stopwatch:
  """Wall-clock seconds since it was made, compilation left out."""

  def __init__(self):
    self._start, self._compiled = time.perf_counter(), compile_seconds()

  def seconds(self) -> float:
    return time.perf_counter() - self._start - (compile_seconds() - self._compiled)


def default_directory() -> str | None:
  """The cache directory sr_jax uses, or None when turned off."""
  value = os.environ.get(ENVIRONMENT_VARIABLE)
  if value is not None and value.strip().lower() in _OFF + ("",):
    return None
  if value:
    return os.path.abspath(os.path.expanduser(value))
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "sr_jax", "jax")


def enable() -> str | None:
  """Points JAX's persistent cache at default_directory() unless the user chose one;
  returns the directory in use (None: no cache)."""
  chosen = jax.config.jax_compilation_cache_dir
  if chosen:
    return chosen
  directory = default_directory()
  if directory is None:
    return None
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError:
    return None  # a read-only home: run without the cache rather than fail
  jax.config.update("jax_compilation_cache_dir", directory)
  # Refinement and scoring programs compile in 0.3-2 s each: cache those too.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
  return directory
