"""Training: state, one jitted step with explicit shardings, and the loop.

The state is the pure pytree of an NNX model and its optimizer, (graphdef, state) =
nnx.split((model, optimizer)); the step merges, updates and returns the new state,
which is donated, so nothing relies on in-place mutation under jax.jit. Parameters
and optimizer moments are sharded by the model's logical axis names and the rules in
the config; batches are sharded on their leading axis over ('data', 'fsdp').
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from sr_jax import checkpoint, data, flops, generator, losses, model as model_lib
from sr_jax import monitor, optim, pretrained, sharding

BATCH_KEYS = ("points_BxNx33", "point_mask_BxN", "targets_BxL", "target_mask_BxL",
              "example_mask_B")


# The in-domain validation stream: the training stream's seed plus this.
VALIDATION_SEED_OFFSET = 1_000_003
# Compute totals a run carries in its checkpoints and model card.
TOTALS = ("examples", "tokens", "flops", "real_flops", "seconds", "device_seconds",
          "cpu_seconds")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  seed: int = 0
  num_steps: int = 150_000  # E2E: ~50 epochs of 3,000 steps
  grad_accum_steps: int = 1
  log_every: int = 50
  eval_every: int = 1_000
  eval_batches: int = 4
  checkpoint_every: int = 1_000  # <= 0: no orbax checkpoints (model-file exports only)
  keep_checkpoints: int = 3
  async_checkpoints: bool = True
  tensorboard: bool = True
  max_minutes: float = 0.0  # wall-clock budget of this run (0: none); see train_and_evaluate
  # CPU-time budget of this process (0: none): equal-compute comparisons on a shared machine.
  max_cpu_minutes: float = 0.0
  # Compute budgets (0: none): stop once this many examples, or training FLOPs as
  # computed (flops.py), have been seen in all; scaling studies set them.
  max_examples: float = 0.0
  max_flops: float = 0.0
  init_from: str = ""  # a model file (pretrained.py) to warm-start a new run from
  # A cooldown (cooldown_factor): the learning rate falls linearly to 0 over the last
  # cooldown_steps of num_steps and/or the last cooldown_minutes of max_minutes.
  cooldown_steps: int = 0
  cooldown_minutes: float = 0.0
  keep_model_files: bool = False  # also keep workdir/models/step_<N>.srj per validation


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """The typed view of a run's ConfigDict: nothing below this file reads the dict."""

  model: model_lib.ModelConfig
  data: data.DataConfig  # holds the generator's config too
  optim: optim.OptimConfig
  mesh: sharding.MeshConfig
  train: TrainConfig
  rules: tuple

  def __post_init__(self):
    accum = self.train.grad_accum_steps
    if accum < 1:
      raise ValueError(f"train.grad_accum_steps must be >= 1, got {accum}")
    rows = data.layout(self.data).rows
    if any(r % accum for r in rows):
      raise ValueError(
          f"train.grad_accum_steps={accum} does not divide the batch rows {rows} (one per "
          f"point bucket, from data.points_per_batch={self.data.points_per_batch} and "
          f"data.row_multiple={self.data.row_multiple}): choose a divisor of all of them, "
          f"or set data.row_multiple to a multiple of {accum}")

  @classmethod
  def from_config_dict(cls, config: ml_collections.ConfigDict) -> "RunConfig":
    model_overrides = {k: v for k, v in config.model.items() if k != "size"}
    return cls(
        model=model_lib.model_config(config.model.size, **model_overrides),
        data=data.DataConfig(
            generator=generator.GeneratorConfig(**_tuples(config.generator.to_dict())),
            seed=config.train.seed, **_tuples(config.data.to_dict())),
        optim=optim.OptimConfig(**config.optim),
        mesh=sharding.MeshConfig(**config.mesh),
        train=TrainConfig(**config.train),
        rules=tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                    for name, axes in config.rules))


def _tuples(d: dict) -> dict:
  """ConfigDict turns tuples into lists on some paths; frozen dataclasses want tuples."""
  def fix(v):
    return tuple(fix(x) for x in v) if isinstance(v, (list, tuple)) else v
  return {k: fix(v) for k, v in d.items()}


# ---------------------------------------------------------------------------------
# state and step


def create_state(cfg: RunConfig, mesh):
  """Builds model and optimizer directly sharded (inside jit); returns
  (graphdef, state, state_shardings)."""
  tx = optim.make_optimizer(cfg.optim)

  def create():
    model = model_lib.Transformer(cfg.model, rngs=nnx.Rngs(cfg.train.seed))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    state = nnx.state((model, optimizer))
    state = jax.lax.with_sharding_constraint(state, nnx.get_partition_spec(state))
    nnx.update((model, optimizer), state)
    return model, optimizer

  with jax.set_mesh(mesh), nnx.logical_axis_rules(cfg.rules):
    model, optimizer = jax.jit(create)()
  graphdef, state = nnx.split((model, optimizer))
  return graphdef, state, jax.tree.map(lambda a: a.sharding, state)


def _token_loss(model, batch):
  """Summed cross-entropy over real target tokens, their count, and correct ones, under
  the model's output layer (full or grammar-factored softmax, losses.py)."""
  targets_BxL = batch["targets_BxL"]
  hidden_BxLxD = model.hidden(batch["points_BxNx33"], batch["point_mask_BxN"],
                              targets_BxL[:, :-1])
  mask_BxL = batch["target_mask_BxL"][:, 1:] & batch["example_mask_B"][:, None]
  losses_BxL, correct_BxL = losses.token_losses(model, hidden_BxLxD, targets_BxL[:, :-1],
                                                targets_BxL[:, 1:], mask_BxL)
  return jnp.sum(losses_BxL), (jnp.sum(mask_BxL, dtype=jnp.float32), jnp.sum(correct_BxL))


def loss_and_grads(model, batch, grad_accum_steps: int = 1):
  """Gradients of the mean token cross-entropy w.r.t. the model's nnx.Param state.

  Returns (grads, sums): grads already divided by the batch's real target-token count
  (E2E's mean over tokens), sums = [loss_sum, token_count, correct_count]. With
  grad_accum_steps > 1 the batch is split into that many micro-batches whose summed
  gradients are accumulated in a lax.scan, so one micro-batch's activations live at a time.
  """
  model_graphdef, params, others = nnx.split(model, nnx.Param, ...)

  def loss_of(params, micro_batch):  # pure in params, so it may run inside a scan
    return _token_loss(nnx.merge(model_graphdef, params, others), micro_batch)

  def grads_of(micro_batch):
    (loss_sum, (count, correct)), grads = jax.value_and_grad(
        loss_of, has_aux=True)(params, micro_batch)
    return grads, jnp.stack([loss_sum, count, correct.astype(jnp.float32)])

  if grad_accum_steps == 1:
    grads, sums = grads_of(batch)
  else:
    micro = jax.tree.map(
        lambda a: a.reshape(grad_accum_steps, a.shape[0] // grad_accum_steps,
                            *a.shape[1:]), batch)

    def accumulate(carry, micro_batch):
      grads, sums = grads_of(micro_batch)
      return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zeros = jax.tree.map(jnp.zeros_like, (params, jnp.zeros(3)))
    (grads, sums), _ = jax.lax.scan(accumulate, zeros, micro)
  count = jnp.maximum(sums[1], 1.0)
  return jax.tree.map(lambda g: g / count, grads), sums


def train_step(graphdef, lr_schedule, grad_accum_steps, state, batch, lr_factor):
  """One optimizer step on the gradients of `loss_and_grads`, the schedule's rate
  times lr_factor (a cooldown's, given at run time: cooldown_factor)."""
  model, optimizer = nnx.merge(graphdef, state)
  grads, sums = loss_and_grads(model, batch, grad_accum_steps)
  count = jnp.maximum(sums[1], 1.0)
  param_norm = optax.tree.norm(nnx.state(model, nnx.Param))
  step = optimizer.step[...]
  optimizer.update(model, grads, lr_factor=lr_factor)
  metrics = {
      "loss": sums[0] / count,
      "token_accuracy": sums[2] / count,
      "target_tokens": sums[1],
      "grad_norm": optax.tree.norm(grads),
      "param_norm": param_norm,
      "learning_rate": lr_schedule(step) * lr_factor,
  }
  return nnx.state((model, optimizer)), metrics


def eval_step(graphdef, state, batch):
  model, _ = nnx.merge(graphdef, state)
  loss_sum, (count, correct) = _token_loss(model, batch)
  return jnp.stack([loss_sum, count, correct.astype(jnp.float32)])


def compile_steps(cfg: RunConfig, graphdef, state_shardings, mesh):
  """The jitted train and eval steps with explicit in/out shardings."""
  batch_shardings = {k: sharding.batch_sharding(mesh, cfg.rules, ndim)
                     for k, ndim in zip(BATCH_KEYS, (3, 2, 2, 2, 1))}
  step_fn = functools.partial(train_step, graphdef,
                              optim.learning_rate_schedule(cfg.optim),
                              cfg.train.grad_accum_steps)
  scalar = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  train = jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings, scalar),
                  out_shardings=(state_shardings, None), donate_argnums=0)
  evaluate = jax.jit(functools.partial(eval_step, graphdef),
                     in_shardings=(state_shardings, batch_shardings))
  return train, evaluate, batch_shardings


def to_global(batch: dict[str, np.ndarray], batch_shardings) -> dict[str, jax.Array]:
  """This process's rows of the batch -> one global array per key."""
  return {k: jax.make_array_from_process_local_data(batch_shardings[k], batch[k])
          for k in BATCH_KEYS}


# ---------------------------------------------------------------------------------
# the loop


def _flops_of_batch(cfg: RunConfig, batch: dict[str, np.ndarray]) -> tuple[float, float]:
  """Training FLOPs of this process's rows: (as computed, on the padded shapes; on the
  real points and tokens only). MFU on the first overstates useful work."""
  rows = float(np.sum(batch["example_mask_B"]))
  points, length = batch["points_BxNx33"].shape[1], batch["targets_BxL"].shape[1] - 1
  padded = rows * flops.train_flops_per_example(cfg.model, points, length)
  real = sum(flops.train_flops_per_example(cfg.model, int(n), int(t) - 1, int(c))
             for n, t, c, keep in zip(batch["point_mask_BxN"].sum(1),
                                      batch["target_mask_BxL"].sum(1),
                                      batch["num_constants_B"], batch["example_mask_B"])
             if keep)
  return padded, real


class _Throughput:
  """Examples, real target tokens and FLOPs since the last logged step."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.start, self.examples, self.tokens, self.flops, self.real_flops = time.time(), 0, 0, 0, 0

  def add(self, cfg: RunConfig, host_batch: dict[str, np.ndarray]) -> dict[str, float]:
    """Counts the global batch of which host_batch is this process's rows; returns what
    it added. Every process holds as many rows (data.py), so the global batch is
    process_count times these (tokens and FLOPs: an estimate)."""
    scale = jax.process_count()
    padded, real = _flops_of_batch(cfg, host_batch)
    added = {"examples": float(np.sum(host_batch["example_mask_B"])) * scale,
             "tokens": float(np.sum(host_batch["target_mask_BxL"])) * scale,
             "flops": padded * scale, "real_flops": real * scale}
    self.examples += added["examples"]
    self.tokens += added["tokens"]
    self.flops += added["flops"]
    self.real_flops += added["real_flops"]
    return added

  def rates(self, peak: float | None) -> dict[str, float]:
    seconds = max(time.time() - self.start, 1e-9)
    devices = jax.device_count()
    return {"examples_per_sec": self.examples / seconds,
            "tokens_per_sec": self.tokens / seconds,
            "tflops_per_device": self.flops / seconds / devices / 1e12,
            "mfu": flops.mfu(self.flops, seconds, devices, peak),
            "mfu_real": flops.mfu(self.real_flops, seconds, devices, peak)}


class _StopRequest:
  """SIGTERM or SIGINT (a scheduler's preemption, `kill`, Ctrl-C): the first one asks
  the loop to stop after the current step, validated, exported and checkpointed, so
  nothing is lost; a second one acts as it would without this handler. Installed
  only from the main thread (Python delivers signals there), and not over a signal the
  process was started with ignored (`nohup`, a background job's SIGINT)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS
                        if signal.getsignal(s) is not signal.SIG_IGN}
    return self

  def _handle(self, signum, frame):
    if self.requested:
      signal.signal(signum, self._previous[signum])
      signal.raise_signal(signum)
      return
    self.requested = True
    logging.warning("%s: stopping after this step with a checkpoint and the model file "
                    "written; send it again to stop at once",
                    signal.Signals(signum).name)

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def _should_stop(cfg: TrainConfig, started: float, cpu_started: float,
                 requested: bool) -> bool:
  """Whether a stop was requested or the wall-clock or CPU-time budget is spent;
  process 0 decides for all (clocks and signals differ)."""
  if cfg.max_minutes <= 0 and cfg.max_cpu_minutes <= 0 and jax.process_count() == 1:
    return requested
  stop = (requested
          or (cfg.max_minutes > 0 and time.time() - started >= 60 * cfg.max_minutes)
          or (cfg.max_cpu_minutes > 0
              and time.process_time() - cpu_started >= 60 * cfg.max_cpu_minutes))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    stop = bool(multihost_utils.broadcast_one_to_all(np.array(stop)))
  return stop


def cooldown_factor(cfg: TrainConfig, step: int, elapsed_seconds: float) -> np.float32:
  """The learning rate's multiplier at `step`, `elapsed_seconds` into the run: 1, then
  linear to 0 over the last cooldown_steps of num_steps and the last cooldown_minutes
  of max_minutes (the smaller where both are set), so a run ends with a finished model
  at its step count or its time budget. Process 0's clock decides for all."""
  factor = 1.0
  if cfg.cooldown_steps > 0:
    factor = min(factor, (cfg.num_steps - step) / cfg.cooldown_steps)
  if cfg.cooldown_minutes > 0 and cfg.max_minutes > 0:
    factor = min(factor, (cfg.max_minutes - elapsed_seconds / 60) / cfg.cooldown_minutes)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      factor = float(multihost_utils.broadcast_one_to_all(np.float32(factor)))
  return np.float32(min(max(factor, 0.0), 1.0))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (resuming from workdir's newest checkpoint if there is one, else warm-starting
  from train.init_from if set), logs, evaluates, checkpoints and exports the model file
  workdir/model.srj at every validation. Stops after num_steps, or at the first step
  that ends past max_minutes of wall-clock or after a SIGTERM / SIGINT (checkpoint and
  export written). Returns the last logged metrics."""
  started, cpu_started = time.time(), time.process_time()
  cfg = resolve_schedule_offset(RunConfig.from_config_dict(config))
  mesh = sharding.make_mesh(cfg.mesh)
  logging.info("devices: %d (%s), processes: %d, mesh: %s", jax.device_count(),
               jax.devices()[0].device_kind, jax.process_count(), dict(mesh.shape))
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  graphdef, state, state_shardings = create_state(cfg, mesh)
  num_params = sum(x.size for x in jax.tree.leaves(nnx.state(
      nnx.merge(graphdef, state)[0], nnx.Param)))
  logging.info("parameters: %.2fM", num_params / 1e6)
  train, evaluate, batch_shardings = compile_steps(cfg, graphdef, state_shardings, mesh)

  # Without checkpoints (a lent machine that keeps only the model file) the run cannot
  # resume; it still warm-starts from init_from.
  checkpointer = (checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                          cfg.train.checkpoint_every,
                                          cfg.train.keep_checkpoints,
                                          cfg.train.async_checkpoints)
                  if cfg.train.checkpoint_every > 0 else None)
  start_step = 0
  # What the model has seen before this run's first step: steps of the data stream
  # (data_offset: those of a warm start's file) and the compute totals (examples, real
  # target tokens, training FLOPs as computed and on real tokens only, wall, device
  # and process-CPU seconds), carried across resumes and warm starts.
  history = {"data_offset": 0, **{k: 0.0 for k in TOTALS}}
  if checkpointer is not None and checkpointer.latest_step() is not None:
    start_step, state, extra = checkpointer.restore(checkpoint.abstract_like(state))
    history.update({k: extra[k] for k in history if k in extra})
    logging.info("resumed from step %d (data position %s)", start_step, extra)
  elif cfg.train.init_from:
    state, history = _warm_start(cfg, graphdef, state, state_shardings)

  batches = data.make_iterator(cfg.data, start_step + history["data_offset"])
  writer = monitor.MetricWriter(workdir, cfg.train.tensorboard)
  budgets = [60 * m for m in (cfg.train.max_minutes, cfg.train.max_cpu_minutes) if m > 0]
  progress = monitor.Progress(cfg.train.num_steps, start=start_step, unit=" steps",
                              budget_seconds=min(budgets) if budgets else None,
                              work_done=_work_done(cfg.train, history))
  peak = flops.device_peak_flops(jax.devices()[0], cfg.model.dtype)
  last_metrics: dict[str, float] = {}
  totals = {k: history[k] for k in ("examples", "tokens", "flops", "real_flops")}
  pending = None  # (step, metrics): fetched one step late
  startup: dict[str, float] = {}  # seconds from the call to the first batch and step
  window = _Throughput()
  done = start_step

  def record(step: int) -> dict:
    wall = time.time() - started
    return {"step": step, "seed": cfg.train.seed, "data_offset": history["data_offset"],
            **totals, "seconds": history["seconds"] + wall,
            "device_seconds": history["device_seconds"] + wall * jax.device_count(),
            "cpu_seconds": history["cpu_seconds"] + time.process_time() - cpu_started}

  with jax.set_mesh(mesh), _StopRequest() as stop:
    for step in range(start_step, cfg.train.num_steps):
      host_batch = next(batches)
      if step == start_step:
        first_batch_seconds = time.time() - started
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = train(state, to_global(host_batch, batch_shardings),
                               cooldown_factor(cfg.train, step, time.time() - started))
      if step == start_step:  # jit compiles before it dispatches: the startup's cost
        startup = {"startup_first_batch_s": first_batch_seconds,
                   "startup_first_step_s": time.time() - started}
        logging.info("first batch after %.1f s, first step dispatched after %.1f s",
                     *startup.values())
        writer.write(done, startup)
      if pending is not None:
        last_metrics = _log(pending, writer, progress, cfg, window, peak,
                            work_done=_work_done(cfg.train, totals))
      for key, value in window.add(cfg, host_batch).items():
        totals[key] += value
      pending = (step + 1, metrics)
      done = step + 1
      final = (done == cfg.train.num_steps
               or _should_stop(cfg.train, started, cpu_started, stop.requested)
               or (cfg.train.max_examples > 0 and totals["examples"] >= cfg.train.max_examples)
               or (cfg.train.max_flops > 0 and totals["flops"] >= cfg.train.max_flops))
      if done % cfg.train.eval_every == 0 or final:
        eval_metrics = run_validation(cfg, evaluate, state, batch_shardings)
        writer.write(done, eval_metrics)
        last_metrics.update(eval_metrics)
        _export(workdir, graphdef, state, config, record(done), eval_metrics,
                cfg.train.keep_model_files)
      if checkpointer is not None:
        checkpointer.save(done, state, record(done), force=final)
      if final:
        break
    if pending is not None:
      last_metrics.update(_log(pending, writer, progress, cfg, window, peak, force=True,
                                 work_done=_work_done(cfg.train, totals)))
  last_metrics.update(startup)
  if done < cfg.train.num_steps:
    logging.warning("stopped at step %d of %d: %s", done, cfg.train.num_steps,
                    "a stop was requested" if stop.requested
                    else "a time or compute budget is spent")
  progress.close()
  if checkpointer is not None:
    checkpointer.close()
  writer.close()
  return last_metrics


def resolve_schedule_offset(cfg: RunConfig) -> RunConfig:
  """optim.schedule_offset=-1 -> the steps the warm-start file's run trained (its card's
  data_steps), so a continued model resumes its learning rate instead of warming up to
  the peak again."""
  if cfg.optim.schedule_offset >= 0:
    return cfg
  if not cfg.train.init_from:
    raise ValueError("optim.schedule_offset=-1 resumes the schedule of the warm-start "
                     "file's run: set train.init_from (or give the offset in steps)")
  card = pretrained.card(cfg.train.init_from)
  offset = int(card.get("data_steps", card.get("steps", 0)))
  logging.info("learning-rate schedule resumed at step %d (%s)", offset, cfg.train.init_from)
  return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, schedule_offset=offset))


def _warm_start(cfg: RunConfig, graphdef, state, state_shardings):
  """The state with parameters from the model file cfg.train.init_from (its config must
  match the run's model config) and a fresh optimizer; the data stream continues after
  the steps the file's run consumed when both use the same seed."""
  header, arrays = pretrained.read(cfg.train.init_from)
  file_config = pretrained.model_config(header, cfg.train.init_from)
  run_config = pretrained.architecture(cfg.model)
  if file_config != run_config:
    differing = {f.name: (getattr(file_config, f.name), getattr(run_config, f.name))
                 for f in dataclasses.fields(file_config)
                 if getattr(file_config, f.name) != getattr(run_config, f.name)}
    raise pretrained.ModelFileError(
        f"cannot warm-start from {cfg.train.init_from!r}: its model config differs from this "
        f"run's in (file, run) = {differing}")
  model, optimizer = nnx.merge(graphdef, state)
  model = pretrained.with_params(model, arrays, cfg.train.init_from)
  state = jax.device_put(nnx.state((model, optimizer)), state_shardings)
  card = header["card"]
  same_stream = card.get("seed") == cfg.train.seed
  history = {"data_offset": int(card.get("data_steps", 0)) if same_stream else 0,
             **{k: float(card.get("compute", {}).get(k, card.get(k, 0.0))) for k in TOTALS}}
  logging.info("warm start from %s (%s examples seen; data stream from step %d)",
               cfg.train.init_from, card.get("examples"), history["data_offset"])
  return state, history


def _export(workdir: str, graphdef, state, config, record: dict, eval_metrics: dict,
            keep: bool) -> None:
  """workdir/model.srj: the model file of this step (pretrained.py), with its card.
  Every process gathers the parameters; process 0 writes."""
  model, _ = nnx.merge(graphdef, state)
  params = pretrained.param_arrays(model)
  if jax.process_index() != 0:
    return
  device = jax.devices()[0]
  card = {
      "command": " ".join(sys.argv),
      "size": config.model.size,
      "parameters": model_lib.count_params(model),
      "steps": record["step"],
      "seed": record["seed"],
      "data_steps": record["step"] + record["data_offset"],
      "examples": record["examples"],
      "seconds": round(record["seconds"], 1),
      "compute": {k: record[k] for k in TOTALS},
      "non_embedding_parameters": model_lib.count_non_embedding_params(model),
      "device": f"{jax.device_count()} x {device.device_kind} ({device.platform})",
      "compute_dtype": model.config.dtype,  # of training; the file's config is float32
      "date": time.strftime("%Y-%m-%d %H:%M:%S"),
      "validation": {k: float(v) for k, v in eval_metrics.items()},
      "data": json.loads(config.data.to_json_best_effort()),
      "generator": json.loads(config.generator.to_json_best_effort()),
  }
  path = os.path.join(workdir, "model.srj")
  pretrained.write_arrays(path, model.config, params, card, dtype="float16")
  if keep:  # the same bytes: copied, not encoded again
    kept = os.path.join(workdir, "models", f"step_{record['step']}.srj")
    os.makedirs(os.path.dirname(kept), exist_ok=True)
    shutil.copyfile(path, kept + ".tmp")
    os.replace(kept + ".tmp", kept)


def _work_done(train_cfg: TrainConfig, totals: dict) -> float | None:
  """The fraction of the examples or FLOPs budget spent (the larger, when both are set);
  None without one."""
  spent = [totals[key] / limit for key, limit in (("examples", train_cfg.max_examples),
                                                   ("flops", train_cfg.max_flops)) if limit > 0]
  return max(spent) if spent else None


def _log(pending, writer, progress, cfg, window: _Throughput, peak, force=False,
         work_done: float | None = None):
  step, metrics = pending
  if not force and step % cfg.train.log_every:
    return {}
  values = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if not np.isfinite(values["loss"]):
    raise FloatingPointError(f"loss is {values['loss']} at step {step}; stopping")
  values.update(window.rates(peak))
  window.reset()
  writer.write(step, values)
  progress.update(step, f"loss {values['loss']:.3f} acc {values['token_accuracy']:.3f} "
                        f"{values['examples_per_sec']:.0f} ex/s mfu {values['mfu']:.1%} "
                        f"(real {values['mfu_real']:.1%})", work_done)
  return values


@functools.lru_cache(maxsize=1)
def _validation_batches(validation: data.DataConfig, count: int) -> tuple[dict, ...]:
  """The validation set's host batches, generated once per run: on an accelerator,
  regenerating 16 batches of 40,000 points in the training process took seconds at
  every validation (the host generates ~1,300 examples/s per core)."""
  batches = data.make_iterator(validation)
  return tuple(next(batches) for _ in range(count))


def validation_data(cfg: RunConfig) -> data.DataConfig:
  """The validation stream's config: the training stream's, reseeded, in-process, not
  length-grouped (so it does not depend on data.DataConfig.length_groups)."""
  return dataclasses.replace(cfg.data, seed=cfg.data.seed + VALIDATION_SEED_OFFSET,
                             num_workers=0, length_groups=1)


def run_validation(cfg: RunConfig, evaluate, state, batch_shardings) -> dict[str, float]:
  """Token loss and accuracy on a fixed, seeded in-domain set (the same every time)."""
  sums = np.zeros(3)
  for batch in _validation_batches(validation_data(cfg), cfg.train.eval_batches):
    sums += np.asarray(evaluate(state, to_global(batch, batch_shardings)))
  count = max(sums[1], 1.0)
  return {"valid_loss": sums[0] / count, "valid_token_accuracy": sums[2] / count}
