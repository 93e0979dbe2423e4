"""Tests of the grain pipeline: shapes, tokens, sharding, workers and resume."""

import dataclasses

import numpy as np
import pytest

from sr_jax import data, generator, tokens

# Small batches keep the suite fast; the layout logic is the same as the default's.
CONFIG = data.DataConfig(seed=5, points_per_batch=1600, point_buckets=(50, 100, 200))
PAD_POINT = tokens.ENCODER_VOCAB.pad_id


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_layout_has_few_shapes_and_the_point_budget():
  plan = data.layout(data.DataConfig())
  assert plan.rows == (200, 96, 64, 48)
  assert plan.ranges == ((1, 50), (51, 100), (101, 150), (151, 200))
  for rows, size in zip(plan.rows, (50, 100, 150, 200)):
    assert 0.9 * 10_000 <= rows * size <= 10_000 and rows % 8 == 0


def test_steps_choose_buckets_in_proportion_to_the_point_distribution():
  """Over many steps, the share of examples per bucket is P(N in bucket)."""
  config = data.DataConfig()
  plan = data.layout(config)
  buckets = np.array([data.bucket_of_step(config, s) for s in range(20_000)])
  examples = np.bincount(buckets, minlength=4) * np.array(plan.rows)
  expected = [data._probability_in_range(config.generator, lo, hi) for lo, hi in plan.ranges]
  np.testing.assert_allclose(examples / examples.sum(), expected, atol=0.01)


def test_batches_are_well_formed():
  batches = _take(data.make_iterator(CONFIG, process_index=0, process_count=1), 4)
  plan = data.layout(CONFIG)
  for batch in batches:
    rows, num_points, width = batch["points_BxNx33"].shape
    assert (rows, num_points) in set(zip(plan.rows, CONFIG.point_buckets)) and width == 33
    assert batch["targets_BxL"].shape[0] == rows
    assert batch["targets_BxL"].shape[1] in CONFIG.target_buckets
    assert batch["points_BxNx33"].dtype == np.int32 and batch["targets_BxL"].dtype == np.int32
    assert batch["example_mask_B"].all()
    np.testing.assert_array_equal(batch["point_mask_BxN"].sum(1), batch["num_points_B"])
    assert np.all(batch["points_BxNx33"][~batch["point_mask_BxN"]] == PAD_POINT)
    low, high = plan.ranges[CONFIG.point_buckets.index(num_points)]
    assert np.all((low <= batch["num_points_B"]) & (batch["num_points_B"] <= high))
    for row in range(rows):
      sample = generator.generate(
          dataclasses.replace(CONFIG.generator,
                                   max_target_length=CONFIG.max_target_length),
          CONFIG.seed, int(batch["index_B"][row]), num_points_range=(low, high))
      target = batch["targets_BxL"][row][batch["target_mask_BxL"][row]]
      assert tokens.decode_expression(target) == list(sample.prefix)
      assert np.all(batch["targets_BxL"][row][~batch["target_mask_BxL"][row]]
                    == tokens.DECODER_VOCAB.pad_id)
      assert batch["input_dimension_B"][row] == sample.input_dimension


def test_length_groups_cut_a_length_sorted_pool_into_its_steps_batches():
  """The G steps of a pool share one bucket and one pool of G batches' worth of
  examples, sorted by target length: each step takes the slice group_of_step names,
  so together they take every pooled example exactly once. L is the smallest bucket
  that fits the slice."""
  plan = data.layout(CONFIG)
  gen = dataclasses.replace(CONFIG.generator, max_target_length=CONFIG.max_target_length)
  groups = CONFIG.length_groups
  for pool_index in range(2):
    steps = range(pool_index * groups, (pool_index + 1) * groups)
    batches = [data.HostBatch(CONFIG)(step) for step in steps]
    rows, num_points = batches[0]["points_BxNx33"].shape[:2]
    bucket = CONFIG.point_buckets.index(num_points)
    first = pool_index * max(plan.rows) * groups
    pool = [generator.generate(gen, CONFIG.seed, first + i, num_points_range=plan.ranges[bucket])
            for i in range(groups * rows)]
    order = np.argsort([s.target_length for s in pool], kind="stable")
    assert sorted(data.group_of_step(CONFIG, step) for step in steps) == list(range(groups))
    for step, batch in zip(steps, batches):
      assert batch["points_BxNx33"].shape[:2] == (rows, num_points)
      group = data.group_of_step(CONFIG, step)
      np.testing.assert_array_equal(batch["index_B"],
                                    first + order[group * rows:(group + 1) * rows])
      longest = batch["target_mask_BxL"].sum(1).max()
      L = batch["targets_BxL"].shape[1]
      assert longest <= L and not any(longest <= b < L for b in CONFIG.target_buckets)
    taken = np.concatenate([b["index_B"] for b in batches])
    np.testing.assert_array_equal(np.sort(taken), first + np.arange(groups * rows))


def test_a_pool_is_generated_once_for_its_steps(monkeypatch):
  """Consecutive steps of a pool reuse it: G steps generate G batches' worth of
  examples, not G pools."""
  calls = []
  generate = generator.generate
  monkeypatch.setattr(generator, "generate", lambda *a, **k: calls.append(1) or generate(*a, **k))
  data._length_sorted_pool.cache_clear()
  batches = [data.HostBatch(CONFIG)(step) for step in range(CONFIG.length_groups)]
  assert len(calls) == sum(len(b["index_B"]) for b in batches)


def test_pools_take_their_length_groups_in_uniform_order():
  """Across pools, each step position takes each slice equally often (so the order of
  lengths over a pool's steps is not fixed)."""
  from scipy import stats
  first = [data.group_of_step(CONFIG, pool * CONFIG.length_groups) for pool in range(4_000)]
  counts = np.bincount(first, minlength=CONFIG.length_groups)
  assert stats.chisquare(counts).pvalue > 1e-3


def test_without_length_groups_targets_take_the_longest_bucket():
  config = dataclasses.replace(CONFIG, length_groups=1)
  batch = data.HostBatch(config)(0)
  assert batch["targets_BxL"].shape[1] == config.max_target_length + 2
  plan = data.layout(config)
  rows = batch["targets_BxL"].shape[0]
  np.testing.assert_array_equal(batch["index_B"], np.arange(rows))
  assert rows in plan.rows


@pytest.mark.parametrize("change, message", [
    (dict(target_buckets=(64, 100)), "target_buckets"),
    (dict(target_buckets=(128, 64)), "target_buckets"),
    (dict(length_groups=0), "length_groups"),
])
def test_bad_length_settings_are_named(change, message):
  with pytest.raises(ValueError, match=message):
    data.layout(dataclasses.replace(CONFIG, **change))


def test_tokenize_points_layout():
  config = generator.GeneratorConfig(max_input_dimension=3)
  samples = [generator.generate(config, 0, i) for i in range(3)]
  ids = data.tokenize_points(samples, 200)
  assert ids.shape == (3, 200, 33)
  for row, s in enumerate(samples):
    n, dim = s.x.shape
    x_back = tokens.decode_floats(ids[row, :n, :3 * dim].reshape(n, dim, 3))
    np.testing.assert_array_equal(x_back, tokens.round_to_tokens(s.x))
    np.testing.assert_array_equal(tokens.decode_floats(ids[row, :n, 30:]),
                                  tokens.round_to_tokens(s.y))
    assert np.all(ids[row, :n, 3 * dim:30] == tokens.ENCODER_VOCAB.ids[tokens.INPUT_PAD])
    assert np.all(ids[row, n:] == PAD_POINT)


def test_tokenize_targets_equals_encode_expression():
  prefixes = [generator.generate(generator.GeneratorConfig(), 0, i).prefix for i in range(20)]
  ids = data.tokenize_targets(prefixes, 200)
  for row, prefix in enumerate(prefixes):
    expected = tokens.encode_expression(prefix)
    np.testing.assert_array_equal(ids[row, :len(expected)], expected)
    assert np.all(ids[row, len(expected):] == tokens.DECODER_VOCAB.pad_id)


def test_processes_read_disjoint_slices_of_the_same_global_batch():
  whole = _take(data.make_iterator(CONFIG, process_index=0, process_count=1), 3)
  halves = [_take(data.make_iterator(CONFIG, process_index=p, process_count=2), 3)
            for p in range(2)]
  for step, batch in enumerate(whole):
    joined = {k: np.concatenate([halves[0][step][k], halves[1][step][k]]) for k in batch}
    _assert_same([batch], [joined])
  assert not set(halves[0][0]["index_B"]) & set(halves[1][0]["index_B"])


def test_resume_from_state_or_step_continues_with_the_same_batches():
  iterator = data.make_iterator(CONFIG, process_index=0, process_count=1)
  _take(iterator, 2)
  state = iterator.get_state()
  expected = _take(iterator, 2)
  resumed = data.make_iterator(CONFIG, state=state, process_index=0, process_count=1)
  _assert_same(_take(resumed, 2), expected)
  from_step = data.make_iterator(CONFIG, start_step=2, process_index=0, process_count=1)
  _assert_same(_take(from_step, 2), expected)


def test_worker_count_does_not_change_the_batches():
  config = dataclasses.replace(CONFIG, num_workers=2)
  _assert_same(_take(data.make_iterator(config, process_index=0, process_count=1), 3),
               _take(data.make_iterator(CONFIG, process_index=0, process_count=1), 3))


@pytest.mark.slow
def test_resume_with_workers():
  config = dataclasses.replace(CONFIG, num_workers=2)
  with_workers = data.make_iterator(config, process_index=0, process_count=1)
  _take(with_workers, 2)
  resumed = data.make_iterator(config, state=with_workers.get_state(), process_index=0,
                               process_count=1)
  _assert_same(_take(resumed, 2),
               _take(data.make_iterator(CONFIG, start_step=2, process_index=0,
                                        process_count=1), 2))


def test_rows_must_split_over_processes():
  with pytest.raises(ValueError, match="processes"):
    next(data.make_iterator(CONFIG, process_index=0, process_count=3))
