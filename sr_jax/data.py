"""The training input pipeline on grain: step -> host batch of fixed, bucketed shape.

The data position is the step (style.md section 7). Steps come in pools of
G = length_groups consecutive steps (G = 1: a pool is one step). Pool q draws
`np.random.default_rng([seed, q, 2])` to choose one point bucket k, then generates
G * `rows[k]` examples with global indices q * G * max(rows) + r, each conditioned on
N in bucket k (`generator.generate(..., num_points_range=...)`); each of its G steps
is one batch of `rows[k]` of them (below). Process p of P
takes rows [p*rows/P, (p+1)*rows/P) of each global batch, so hosts read disjoint
slices and agree on every shape without talking to each other. Nothing depends on
access order, worker count or process count, and resuming needs only the step (or
the grain iterator state, which holds the same thing).

Length-aware batching, and how it differs from E2E: E2E sorts a queue of 2,000
samples by length and cuts slices of ~10,000 points, giving a new shape almost every
step. Here the point count N, which sets the encoder's work, is bucketed before
generation, so each batch holds ~`points_per_batch` padded points with at most one
bucket width of padding, and the target length, which sets the decoder's work, is
bucketed after it:

    points_BxNx33  B = rows(N), N in point_buckets (defaults: 200x50, 96x100,
                   64x150, 48x200 rows x points)
    targets_BxL    L in target_buckets (BOS/EOS included; default 48 .. 128)

Bucket k is chosen with probability proportional to P(N in bucket k) / rows(k), so
over many steps the examples' N (and D) follow the generator's distribution (up to
the small tilt E2E's rejections put on N). Targets longer than max_target_length are
rejected inside the generator (E2E: no limit; the length's p99 is 107, max seen 127).

Length groups: with length_groups = G > 1, a pool's G * rows examples are sorted by
target length and cut into G slices, and its G steps take one slice each, in an order
drawn from the pool's own RNG; L is the smallest target bucket that holds the slice's
longest target. Every generated example is trained on exactly once, so the examples
follow the generator's distribution exactly, while a batch's targets are of similar
length (mean padded L ~81 instead of ~118 for G=4; the real mean is ~60). Every
process generates the whole pool, so all agree on L and the batch does not depend on
the process count. A pool is generated once for its G steps: the last pool is cached
(`_length_sorted_pool`), and grain hands a whole pool's steps to one worker
(`_PoolSteps`). A pool per step, keeping one slice, would throw away (G - 1) / G of
the generation, and the host rate bounds training on an accelerator (BENCHMARKS.md,
"One pool per G steps").
With G = 1 every process generates only its rows and L is the longest bucket.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools

from absl import flags
import grain
import jax
import numpy as np

from sr_jax import generator, tokens

NUM_POINT_TOKENS = 3 * (10 + 1)  # x padded to 10 dims, then y; 3 tokens per float
_BUCKET_STREAM = 2  # third seed word of the per-step bucket RNG (1 is test samples)
_GROUP_STREAM = 3  # ... and of the per-step length-group RNG
_MAX_STEPS = 2 ** 62


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Batching knobs; the distribution itself is `generator`."""

  generator: generator.GeneratorConfig = generator.GeneratorConfig()
  seed: int = 0
  points_per_batch: int = 10_000  # E2E tokens_per_batch: padded points per batch
  point_buckets: tuple[int, ...] = (50, 100, 150, 200)
  max_target_length: int = 126  # tokens without BOS/EOS; longer targets are resampled
  # Padded target lengths (BOS/EOS included); the last is max_target_length + 2.
  target_buckets: tuple[int, ...] = (48, 64, 80, 96, 112, 128)
  length_groups: int = 4  # a step keeps 1 of this many length-sorted batches (1: off)
  row_multiple: int = 8  # rows per batch are a multiple of this (devices x processes)
  num_workers: int = 0  # grain multiprocessing workers (0: in this process)
  per_worker_buffer_size: int = 2  # pools (length_groups batches each) read ahead


@dataclasses.dataclass(frozen=True)
class _Layout:
  rows: tuple[int, ...]
  ranges: tuple[tuple[int, int], ...]  # N range of each bucket, inclusive
  bucket_cdf: tuple[float, ...]


@functools.lru_cache(maxsize=16)
def layout(config: DataConfig) -> _Layout:
  """Rows, N ranges and step probabilities of each bucket."""
  gen = config.generator
  buckets = config.target_buckets
  if list(buckets) != sorted(set(buckets)) or buckets[-1] != config.max_target_length + 2:
    raise ValueError(f"target_buckets {buckets} must increase and end at max_target_length + 2 "
                     f"= {config.max_target_length + 2}")
  if config.length_groups < 1:
    raise ValueError(f"length_groups must be >= 1, got {config.length_groups}")
  if config.point_buckets[-1] < gen.max_points:
    raise ValueError(f"largest point bucket {config.point_buckets[-1]} < max_points "
                     f"{gen.max_points}")
  rows, ranges, weights = [], [], []
  low = 1
  for size in config.point_buckets:
    row_count = config.points_per_batch // size // config.row_multiple * config.row_multiple
    if row_count <= 0:
      raise ValueError(f"points_per_batch {config.points_per_batch} is too small for "
                       f"bucket {size} with row_multiple {config.row_multiple}")
    rows.append(row_count)
    ranges.append((low, size))
    weights.append(_probability_in_range(gen, low, size) / row_count)
    low = size + 1
  weights = np.array(weights)
  return _Layout(tuple(rows), tuple(ranges), tuple(np.cumsum(weights / weights.sum()).tolist()))


def _probability_in_range(gen: generator.GeneratorConfig, low: int, high: int) -> float:
  """P(N in [low, high]) under D ~ U{min..max}, N | D ~ U{5D..max_points}."""
  dims = range(gen.min_input_dimension, gen.max_input_dimension + 1)
  total = 0.0
  for dim in dims:
    n_low = min(gen.min_points_per_dim * dim, gen.max_points)
    overlap = min(high, gen.max_points) - max(low, n_low) + 1
    total += max(0, overlap) / (gen.max_points - n_low + 1)
  return total / len(dims)


def bucket_of_step(config: DataConfig, step: int) -> int:
  """The point bucket of global step `step` (that of its pool): a pure function of
  (seed, step)."""
  cdf = layout(config).bucket_cdf
  pool = step // config.length_groups
  u = np.random.default_rng([config.seed, pool, _BUCKET_STREAM]).random()
  return min(bisect.bisect_right(cdf, u), len(cdf) - 1)


def group_of_step(config: DataConfig, step: int) -> int:
  """Which of the length_groups sorted slices of its pool global step `step` takes:
  the pool's steps take all of them, in an order drawn from the pool's RNG."""
  pool, position = divmod(step, config.length_groups)
  order = np.random.default_rng([config.seed, pool, _GROUP_STREAM]).permutation(
      config.length_groups)
  return int(order[position])


def _generate(config: DataConfig, bucket: int, indices) -> list:
  """The examples of these global indices, each conditioned on N in point bucket k."""
  gen = dataclasses.replace(config.generator, max_target_length=config.max_target_length)
  n_range = layout(config).ranges[bucket]
  return [generator.generate(gen, config.seed, index, num_points_range=n_range)
          for index in indices]


def _first_index(config: DataConfig, step: int) -> int:
  """Global index of the first example of the pool that holds step `step`."""
  return (step // config.length_groups) * max(layout(config).rows) * config.length_groups


@functools.lru_cache(maxsize=1)
def _length_sorted_pool(config: DataConfig, pool: int) -> tuple[list, np.ndarray]:
  """Pool `pool`'s examples (G * rows of its bucket, consecutive indices from
  _first_index) and their order by target length. Cached: the G steps of a pool come
  one after another, in one process or one grain worker."""
  step = pool * config.length_groups
  bucket = bucket_of_step(config, step)
  first = _first_index(config, step)
  samples = _generate(config, bucket,
                      range(first, first + config.length_groups * layout(config).rows[bucket]))
  return samples, np.argsort([s.target_length for s in samples], kind="stable")


def tokenize_points(samples, num_points: int) -> np.ndarray:
  """Samples -> B x num_points x 33 encoder ids: x, INPUT_PAD x 3 per missing
  dimension, then y; missing points are PAD. One float-encoding call per batch."""
  ids = np.full((len(samples), num_points, NUM_POINT_TOKENS), tokens.ENCODER_VOCAB.pad_id,
                dtype=np.int32)
  float_ids = tokens.encode_floats(np.concatenate(
      [np.concatenate([s.x, s.y[:, None]], axis=1).ravel() for s in samples]))
  start = 0
  for row, s in enumerate(samples):
    n, dim = s.x.shape
    values = float_ids[start:start + n * (dim + 1)].reshape(n, dim + 1, 3)
    start += n * (dim + 1)
    ids[row, :n, :3 * dim] = values[:, :dim].reshape(n, 3 * dim)
    ids[row, :n, 3 * dim:-3] = tokens.ENCODER_VOCAB.ids[tokens.INPUT_PAD]
    ids[row, :n, -3:] = values[:, dim]
  return ids


def tokenize_targets(prefixes, length: int) -> np.ndarray:
  """Prefixes -> B x length decoder ids, BOS ... EOS then PAD, as
  tokens.encode_expression writes them, with one float-encoding call per batch."""
  vocab = tokens.DECODER_VOCAB
  constants = [t for prefix in prefixes for t in prefix if not isinstance(t, str)]
  float_ids = iter(tokens.encode_floats(np.array(constants, dtype=np.float64),
                                        vocab).tolist())
  ids = np.full((len(prefixes), length), vocab.pad_id, dtype=np.int32)
  for row, prefix in enumerate(prefixes):
    words = [vocab.ids[tokens.BOS]]
    for token in prefix:
      if isinstance(token, str):
        words.append(vocab.ids[token])
      else:
        words.extend(next(float_ids))
    words.append(vocab.ids[tokens.EOS])
    ids[row, :len(words)] = words
  return ids


@dataclasses.dataclass(frozen=True)
class HostBatch:
  """step -> this process's slice of the global batch (a dict of numpy arrays)."""

  config: DataConfig
  process_index: int = 0
  process_count: int = 1

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    config = self.config
    plan = layout(config)
    bucket = bucket_of_step(config, step)
    global_rows = plan.rows[bucket]
    if global_rows % self.process_count:
      raise ValueError(f"{global_rows} rows do not split over {self.process_count} processes")
    rows = global_rows // self.process_count
    num_points = config.point_buckets[bucket]
    groups = config.length_groups
    first_index = _first_index(config, step)
    local = slice(self.process_index * rows, (self.process_index + 1) * rows)
    if groups == 1:
      indices = list(range(first_index, first_index + global_rows))[local]
      samples = _generate(config, bucket, indices)
      target_len = config.target_buckets[-1]
    else:
      pool, order = _length_sorted_pool(config, step // groups)
      group = group_of_step(config, step)
      kept = order[group * global_rows:(group + 1) * global_rows]
      longest = max(pool[i].target_length for i in kept) + 2
      target_len = config.target_buckets[bisect.bisect_left(config.target_buckets, longest)]
      kept = kept[local]
      samples = [pool[i] for i in kept]
      indices = [first_index + int(i) for i in kept]
    points = np.array([s.num_points for s in samples])
    target_lengths = np.array([s.target_length + 2 for s in samples])
    batch = {
        "points_BxNx33": tokenize_points(samples, num_points),
        "point_mask_BxN": np.arange(num_points) < points[:, None],
        "targets_BxL": tokenize_targets([s.prefix for s in samples], target_len),
        "target_mask_BxL": np.arange(target_len) < target_lengths[:, None],
        "example_mask_B": np.ones((rows,), dtype=bool),
        "index_B": np.array(indices, dtype=np.int64),
    }
    for name in ("input_dimension", "num_points", "num_unary_ops", "num_binary_ops",
                 "num_constants", "num_rejections"):
      batch[name + "_B"] = np.array([getattr(s, name) for s in samples], dtype=np.int64)
    return batch


@dataclasses.dataclass(frozen=True)
class _PoolSteps:
  """Pool q -> the host batches of its steps (from start_step on), in step order: one
  grain element per pool, so one worker generates a pool once for all its steps."""

  host_batch: HostBatch
  start_step: int

  def __call__(self, pool: int) -> list[dict[str, np.ndarray]]:
    groups = self.host_batch.config.length_groups
    return [self.host_batch(step) for step in
            range(max(pool * groups, self.start_step), (pool + 1) * groups)]


class _Steps(grain.experimental.FlatMapTransform):
  """A pool's list of batches -> the batches, one grain element each."""

  def __init__(self, length_groups: int):
    self.max_fan_out = length_groups

  def flat_map(self, batches):
    return batches


def make_dataset(config: DataConfig, start_step: int = 0, process_index: int | None = None,
                 process_count: int | None = None) -> grain.IterDataset:
  """Host batches for steps start_step, start_step + 1, ... (this process's rows).

  process_index/count default to JAX's. With num_workers > 0, pools of batches are
  built in grain worker processes (absl flags are marked parsed if nobody parsed them).
  """
  if process_index is None or process_count is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  # One reader thread: generation holds the GIL, and grain's default (16 threads,
  # 500 batches read ahead) would burn CPU on batches far beyond the next step.
  read_options = grain.ReadOptions(num_threads=1,
                                   prefetch_buffer_size=config.per_worker_buffer_size)
  host_batch = HostBatch(config, process_index, process_count)
  first_pool, last_pool = start_step // config.length_groups, _MAX_STEPS // config.length_groups
  dataset = grain.MapDataset.range(first_pool, last_pool).map(
      _PoolSteps(host_batch, start_step)).to_iter_dataset(read_options)
  if config.num_workers:
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.num_workers,
        per_worker_buffer_size=config.per_worker_buffer_size))
  return grain.experimental.FlatMapIterDataset(dataset, _Steps(config.length_groups))


def make_iterator(config: DataConfig, start_step: int = 0, state: dict | None = None,
                  **process) -> grain.DatasetIterator:
  """An iterator with get_state/set_state; `state` resumes one saved from the same
  (config, start_step), exactly."""
  iterator = iter(make_dataset(config, start_step, **process))
  if state is not None:
    iterator.set_state(state)
  return iterator
