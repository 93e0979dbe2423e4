"""Training: the step learns, accumulation and sharding do not change the maths,
resume is bit-exact, checkpoints restore onto another mesh, bad checkpoints are named."""

import dataclasses
import itertools
import json
import os
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from configs import debug
from sr_jax import checkpoint, data, flops, pretrained, sharding, training, validation


def _config(**train):
  config = debug.get_config()
  config.data.point_buckets = (200,)  # one batch shape: one compilation
  config.data.points_per_batch = 1_600  # 8 examples
  config.data.length_groups = 1  # targets of 128 words: one batch shape
  config.generator.max_input_dimension = 3
  config.optim.warmup_steps = 1
  config.optim.warmup_init_lr = 3e-3
  config.optim.learning_rate = 3e-3
  config.train.update({**dict(log_every=2, eval_every=1_000, eval_batches=1,
                              checkpoint_every=2, async_checkpoints=False), **train})
  return config


def _named(tree):
  """{path: array} of a state or gradient tree, names as jax.tree_util.keystr gives them."""
  return {jax.tree_util.keystr(path): np.asarray(x)
          for path, x in jax.tree.leaves_with_path(tree)}


def _setup(config, mesh_shape):
  cfg = training.RunConfig.from_config_dict(config)
  cfg = dataclasses.replace(cfg, mesh=sharding.MeshConfig(*mesh_shape))
  devices = jax.devices() if -1 in mesh_shape else jax.devices()[:np.prod(mesh_shape)]
  mesh = sharding.make_mesh(cfg.mesh, devices)
  graphdef, state, shardings = training.create_state(cfg, mesh)
  train, _, batch_shardings = training.compile_steps(cfg, graphdef, shardings, mesh)
  return cfg, mesh, state, train, batch_shardings


def test_overfits_one_batch():
  config = _config()
  # One device: a step of this tiny model runs ~3.5x faster than across 8 CPU devices.
  cfg, mesh, state, train, batch_shardings = _setup(config, (1, 1, 1))
  batch = data.HostBatch(cfg.data)(0)
  with jax.set_mesh(mesh):
    losses = []
    for _ in range(40):
      state, metrics = train(state, training.to_global(batch, batch_shardings), np.float32(1))
      losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0], losses
  assert float(metrics["token_accuracy"]) > 0.2  # from ~0.01 at initialisation


def _loss_and_grads(config, mesh_shape, grad_accum_steps):
  """Mean loss and parameter gradients of batch 0, through training.loss_and_grads (the
  function train_step differentiates with) jitted with the train step's shardings."""
  cfg = dataclasses.replace(training.RunConfig.from_config_dict(config),
                            mesh=sharding.MeshConfig(*mesh_shape))
  mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:np.prod(mesh_shape)])
  graphdef, state, state_shardings = training.create_state(cfg, mesh)
  _, _, batch_shardings = training.compile_steps(cfg, graphdef, state_shardings, mesh)
  fn = jax.jit(lambda state, batch: training.loss_and_grads(
      nnx.merge(graphdef, state)[0], batch, grad_accum_steps),
               in_shardings=(state_shardings, batch_shardings))
  with jax.set_mesh(mesh):
    grads, sums = fn(state, training.to_global(data.HostBatch(cfg.data)(0), batch_shardings))
  sums = np.asarray(sums)
  return sums[0] / sums[1], _named(grads)


def test_sharded_and_accumulated_loss_and_grads_match_single_device():
  """Data + tensor parallel (4x1x2), and FSDP (2x4x1) with 2 accumulated micro-batches,
  give the single device's loss and gradients, in float32.

  Tolerance: rtol 1e-5 elementwise, plus atol = 1e-7 x the largest gradient entry (about
  one float32 ulp of it, ~5e-8 here). The absolute part is needed because a sharded
  reduction sums in another order: an entry that is a near-cancelling sum carries
  rounding error of order eps x (sum of |terms|), far above eps x |entry|; the attention
  key biases' gradients are exactly zero in exact arithmetic (softmax ignores a shift
  per query) and are pure rounding noise (~1e-10). Measured worst excess over rtol 1e-5:
  5e-9."""
  config = _config()
  assert config.model.dtype == config.model.param_dtype == "float32"
  loss, reference = _loss_and_grads(config, (1, 1, 1), 1)
  atol = 1e-7 * max(np.abs(g).max() for g in reference.values())
  for mesh_shape, accum in (((4, 1, 2), 1), ((2, 4, 1), 2)):
    other_loss, grads = _loss_and_grads(config, mesh_shape, accum)
    assert other_loss == pytest.approx(loss, rel=1e-5), (mesh_shape, accum)
    assert grads.keys() == reference.keys()
    for name, g in reference.items():
      np.testing.assert_allclose(grads[name], g, rtol=1e-5, atol=atol,
                                 err_msg=f"{name} on mesh {mesh_shape}, accum {accum}")


def test_mixed_precision_gradients_on_a_sharded_mesh_are_float32_to_bf16_accuracy():
  """bf16 products with float32 sums (model.dtype='bfloat16', mixed_precision.py), data +
  tensor parallel (4x1x2): the loss and every parameter's gradient are within bf16's
  rounding (2^-8 relative per operand) of one device's float32 ones. Measured: loss
  2e-5 relative, worst gradient 0.025 relative in norm (the decoder's MLP kernel). The
  attention key biases are left out: their exact gradient is zero (softmax ignores a
  shift per query) and both computations give rounding noise."""
  config = _config()
  loss, reference = _loss_and_grads(config, (1, 1, 1), 1)
  config.model.dtype = "bfloat16"
  mixed_loss, grads = _loss_and_grads(config, (4, 1, 2), 1)
  assert mixed_loss == pytest.approx(loss, rel=1e-3)
  for name, g in reference.items():
    if "k_bias" in name:
      continue
    error = np.linalg.norm(grads[name] - g) / np.linalg.norm(g)
    assert grads[name].dtype == np.float32 and error < 0.05, (name, error)


def test_sharded_and_accumulated_step_matches_single_device():
  """The whole jitted train step (gradients, clipping, Adam, sharded in/out state) on
  2x2x2 devices with 2 micro-batches gives one device's update. Adam's first step is
  about lr x sign(g), so entries with g ~ 0 amplify rounding: hence rtol 2e-3 here and
  the tight gradient comparison above."""
  config = _config()
  results = []
  for mesh_shape, accum in (((1, 1, 1), 1), ((2, 2, 2), 2)):
    config.train.grad_accum_steps = accum
    cfg, mesh, state, train, batch_shardings = _setup(config, mesh_shape)
    batch = data.HostBatch(cfg.data)(0)
    with jax.set_mesh(mesh):
      state, metrics = train(state, training.to_global(batch, batch_shardings), np.float32(1))
    results.append((_named(state), float(metrics["loss"])))
  (reference, loss), (params, other_loss) = results
  assert other_loss == pytest.approx(loss, rel=1e-5)
  # The attention key biases' exact gradient is zero (see the test above), so Adam's
  # first step moves them by +-lr on rounding noise's sign: not comparable.
  assert params.keys() == reference.keys()
  for name, a in reference.items():
    if "k_bias" not in name:
      np.testing.assert_allclose(params[name], a, rtol=2e-3, atol=2e-5, err_msg=name)


def test_resume_is_bit_exact_and_restores_onto_another_mesh(tmp_path):
  straight = training.train_and_evaluate(_config(num_steps=4), str(tmp_path / "a"))
  training.train_and_evaluate(_config(num_steps=2), str(tmp_path / "b"))
  resumed = training.train_and_evaluate(_config(num_steps=4), str(tmp_path / "b"))
  assert resumed["loss"] == straight["loss"]

  def restore(workdir, mesh_shape):
    cfg, mesh, state, _, _ = _setup(_config(), mesh_shape)
    ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), 2, 3)
    step, restored, extra = ckpt.restore(checkpoint.abstract_like(state))
    ckpt.close()
    return step, restored, extra

  step_a, state_a, extra = restore(tmp_path / "a", (2, 2, 2))
  step_b, state_b, _ = restore(tmp_path / "b", (1, 1, 1))
  assert step_a == step_b == 4 and extra["step"] == 4
  named_a, named_b = _named(state_a), _named(state_b)
  assert named_a.keys() == named_b.keys()
  for name, a in named_a.items():
    np.testing.assert_array_equal(a, named_b[name], err_msg=name)
  # eval.py's path: the restored checkpoint gives the validation numbers training logged.
  results = validation.run(_config(), str(tmp_path / "a"))
  assert results["step"] == 4
  assert results["valid_loss"] == pytest.approx(straight["valid_loss"], rel=1e-6)
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoints"):
    validation.run(_config(), str(tmp_path / "nothing"))
  lines = [json.loads(l) for l in open(tmp_path / "a" / "metrics.jsonl")]
  assert {"loss", "token_accuracy", "learning_rate", "examples_per_sec", "tokens_per_sec",
          "mfu", "grad_norm"} <= set(lines[-1])


def test_corrupt_checkpoint_is_skipped_then_named(tmp_path):
  training.train_and_evaluate(_config(num_steps=4), str(tmp_path))
  cfg, mesh, state, _, _ = _setup(_config(), (-1, 1, 1))
  directory = tmp_path / "checkpoints"
  for root, _, files in os.walk(directory / "4"):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  ckpt = checkpoint.Checkpointer(str(directory), 2, 3)
  with pytest.raises(checkpoint.CheckpointError, match="step 4 .* unreadable"):
    ckpt.restore(checkpoint.abstract_like(state), step=4)
  ckpt.close()


def test_checkpoints_written_by_orbax_standard_save_restore(tmp_path):
  """Workdirs saved before checkpoint.py chose its own array handler (orbax's
  StandardSave, replica-parallel on the CPU) restore bit for bit, and checkpoints saved
  now read back through orbax's StandardRestore: one format both ways."""
  cfg = training.RunConfig.from_config_dict(_config())
  _, state, _ = training.create_state(cfg, sharding.make_mesh(cfg.mesh))
  manager = ocp.CheckpointManager(str(tmp_path / "old"),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          extra=ocp.args.JsonSave({"step": 3})))
  manager.wait_until_finished()
  manager.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path / "old"), 1, 1)
  step, restored, extra = ckpt.restore(checkpoint.abstract_like(state))
  ckpt.close()
  assert step == 3 and extra == {"step": 3}
  new = checkpoint.Checkpointer(str(tmp_path / "new"), 1, 1, async_save=False)
  new.save(5, restored, {"step": 5})
  new.close()
  manager = ocp.CheckpointManager(str(tmp_path / "new"))
  read = manager.restore(5, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(checkpoint.abstract_like(state))))["state"]
  manager.close()
  for tree in (restored, read):
    named = _named(tree)
    for name, a in _named(state).items():
      np.testing.assert_array_equal(named[name], a, err_msg=name)


def test_training_goes_on_past_a_corrupt_newest_checkpoint(tmp_path):
  """The run restores step 2, moves the corrupt step 4 aside (kept, not deleted), trains
  past it and saves steps 4 and 6 normally; the result equals an uncorrupted run's."""
  training.train_and_evaluate(_config(num_steps=4), str(tmp_path))
  directory = tmp_path / "checkpoints"
  for root, _, files in os.walk(directory / "4"):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  resumed = training.train_and_evaluate(_config(num_steps=6), str(tmp_path))
  ckpt = checkpoint.Checkpointer(str(directory), 2, 3)
  assert ckpt.all_steps() == [2, 4, 6]
  ckpt.close()
  (aside,) = os.listdir(tmp_path / "checkpoints-corrupt")
  assert aside.startswith("4-")
  straight = training.train_and_evaluate(_config(num_steps=6), str(tmp_path / "straight"))
  assert resumed["loss"] == straight["loss"]


def test_budget_stops_in_time_then_the_same_command_resumes(tmp_path):
  """max_minutes: the run stops after the first step that ends past the budget, with its
  checkpoint and model file written; rerunning continues to num_steps."""
  config = _config(num_steps=6, max_minutes=1e-4, checkpoint_every=100)
  stopped = training.train_and_evaluate(config, str(tmp_path))
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), 100, 3)
  assert ckpt.all_steps() == [1]
  ckpt.close()
  assert "valid_loss" in stopped
  assert pretrained.card(str(tmp_path / "model.srj"))["steps"] == 1
  finished = training.train_and_evaluate(_config(num_steps=6, checkpoint_every=100),
                                         str(tmp_path))
  straight = training.train_and_evaluate(_config(num_steps=6, checkpoint_every=100),
                                         str(tmp_path / "straight"))
  assert finished["loss"] == straight["loss"]
  card = pretrained.card(str(tmp_path / "model.srj"))
  assert card["steps"] == 6 and card["examples"] == 6 * 8


def test_without_checkpoints_the_model_file_is_still_written_and_validation_generated_once(
    tmp_path, monkeypatch):
  """checkpoint_every = 0 (the device lease's setting): no orbax directory, the model file
  exported at each validation all the same; the validation set is generated once per run
  (it is the same set every time) and equals a fresh generation of its stream."""
  calls = []
  make_iterator = data.make_iterator

  def counted(config, *args, **kwargs):
    calls.append(config.seed)
    return make_iterator(config, *args, **kwargs)

  monkeypatch.setattr(data, "make_iterator", counted)
  training._validation_batches.cache_clear()
  config = _config(num_steps=4, eval_every=2, eval_batches=2, checkpoint_every=0)
  metrics = training.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()
  assert pretrained.card(str(tmp_path / "model.srj"))["steps"] == 4
  validation = training.validation_data(training.RunConfig.from_config_dict(config))
  assert calls.count(validation.seed) == 1  # validations at steps 2 and 4
  # The cached set is the generator's: a fresh generation of the same stream.
  fresh = data.make_iterator(validation)
  for batch in training._validation_batches(validation, 2):
    expected = next(fresh)
    for key in training.BATCH_KEYS:
      np.testing.assert_array_equal(batch[key], expected[key])
  assert np.isfinite(metrics["valid_loss"])


def _signalling_batches(monkeypatch, signum, after: int, times: int = 1):
  """The data iterator, sending `signum` to this process `times` times while the
  batch of step `after` is fetched."""
  make_iterator = data.make_iterator

  def batches(*args, **kwargs):
    for step, batch in enumerate(make_iterator(*args, **kwargs)):
      if step == after:
        for _ in range(times):
          os.kill(os.getpid(), signum)
      yield batch

  monkeypatch.setattr(data, "make_iterator", batches)


@pytest.fixture
def default_signal_handlers():
  """SIGTERM and SIGINT as in an interactive process (a background job starts with
  SIGINT ignored, which the stop request leaves alone), restored afterwards."""
  saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  for s, handler in saved.items():
    signal.signal(s, handler)


def test_sigterm_stops_after_the_step_with_checkpoint_and_model_file(
    tmp_path, monkeypatch, default_signal_handlers):
  """Preemption or `kill` loses nothing: the step in flight finishes, then validation,
  export and a checkpoint, and the handlers are put back."""
  _signalling_batches(monkeypatch, signal.SIGTERM, after=2)
  stopped = training.train_and_evaluate(_config(num_steps=6, checkpoint_every=100),
                                        str(tmp_path))
  assert "valid_loss" in stopped
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), 100, 3)
  assert ckpt.latest_step() == 3  # the batch of step index 2 was trained on
  ckpt.close()
  assert pretrained.card(str(tmp_path / "model.srj"))["steps"] == 3
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_second_interrupt_stops_at_once(tmp_path, monkeypatch, default_signal_handlers):
  _signalling_batches(monkeypatch, signal.SIGINT, after=1, times=2)
  with pytest.raises(KeyboardInterrupt):
    training.train_and_evaluate(_config(num_steps=6, checkpoint_every=100), str(tmp_path))
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_signal_stays_ignored(default_signal_handlers):
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  with training._StopRequest():
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # taken over
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_warm_start_loads_the_file_and_continues_the_data(tmp_path):
  training.train_and_evaluate(_config(num_steps=4), str(tmp_path / "first"))
  model_file = str(tmp_path / "first" / "model.srj")
  config = _config(num_steps=2, init_from=model_file)
  header, arrays = pretrained.read(model_file)
  cfg = training.RunConfig.from_config_dict(config)
  mesh = sharding.make_mesh(cfg.mesh)
  graphdef, state, shardings = training.create_state(cfg, mesh)
  warm, history = training._warm_start(cfg, graphdef, state, shardings)
  loaded = pretrained.param_arrays(nnx.merge(graphdef, warm)[0])
  for name, value in arrays.items():
    np.testing.assert_array_equal(loaded[name], value)
  assert history["data_offset"] == 4 and history["examples"] == 32.0
  assert history["seconds"] == header["card"]["compute"]["seconds"] > 0
  # The file (float32 compute) warm-starts a mixed-precision run too, whose own file
  # stores float32 compute again and names the training's dtype on its card.
  config.model.dtype = "bfloat16"
  metrics = training.train_and_evaluate(config, str(tmp_path / "second"))
  fresh = training.train_and_evaluate(_config(num_steps=2), str(tmp_path / "fresh"))
  assert metrics["loss"] < fresh["loss"]
  header, _ = pretrained.read(str(tmp_path / "second" / "model.srj"))
  card = header["card"]
  assert card["data_steps"] == 6 and card["examples"] == 48
  assert card["compute_dtype"] == "bfloat16" and header["model_config"]["dtype"] == "float32"
  other = _config(num_steps=2, init_from=model_file)
  other.model.num_decoder_layers = 2
  with pytest.raises(pretrained.ModelFileError, match="num_decoder_layers"):
    training.train_and_evaluate(other, str(tmp_path / "mismatch"))


def test_a_warm_start_resumes_the_file_s_schedule_and_cools_down(tmp_path):
  """schedule_offset=-1 takes the file's steps: the run's first step has the rate the
  file's run would have had next (no warmup to the peak again), and the cooldown takes
  it linearly towards 0 at num_steps."""
  first = _config(num_steps=4)
  first.optim.warmup_steps = 2
  training.train_and_evaluate(first, str(tmp_path / "first"))
  config = _config(num_steps=3, log_every=1, cooldown_steps=3,
                   init_from=str(tmp_path / "first" / "model.srj"))
  config.optim.warmup_steps = 2
  config.optim.update(schedule_offset=-1, rewarmup_steps=1)
  training.train_and_evaluate(config, str(tmp_path / "second"))
  rates = [l["learning_rate"] for l in map(json.loads, open(tmp_path / "second" / "metrics.jsonl"))
           if "learning_rate" in l]
  def inverse_sqrt(step):  # the file's run: 3e-3 * sqrt(warmup / step) after warmup
    return 3e-3 * np.sqrt(2 / step)
  np.testing.assert_allclose(
      rates, [inverse_sqrt(4), inverse_sqrt(5) * 2 / 3, inverse_sqrt(6) / 3], rtol=1e-5)
  config.train.init_from = ""
  with pytest.raises(ValueError, match="set train.init_from"):
    training.train_and_evaluate(config, str(tmp_path / "third"))


def test_cooldown_factor_over_the_last_steps_and_minutes():
  by_steps = training.TrainConfig(num_steps=100, cooldown_steps=40)
  assert [training.cooldown_factor(by_steps, s, 0.0) for s in (0, 60, 80, 99)] == [
      1.0, 1.0, 0.5, pytest.approx(1 / 40)]
  by_time = training.TrainConfig(max_minutes=10.0, cooldown_minutes=2.0)
  assert [training.cooldown_factor(by_time, 5, 60.0 * m) for m in (1, 8, 9, 10, 11)] == [
      1.0, 1.0, 0.5, 0.0, 0.0]
  both = training.TrainConfig(num_steps=100, cooldown_steps=40, max_minutes=10.0,
                              cooldown_minutes=2.0)
  assert training.cooldown_factor(both, 80, 60.0 * 9.5) == 0.25  # the smaller one
  assert training.cooldown_factor(both, 90, 60.0 * 9.0) == 0.25
  unbudgeted = training.TrainConfig(cooldown_minutes=2.0)  # no max_minutes: no end known
  assert training.cooldown_factor(unbudgeted, 5, 1e6) == 1.0
  assert training.cooldown_factor(by_steps, 5, 0.0).dtype == np.float32  # one program


def test_accumulation_that_does_not_divide_the_batch_is_named():
  config = _config(grad_accum_steps=3)
  with pytest.raises(ValueError, match="grad_accum_steps=3 does not divide the batch rows"):
    training.RunConfig.from_config_dict(config)


def test_compute_accounting_matches_a_hand_count(tmp_path):
  """The card's totals after 3 steps: examples and real target tokens counted from the
  regenerated batches, FLOPs as flops.py counts each batch's padded shape (flops_test
  checks that formula against XLA's own count)."""
  training.train_and_evaluate(_config(num_steps=3), str(tmp_path))
  card = pretrained.card(str(tmp_path / "model.srj"))
  cfg = training.RunConfig.from_config_dict(_config(num_steps=3))
  batches = [data.HostBatch(cfg.data)(step) for step in range(3)]
  assert card["compute"]["examples"] == sum(b["example_mask_B"].sum() for b in batches) == 24
  lengths = [int(b["target_mask_BxL"].sum()) for b in batches]
  assert card["compute"]["tokens"] == sum(lengths)
  expected = sum(len(b["example_mask_B"]) * flops.train_flops_per_example(
      cfg.model, b["points_BxNx33"].shape[1], b["targets_BxL"].shape[1] - 1) for b in batches)
  assert card["compute"]["flops"] == pytest.approx(expected, rel=1e-12)
  assert 0 < card["compute"]["real_flops"] < card["compute"]["flops"]
  assert card["compute"]["device_seconds"] >= card["compute"]["seconds"] > 0
  assert card["parameters"] > card["non_embedding_parameters"] > 0


def test_startup_seconds_are_reported(tmp_path, monkeypatch):
  """The seconds to the first batch and to the first dispatched (compiled) step, in the
  returned metrics and metrics.jsonl: what a lent accelerator's first minutes went to."""
  make_iterator = data.make_iterator
  validation = training.validation_data(training.RunConfig.from_config_dict(_config()))

  def slow_first(config, *args, **kwargs):
    iterator = make_iterator(config, *args, **kwargs)
    if config.seed == validation.seed:
      return iterator
    first = next(iterator)
    time.sleep(0.5)
    return itertools.chain([first], iterator)

  monkeypatch.setattr(data, "make_iterator", slow_first)
  metrics = training.train_and_evaluate(_config(num_steps=2), str(tmp_path))
  assert 0.5 <= metrics["startup_first_batch_s"] < metrics["startup_first_step_s"]
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  (startup,) = [l for l in lines if "startup_first_step_s" in l]
  assert startup["step"] == 0
  assert startup["startup_first_step_s"] == metrics["startup_first_step_s"]


def test_kept_model_files_are_each_validations_export(tmp_path):
  """keep_model_files: workdir/models/step_<N>.srj per validation, each the model file
  of its step (the last one the same bytes as workdir/model.srj)."""
  training.train_and_evaluate(_config(num_steps=4, eval_every=2, keep_model_files=True),
                              str(tmp_path))
  models = tmp_path / "models"
  assert sorted(p.name for p in models.iterdir()) == ["step_2.srj", "step_4.srj"]
  assert pretrained.card(str(models / "step_2.srj"))["steps"] == 2
  assert (models / "step_4.srj").read_bytes() == (tmp_path / "model.srj").read_bytes()
  step_2, step_4 = (pretrained.param_arrays(pretrained.load(str(models / name)))
                    for name in ("step_2.srj", "step_4.srj"))
  assert any(not np.array_equal(step_2[k], step_4[k]) for k in step_2)
