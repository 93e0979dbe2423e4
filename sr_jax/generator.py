"""On-the-fly expression generator: `generate(config, seed, index)`, a pure function.

A sample depends only on (config, seed, index): its RNG is
`np.random.default_rng([seed, index])`, there is no global state, no signal and no
timeout, and retries are a bounded loop inside that one RNG stream. So the same index
gives the same bytes in any process, worker or access order (tested). Across CPU
types, numpy's SIMD kernels for sin/exp/log may differ in the last bit, which can
flip a borderline rejection; same numpy build and CPU family means same bytes.

The distribution is E2E's (reference.md section 1; the code defaults):
- D ~ U{1..10} and u ~ U{0..4} unary ops, both fixed across retries;
- b binary ops from {add, sub, mul}, a binary tree from Lample & Charton's unbiased
  sampler, leaves the variables only (x_0..x_{D-1} first, in random leaf order);
- unaries inserted above every non-root subtree of fewer than 6 nodes, then a random
  subset of u kept; affine prefactors as in `add_prefactors`; constants
  sign x (1..999) x 10^{-3,-2,-1};
- N ~ U{5D..200} points from k in {1..9} Gaussian or uniform clusters, each with its
  own random rotation, whitened per dimension; the function is rejected on any NaN,
  inf or large |y|, and the whole draw (b, tree, constants, N, points) is redone.

Deviations from E2E, all on purpose:
- b is drawn directly from U{max(0, D-1)..D+3}. E2E draws U{0..D+3} and rejects
  trees that use fewer than D variables, which happens exactly when b < D-1; the
  accepted distribution is the same and ~2 rejections per sample disappear.
- The unary subset is drawn as "choose u positions, then their operators", which is
  the same distribution as E2E's "draw an operator everywhere, shuffle, delete".
- |y| must stay below 1e100, not 1e103: our float tokens (tokens.py) cover
  magnitudes up to 9.9995e100 only.
- Floating-point errors follow E2E's `np.seterr(all="raise")` for overflow, invalid
  and divide (any of them rejects the function) but not for underflow, which is
  flushed to zero as IEEE does.
- Rotations are Haar SO(D) from the sample's own RNG (QR with a sign fix), not
  scipy's `special_ortho_group` on numpy's global RNG.
- Only `reduce_num_constants=True` (add_prefactors), E2E's default, is implemented.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from typing import Sequence

import numpy as np

from sr_jax import operators

_SUMS = ("add", "sub")


def _default_weights(arity: int) -> tuple[tuple[str, float], ...]:
  return tuple((op.name, op.generator_weight) for op in operators.OPERATORS.values()
               if op.arity == arity)


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  """Every knob of the distribution; defaults are E2E's code defaults."""

  min_input_dimension: int = 1
  max_input_dimension: int = 10
  min_unary_ops: int = 0
  max_unary_ops: int = 4
  # b <= max_binary_ops_offset + max_binary_ops_per_dim * D - 1 (numpy's exclusive
  # bound in E2E), and b >= D - 1 so that every variable appears.
  max_binary_ops_offset: int = 4
  max_binary_ops_per_dim: int = 1
  binary_operator_weights: tuple[tuple[str, float], ...] = _default_weights(2)
  unary_operator_weights: tuple[tuple[str, float], ...] = _default_weights(1)
  max_unary_depth: int = 6  # unaries go above subtrees of fewer nodes than this
  constant_max_mantissa: int = 999
  constant_exponents: tuple[int, ...] = (-3, -2, -1)
  min_points_per_dim: int = 5
  max_points: int = 200
  max_centroids: int = 10  # k ~ U{1..max_centroids-1}, as numpy's randint in E2E
  gaussian_probability: float = 0.5  # else uniform clusters
  max_abs_y: float = 1e100
  max_target_length: int | None = None  # reject longer targets (tokens, no BOS/EOS)
  max_attempts: int = 1000
  train_noise_gamma: float = 0.0  # gamma ~ U(0, this) per sample
  # Test-time variant.
  eval_num_points: int = 200
  prediction_sigmas: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
  num_prediction_points: int = 200
  eval_noise_gamma: float = 0.0


@dataclasses.dataclass(frozen=True)
class Sample:
  """One accepted function with its points; `predictions` only in test samples."""

  prefix: tuple  # operator names, "x_i", python floats
  skeleton: tuple  # the prefix with each constant replaced by "C"
  x: np.ndarray  # N x D, float64
  y: np.ndarray  # N, float64 (with noise, if any)
  input_dimension: int
  num_unary_ops: int
  num_binary_ops: int
  num_points: int
  num_constants: int
  num_rejections: int
  noise_gamma: float = 0.0
  predictions: tuple = ()  # ((sigma, x_PxD, y_P), ...) at each prediction sigma

  @property
  def target_length(self) -> int:
    """Decoder tokens without BOS/EOS: one per node, plus two more per constant."""
    return len(self.prefix) + 2 * self.num_constants


class GenerationError(RuntimeError):
  """A configuration that yields no accepted sample within `max_attempts`."""


class _Reject(Exception):
  pass


@dataclasses.dataclass(frozen=True)
class _Tables:
  binary_names: tuple[str, ...]
  binary_cdf: list[float]
  unary_names: tuple[str, ...]
  unary_cdf: list[float]
  position_cdf: dict  # (num_empty, num_ops) -> cumulative list over positions


def _cdf(weights: Sequence[tuple[str, float]]) -> tuple[tuple[str, ...], list[float]]:
  names = tuple(n for n, w in weights if w > 0)
  values = np.array([w for _, w in weights if w > 0], dtype=np.float64)
  if len(names) == 0:
    return (), []
  for name in names:
    if name not in operators.OPERATORS:
      raise ValueError(f"unknown operator {name!r}")
  return names, (np.cumsum(values) / values.sum()).tolist()


@functools.lru_cache(maxsize=32)
def _tables(config: GeneratorConfig) -> _Tables:
  """Per-config tables, built once: operator CDFs and the tree-count table."""
  binary_names, binary_cdf = _cdf(config.binary_operator_weights)
  unary_names, unary_cdf = _cdf(config.unary_operator_weights)
  if any(operators.OPERATORS[n].arity != 2 for n in binary_names):
    raise ValueError("binary_operator_weights lists a non-binary operator")
  if any(operators.OPERATORS[n].arity != 1 for n in unary_names):
    raise ValueError("unary_operator_weights lists a non-unary operator")
  max_ops = max(1, config.max_binary_ops_offset
                + config.max_binary_ops_per_dim * config.max_input_dimension)
  # count[n][e]: binary trees with n internal nodes filling e empty slots
  # (Lample & Charton with p1 = 0): count[n][e] = count[n][e-1] + count[n-1][e+1].
  width = 2 * max_ops + 2
  count = [[0] + [1] * (width - 1)]
  for n in range(1, max_ops + 1):
    row = [0]
    for e in range(1, width - n):
      row.append(row[e - 1] + count[n - 1][e + 1])
    count.append(row)
  position_cdf = {}
  for n in range(1, max_ops + 1):
    for e in range(1, width - n - 1):
      total = count[n][e]
      if total:
        cumulative = np.cumsum([count[n - 1][e - i + 1] for i in range(e)]) / total
        position_cdf[(e, n)] = cumulative.tolist()
  return _Tables(binary_names, binary_cdf, unary_names, unary_cdf, position_cdf)


def _pick(cdf: list[float], u: float) -> int:
  """Inverse-CDF draw of one index (cdf[-1] may round below 1)."""
  return min(bisect.bisect_right(cdf, u), len(cdf) - 1)


def _binary_op_range(config: GeneratorConfig, dim: int) -> tuple[int, int]:
  low = max(0, dim - 1)
  high = config.max_binary_ops_offset + config.max_binary_ops_per_dim * dim - 1
  if high < low:
    raise ValueError(f"no binary-op count can use all {dim} variables with this config")
  return low, high


def _sample_expression(config: GeneratorConfig, tables: _Tables,
                       rng: np.random.Generator, dim: int, num_unary: int):
  """Returns (prefix, num_binary, num_unary_kept): a tree with unaries and constants."""
  low, high = _binary_op_range(config, dim)
  num_binary = int(rng.integers(low, high + 1))
  if num_binary and not tables.binary_names:
    raise ValueError("binary ops are needed but every binary weight is zero")
  # Unbiased binary tree: children[node] is [] for an empty slot (a future leaf).
  values: list = [None]
  children: list[list[int]] = [[]]
  empty = [0]
  next_empty = 0
  num_empty = 1
  num_leaves = num_binary + 1
  u = rng.random(2 * num_binary + 2 * num_leaves).tolist()
  for step, remaining in enumerate(range(num_binary, 0, -1)):
    position = bisect.bisect_right(tables.position_cdf[(num_empty, remaining)], u[step])
    next_empty += position
    node = empty[next_empty]
    values[node] = tables.binary_names[_pick(tables.binary_cdf, u[num_binary + step])]
    for _ in range(2):
      values.append(None)
      children.append([])
      children[node].append(len(values) - 1)
      empty.append(len(values) - 1)
    next_empty += 1
    num_empty += 1 - position
  leaves = [n for n in range(len(values)) if values[n] is None]
  # A random leaf order: the first D leaves get x_0..x_{D-1}, the rest uniform.
  order_u = u[2 * num_binary:2 * num_binary + num_leaves]
  extra_u = u[2 * num_binary + num_leaves:]
  for rank, leaf_index in enumerate(sorted(range(num_leaves), key=order_u.__getitem__)):
    variable = rank if rank < dim else int(extra_u[rank] * dim)
    values[leaves[leaf_index]] = operators.VARIABLES[variable]

  # Subtree sizes (children always have larger ids than their parent).
  size = [1] * len(values)
  for node in range(len(values) - 1, -1, -1):
    for child in children[node]:
      size[node] += size[child]
  eligible = [n for n in range(1, len(values)) if size[n] < config.max_unary_depth]
  kept = min(len(eligible), num_unary)
  unary_above = {}
  if kept:
    if not tables.unary_names:
      raise ValueError("unary ops are requested but every unary weight is zero")
    u = rng.random(len(eligible) + kept).tolist()
    chosen = sorted(range(len(eligible)), key=u.__getitem__)[:kept]
    unary_above = {eligible[c]: tables.unary_names[_pick(tables.unary_cdf, v)]
                   for c, v in zip(chosen, u[len(eligible):])}

  def top(node):  # the value seen by a parent: the inserted unary, if any
    return unary_above.get(node, values[node])

  prefix: list = []
  constant_slots: list[int] = []

  def constant():
    constant_slots.append(len(prefix))
    prefix.append(None)

  def emit(node, with_unary):
    if with_unary and node in unary_above:
      prefix.append(unary_above[node])
      if values[node] not in _SUMS:
        prefix.append("add")
        constant()
        prefix.append("mul")
        constant()
      emit(node, False)
      return
    value = values[node]
    prefix.append(value)
    for child in children[node]:
      if value in _SUMS and top(child) not in _SUMS:
        prefix.append("mul")
        constant()
      emit(child, True)

  emit(0, True)
  if not constant_slots:  # E2E: nothing was added (a product or a single leaf)
    prefix[:0] = ["mul", None]
    constant_slots = [1]
  prefix[:0] = ["add", None]
  constant_slots = [1] + [s + 2 for s in constant_slots]
  for slot, value in zip(constant_slots, _sample_constants(config, rng, len(constant_slots))):
    prefix[slot] = value
  return prefix, num_binary, kept


def _sample_constants(config: GeneratorConfig, rng: np.random.Generator, count: int):
  """E2E's generate_float: sign x U{1..max_mantissa} x 10^exponent, exact decimals."""
  u = rng.random(3 * count).tolist()
  exponents = config.constant_exponents
  values = []
  for i in range(count):
    mantissa = 1 + int(u[3 * i + 1] * config.constant_max_mantissa)
    exponent = exponents[int(u[3 * i + 2] * len(exponents))]
    # int / int is the correctly rounded float of the decimal m e-k.
    value = mantissa / 10 ** -exponent if exponent < 0 else float(mantissa * 10 ** exponent)
    values.append(-value if u[3 * i] < 0.5 else value)
  return values


def _random_rotations(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
  """Haar SO(dim) matrices, count x dim x dim, from the sample's own RNG.

  The Q of a Gaussian matrix A = QR with R's diagonal positive is Haar on O(dim);
  flipping its first column where det(A) < 0 makes it Haar on SO(dim). Q is
  A R^-1 with R from the Cholesky factor of A^T A (the same Q as a sign-fixed LAPACK
  QR, at less cost for these small matrices on the generator's hot path), then one
  Newton-Schulz step restores orthogonality to ~1e-15.
  """
  a = rng.standard_normal((count, dim, dim))
  try:
    lower = np.linalg.cholesky(np.matmul(a.transpose(0, 2, 1), a))
  except np.linalg.LinAlgError:  # a singular Gaussian matrix: probability zero
    raise _Reject() from None
  q = np.matmul(a, np.linalg.inv(lower).transpose(0, 2, 1))
  q = np.matmul(q, 1.5 * np.eye(dim) - 0.5 * np.matmul(q.transpose(0, 2, 1), q))
  q[np.linalg.det(a) < 0, :, 0] *= -1
  return q


def _sample_inputs(config: GeneratorConfig, rng: np.random.Generator, dim: int,
                   num_points: int, gaussian: bool, num_centroids: int,
                   scale: float = 1.0) -> np.ndarray:
  """E2E's mixture of rotated clusters, whitened per dimension, times `scale`."""
  means = rng.standard_normal((num_centroids, dim))
  u = rng.random(num_centroids * (dim + 1))
  stds = np.sqrt(u[:num_centroids * dim]).reshape(num_centroids, dim)
  weights = u[num_centroids * dim:]
  counts = rng.multinomial(num_points, weights / weights.sum())
  cluster = np.repeat(np.arange(num_centroids), counts)
  if gaussian:
    x = rng.standard_normal((num_points, dim))
  else:
    x = rng.uniform(-1, 1, size=(num_points, dim))
  x *= stds[cluster]
  x += means[cluster]
  if dim > 1:  # every point through every cluster's rotation, then keep its own
    rotated = np.matmul(x, _random_rotations(rng, num_centroids, dim))
    x = rotated[cluster, np.arange(num_points)]
  x -= np.add.reduce(x, axis=0) / num_points
  x *= scale / np.sqrt(np.add.reduce(x * x, axis=0) / num_points)
  return x


_UNARY_FNS = {n: op.np_fn for n, op in operators.OPERATORS.items() if op.arity == 1}
_BINARY_FNS = {n: op.np_fn for n, op in operators.OPERATORS.items() if op.arity == 2}
_VARIABLE_INDEX = {v: i for i, v in enumerate(operators.VARIABLES)}


def evaluate_fast(prefix: Sequence, x: np.ndarray) -> np.ndarray:
  """A stack evaluator for generated prefixes, float64, without validation.

  Raises FloatingPointError on overflow, invalid operations and division by zero
  (E2E rejects such functions), so it is for the generator, not a general evaluator:
  use expressions.evaluate there.
  """
  columns = np.ascontiguousarray(x.T)
  stack = []
  with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
    for token in reversed(prefix):
      if token in _BINARY_FNS:
        a = stack.pop()
        stack.append(_BINARY_FNS[token](a, stack.pop()))
      elif token in _UNARY_FNS:
        stack.append(_UNARY_FNS[token](stack.pop()))
      elif token in _VARIABLE_INDEX:
        stack.append(columns[_VARIABLE_INDEX[token]])
      else:
        stack.append(token)
  return np.broadcast_to(np.asarray(stack[0], dtype=np.float64), (x.shape[0],))


def _outputs(config: GeneratorConfig, prefix, x) -> np.ndarray:
  try:
    y = evaluate_fast(prefix, x)
  except FloatingPointError:
    raise _Reject() from None
  if not np.all(np.abs(y) < config.max_abs_y):  # also false for NaN
    raise _Reject()
  return y


def generate(config: GeneratorConfig, seed: int, index: int, test: bool = False,
             num_points_range: tuple[int, int] | None = None) -> Sample:
  """The sample for (seed, index): the same bytes in every call, process and worker.

  test=True gives the test-time variant: N = eval_num_points fit points with noise
  eval_noise_gamma * RMS(y) * randn, and `predictions` holding
  num_prediction_points fresh points (new centroids, weights, rotations) at each
  sigma in prediction_sigmas, whitened then scaled by sigma, with clean outputs.
  num_points_range=(lo, hi) restricts N to [lo, hi] (the data pipeline uses it to
  batch by point count); D is then drawn from its distribution given that range.
  """
  tables = _tables(config)
  rng = np.random.default_rng([seed, index, 1] if test else [seed, index])
  dim = _sample_dimension(config, rng, num_points_range)
  num_unary = int(rng.integers(config.min_unary_ops, config.max_unary_ops + 1))
  low_n, high_n = _points_range(config, dim, num_points_range)
  for attempt in range(config.max_attempts):
    try:
      prefix, num_binary, kept = _sample_expression(config, tables, rng, dim, num_unary)
      num_constants = sum(1 for t in prefix if not isinstance(t, str))
      if (config.max_target_length is not None
          and len(prefix) + 2 * num_constants > config.max_target_length):
        raise _Reject()
      u_points, u_type, u_centroids = rng.random(3).tolist()
      num_points = (config.eval_num_points if test
                    else low_n + int(u_points * (high_n - low_n + 1)))
      gaussian = u_type < config.gaussian_probability
      num_centroids = 1 + int(u_centroids * (config.max_centroids - 1))
      x = _sample_inputs(config, rng, dim, num_points, gaussian, num_centroids)
      y = _outputs(config, prefix, x)
      predictions = ()
      if test:
        predictions = tuple(
            (float(sigma), xp, _outputs(config, prefix, xp))
            for sigma in config.prediction_sigmas
            for xp in [_sample_inputs(config, rng, dim, config.num_prediction_points,
                                      gaussian, num_centroids, scale=sigma)])
    except _Reject:
      continue
    gamma = config.eval_noise_gamma if test else (
        float(rng.uniform(0, config.train_noise_gamma)) if config.train_noise_gamma else 0.0)
    if gamma:
      rms = np.sqrt(np.mean(y ** 2))
      y = y + gamma * rms * rng.standard_normal(num_points)
    return Sample(prefix=tuple(prefix),
                  skeleton=tuple(t if isinstance(t, str) else "C" for t in prefix),
                  x=x, y=np.array(y, dtype=np.float64), input_dimension=dim,
                  num_unary_ops=kept, num_binary_ops=num_binary, num_points=num_points,
                  num_constants=num_constants, num_rejections=attempt,
                  noise_gamma=gamma, predictions=predictions)
  raise GenerationError(f"no accepted sample after {config.max_attempts} attempts "
                        f"(seed={seed}, index={index}, D={dim}); check the config")


def _points_range(config: GeneratorConfig, dim: int,
                  restrict: tuple[int, int] | None) -> tuple[int, int]:
  low = min(config.min_points_per_dim * dim, config.max_points)
  high = config.max_points
  if restrict is not None:
    low, high = max(low, restrict[0]), min(high, restrict[1])
  return low, high


@functools.lru_cache(maxsize=64)
def dimension_probabilities(config: GeneratorConfig,
                            num_points_range: tuple[int, int] | None = None) -> np.ndarray:
  """P(D = d | N in num_points_range) for d = min..max_input_dimension (no rejection)."""
  dims = np.arange(config.min_input_dimension, config.max_input_dimension + 1)
  mass = []
  for d in dims.tolist():
    low, high = _points_range(config, d, None)
    r_low, r_high = _points_range(config, d, num_points_range)
    mass.append(max(0, r_high - r_low + 1) / (high - low + 1))
  mass = np.array(mass)
  if mass.sum() == 0:
    raise ValueError(f"no input dimension allows N in {num_points_range}")
  return mass / mass.sum()


def _sample_dimension(config, rng, num_points_range) -> int:
  if num_points_range is None:
    return int(rng.integers(config.min_input_dimension, config.max_input_dimension + 1))
  probabilities = dimension_probabilities(config, tuple(num_points_range))
  return config.min_input_dimension + _pick(np.cumsum(probabilities).tolist(), rng.random())
