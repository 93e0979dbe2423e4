"""Evolutionary search seeded by the transformer's candidates, batched over datasets.

The model proposes formulas and refinement fits their constants; when a proposal is
close but wrong, nothing else improves it. This stage evolves a population per dataset,
started from the proposals (plus a share of random formulas), for a time budget:

- offspring by mutation (subtree replacement, point / operator / variable changes,
  insertion and removal of unary nodes, hoist, constant perturbation) and crossover
  between formulas of the same dataset (variation.py); all valid, all within
  `max_length` tokens, all reading only the dataset's features;
- every offspring is wrapped as c0 + c1 * f (linear scaling, as Operon does) and gets
  `lm_iters` Levenberg-Marquardt iterations on a fixed random subset of the dataset's
  points, keeping the refined constants (Lamarckian); with `refined` < `offspring`,
  only the best `refined` by error after the best linear scaling (closed form, one
  forward evaluation) are refined;
- the next population: the elite, then tournaments on normalised MSE (1 - R2) plus a
  price per node of the formula the user gets (parsimony pressure);
- a Pareto front of complexity vs error is kept throughout and returned, with the best;
- each dataset's population is split into `islands` that never mix: island 0 starts
  from the proposals, the others from random formulas. The model's candidates are
  fitted well from the start and, in one population, their offspring crowd out every
  other form within a few generations; when they are the wrong form the search stays
  stuck near them (on all 117 Feynman problems the random-seeded search matched or beat
  the seeded one). Two islands, at equal work per generation, measured +5 points R2 >
  0.99 on Feynman and Strogatz (BENCHMARKS.md);
- island 1 also starts from regression seeds (sparse_seeds.py): sums and ratios of a
  few library terms (x^2, sin(x0 - x1), cos(x1) / x0, c^2 k / (G r^2), ...), a power
  law, and power laws times a function of a product of features (group_seeds.py:
  n0 exp(-m g x / (k T)), m0 / sqrt(1 - v^2 / c^2)), fitted by least squares on the
  dataset (on logs for the last two) in one pass. Laws of a few such terms (most
  Strogatz systems, many Feynman laws) are then held from the start, where mutation
  would assemble them term by term.

The search takes and returns formulas on the dataset's own features. Inside, y is
standardised (float32 then holds any finite y; formulas map back through their affine
top) and each feature divided by its root mean square, not standardised: x_k / r_k
maps back to one weight, mul(1/r_k, x_k), folded into a weight already there (or into
the coefficient of a product of powers, c x0^2 / x1, which then needs none), where
standardising would write every variable as (x_k - m_k) / s_k, 5 nodes (formulas 1.5x
the size of Operon's, BENCHMARKS.md), and would hide sin(x0 - x1) behind offsets.

All datasets of a call move together: one generation makes every dataset's offspring
(host Python, ~50k per second per core) and refines them in one refine.refine call
(after one batched selection.score screening call when `refined` < `offspring`), on
any device JAX sees. The budget is seconds per dataset, not counting XLA compilation (a
one-time cost per program shape, compile_cache.compile_seconds; the stage stops before
a generation that would overrun it), or an exact number of
generations, which makes results reproducible bit for bit: with a time budget, how many
generations run depends on the machine, and results with it.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Sequence

import jax
import numpy as np

from sr_jax import (compile_cache, expressions, operators, refine, selection, sparse_seeds,
                    variation)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  generations: int = 0  # exact number of generations (0: run for the time budget)
  population: int = 64  # per dataset (256 measured no better: BENCHMARKS.md)
  offspring: int = 48  # per dataset and generation
  # Of which the best (by error after linear scaling) are LM-refined and compete for the
  # population; all of them by default, as Operon does: refining every offspring beat
  # screening 128 down to 24 at equal time (2 s per dataset, BENCHMARKS.md).
  refined: int = 48
  random_share: float = 0.25  # of the first population, when enough seeds exist
  tournament: int = 4
  elite: int = 4
  parsimony: float = 2e-4  # added to 1 - R2 per node of the returned formula
  lm_iters: int = 4  # LM iterations per refined offspring
  max_points: int = 128  # points each dataset's offspring are scored and fitted on
  archive: int = 24  # Pareto-front formulas kept per dataset
  # Populations per dataset evolved apart, population and offspring split between them:
  # island 0 starts from the seeds (and random_share random formulas), the others
  # from random formulas only, so the model's candidates cannot crowd out the search
  # for a different form. At equal work, R2 > 0.99 with 1 / 2 / 4 islands: Feynman
  # (117, 60 generations) 68 / 74 / 68%, Strogatz (14 x 4 seeds, 300) 82 / 88 / 84%.
  islands: int = 2
  # Seeds from sparse linear and rational regression on a library of terms
  # (sparse_seeds.py), given to island 1 (to island 0 beside the proposals when there
  # is one island); None: none.
  regression_seeds: sparse_seeds.SparseSeedConfig | None = sparse_seeds.SparseSeedConfig()
  variation: variation.VariationConfig = variation.VariationConfig()
  seed: int = 0

  def __post_init__(self):
    if min(self.population, self.offspring, self.refined, self.tournament, self.archive,
           self.max_points, self.lm_iters, self.islands) < 1 or self.generations < 0:
      raise ValueError(f"search sizes must be positive: {self}")
    if self.refined > self.offspring:
      raise ValueError(f"refined ({self.refined}) > offspring ({self.offspring})")
    if not 0 <= self.random_share <= 1 or self.elite > self.population:
      raise ValueError(f"bad random_share or elite: {self}")
    if (self.population // self.islands < max(2, self.elite)
        or self.offspring // self.islands < 1):
      raise ValueError(f"{self.islands} islands leave too small populations: {self}")


@dataclasses.dataclass(frozen=True)
class Individual:
  prefix: tuple  # affine at the top
  nmse: float  # MSE / var(y) on the search points: 1 - R2
  complexity: int  # nodes of the formula the user gets (returned_complexity)


@dataclasses.dataclass(frozen=True)
class SearchResult:
  front: tuple[Individual, ...]  # Pareto front, simplest first
  best: Individual | None  # lowest nmse + parsimony * complexity; None: nothing finite
  generations: int
  evaluated: int  # formulas of this dataset refined and scored (its start included)


def affine(prefix: Sequence) -> list:
  """prefix written c0 + c1 * f unless it already has that top (linear scaling: LM fits
  c0 and c1 exactly in its first step)."""
  prefix = list(prefix)
  if (len(prefix) > 4 and prefix[0] == "add" and not isinstance(prefix[1], str)
      and prefix[2] == "mul" and not isinstance(prefix[3], str)):
    return prefix
  return ["add", 0.0, "mul", 1.0] + prefix


def reweighted(prefix: Sequence, factors: Sequence[float]) -> list:
  """prefix with each x_k read as factors[k] * x_k (factors > 0: feature scales, so that
  sqrt(f x) = sqrt(f) sqrt(x) may fold). In a product of powers under a
  coefficient, c * x_0^2 / x_1, the factors fold into c (c f_0^2 / f_1); elsewhere the
  factor multiplies the weight c of mul(c, x_k) or mul(x_k, c) where there is one, else
  mul(factor, x_k) is written. Folding keeps a monomial seed as short as it was: a
  weight per variable pushed 9 of the Feynman problems' best regression seeds past the
  search's length limit."""
  out = list(prefix)
  folded = _folded_variables(prefix)
  for at, powers in folded.items():
    out[at] = float(out[at] * np.prod([factors[_VARIABLES[prefix[i]]]**a for i, a in powers]))
  done = {i for powers in folded.values() for i, _ in powers}
  unweighted = []
  for i, token in enumerate(prefix):
    k = _VARIABLES.get(token) if token.__class__ is str else None
    if k is None or i in done:
      continue
    at = _weight_at(prefix, i)
    if at is None:
      unweighted.append(i)
    else:
      out[at] = float(out[at] * factors[k])
  for i in reversed(unweighted):
    out[i:i + 1] = ["mul", float(factors[_VARIABLES[prefix[i]]]), prefix[i]]
  return out


_EXPONENT_OF = {"pow2": 2.0, "pow3": 3.0, "inv": -1.0, "sqrt": 0.5}


def _folded_variables(prefix: Sequence) -> dict[int, list[tuple[int, float]]]:
  """{index of c: [(index of x_k, its exponent)]} for each mul(c, P) whose P is a
  product of powers of variables (mul, pow2, pow3, inv, sqrt over variables alone)."""
  folded = {}
  for j in range(len(prefix) - 2):
    if (prefix[j] == "mul" and prefix[j + 1].__class__ is not str
        and prefix[j + 2].__class__ is str):
      powers = []
      if _product_of_powers(prefix, j + 2, 1.0, powers) is not None:
        folded[j + 1] = powers
  return folded


def _product_of_powers(prefix: Sequence, i: int, exponent: float,
                       powers: list) -> int | None:
  """The end of the subtree at i if it is a product of powers of variables (appending
  (index, exponent) of each variable to powers), else None."""
  token = prefix[i]
  if token.__class__ is not str:
    return None
  if token in _VARIABLES:
    powers.append((i, exponent))
    return i + 1
  if token in _EXPONENT_OF:
    return _product_of_powers(prefix, i + 1, exponent * _EXPONENT_OF[token], powers)
  if token == "mul":
    end = _product_of_powers(prefix, i + 1, exponent, powers)
    return None if end is None else _product_of_powers(prefix, end, exponent, powers)
  return None


def _weight_at(prefix: Sequence, i: int) -> int | None:
  """The index of the constant c of mul(c, x) or mul(x, c) around the variable at i."""
  if i >= 2 and prefix[i - 2] == "mul" and prefix[i - 1].__class__ is not str:
    return i - 1
  if (i >= 1 and prefix[i - 1] == "mul" and i + 1 < len(prefix)
      and prefix[i + 1].__class__ is not str):
    return i + 1
  return None


def returned_complexity(prefix: Sequence) -> int:
  """Nodes of the formula the user gets once its features are unscaled (reweighted):
  2 more per variable that neither folds into a coefficient nor has a weight."""
  done = {i for powers in _folded_variables(prefix).values() for i, _ in powers}
  return len(prefix) + 2 * sum(1 for i, t in enumerate(prefix)
                               if t.__class__ is str and t in _VARIABLES
                               and i not in done and _weight_at(prefix, i) is None)


_VARIABLES = {name: k for k, name in enumerate(operators.VARIABLES)}


class _Points:
  """One dataset's points as the search fits them, and the way back to its units."""

  def __init__(self, x, y):
    # The search fits standardised y: float32 then holds any finite y (|y| up to 1e308),
    # and every formula's affine top maps back exactly (unstandardise).
    self.shift = float(np.mean(y))
    self.scale = float(np.std(y))
    if not np.isfinite(self.scale) or self.scale == 0:
      self.scale = 1.0
    with np.errstate(over="ignore"):
      rms = np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=0))
    self.x_scale = np.where(np.isfinite(rms) & (rms > 0), rms, 1.0)
    self.x, self.y = x / self.x_scale, (y - self.shift) / self.scale
    self.variance = float(np.var(self.y)) or 1.0

  def standardise(self, prefix: Sequence) -> list:
    """A formula for the dataset's y written for the standardised y the search fits:
    its affine top c0 + c1 * f becomes (c0 - shift) / scale + (c1 / scale) * f, so a
    seed that fits y starts as well fitted (4 LM iterations from c0 = 0, c1 = 1 left
    an exact power law at R2 0.75)."""
    prefix = affine(prefix)
    prefix[1] = (prefix[1] - self.shift) / self.scale
    prefix[3] = prefix[3] / self.scale
    return prefix

  def unstandardise(self, individual: Individual | None) -> Individual | None:
    """The individual for the dataset's own x and y: its affine top c0 + c1 * f
    becomes shift + scale * c0 + scale * c1 * f, and x_k / r_k a weight (nmse is
    scale-free)."""
    if individual is None:
      return None
    prefix = list(individual.prefix)
    prefix[1] = self.shift + self.scale * prefix[1]
    prefix[3] = self.scale * prefix[3]
    # complexity stays: returned_complexity counted this reweighted length already.
    prefix = reweighted(prefix, 1.0 / self.x_scale)
    return dataclasses.replace(individual, prefix=tuple(prefix))


class _Island:
  """One population on one dataset's points: its start, population, front and random
  stream."""

  def __init__(self, points: _Points, seeds, rng: random.Random, config: SearchConfig):
    self.points = points
    self.x, self.y, self.variance = points.x, points.y, points.variance
    self.rng = rng
    dim = points.x.shape[1]
    self.variation = variation.Variation(config.variation, dim, rng)
    limit = config.variation.max_length
    usable = [points.standardise(reweighted(s, points.x_scale)) for s in seeds
              if not _reads_missing(s, dim)]
    usable = [s for s in usable if len(s) <= limit]
    own = max(1, config.population - round(config.random_share * config.population))
    unique = _distinct(usable)[:own]
    self.start = unique + [self.variation.random_formula()
                           for _ in range(config.population - len(unique))]
    self.population: list[Individual] = []
    self.front: list[Individual] = []


def _distinct(items: list, prefix_of=lambda item: item) -> list:
  """The items without repeated formulas (_key of prefix_of(item)), first occurrences
  in order."""
  seen, out = set(), []
  for item in items:
    key = _key(prefix_of(item))
    if key not in seen:
      seen.add(key)
      out.append(item)
  return out


def _reads_missing(prefix, dim: int) -> bool:
  used = expressions.variables_used(list(prefix))
  return bool(used) and max(used) >= dim


def _key(prefix) -> tuple:
  """Formulas with equal tokens are one. (Keeping one formula per skeleton instead
  was measured no better: 47-48% vs 50-53% R2 > 0.99 on 58 Feynman problems.)"""
  return tuple(prefix)


def run(seeds: Sequence[Sequence], xs: Sequence[np.ndarray], ys: Sequence[np.ndarray],
        streams: Sequence[int], config: SearchConfig, seconds: float | None,
        deadline: float | None = None) -> list[SearchResult]:
  """Searches for every dataset i from seeds[i] (its proposals, best first) on (xs[i],
  ys[i]) (the dataset's own features; at most max_points rows are used), for `seconds` of wall
  clock in all, compilation left out (stopping before a generation that would overrun
  it, or at `deadline`, a time.perf_counter value that counts everything) or
  config.generations generations."""
  clock = compile_cache.Stopwatch()

  def out_of_time(next_generation: float) -> bool:
    if deadline is not None and time.perf_counter() + next_generation > deadline:
      return True
    return not config.generations and clock.seconds() + next_generation > (seconds or 0.0)

  per_island = dataclasses.replace(
      config, islands=1, population=config.population // config.islands,
      offspring=config.offspring // config.islands,
      refined=max(1, config.refined // config.islands))
  points = [_Points(np.asarray(x)[:config.max_points], np.asarray(y)[:config.max_points])
            for x, y in zip(xs, ys)]
  regressed = [sparse_seeds.seeds(np.asarray(x)[:config.max_points],
                                  np.asarray(y)[:config.max_points], config.regression_seeds)
               if config.regression_seeds else [] for x, y in zip(xs, ys)]
  # Island 0 of each dataset starts from its seeds, island 1 from the regression seeds,
  # all from random formulas beside them (string seeds: distinct streams, the same on
  # every platform).
  start = lambda j, proposed, found: ((list(proposed) if j == 0 else [])
                                      + (found if j == min(1, config.islands - 1) else []))
  islands = [_Island(p, start(j, s, found), random.Random(
      stream ^ config.seed if j == 0 else f"{stream}/{config.seed}/{j}"), per_island)
             for p, s, found, stream in zip(points, seeds, regressed, streams)
             for j in range(config.islands)]
  # The start's evaluation predicts a generation's time (the regression seeds above
  # are a one-time cost).
  start_clock = compile_cache.Stopwatch()
  evaluated = _evaluate(islands, [d.start for d in islands], per_island)
  for d, individuals in zip(islands, evaluated):
    d.population = _select(individuals, per_island, d.rng)
    d.front = _pareto(individuals, config.archive)
  counts = [len(d.start) for d in islands]
  generations = 0
  last = start_clock.seconds()
  while True:
    if generations == config.generations > 0 or out_of_time(last):
      break
    generation_clock = compile_cache.Stopwatch()
    # An island none of whose formulas evaluates finitely has no parents and sits the
    # search out.
    children = [[d.variation.offspring(
        list(_tournament(d.population, per_island, d.rng).prefix),
        list(_tournament(d.population, per_island, d.rng).prefix))
                 for _ in range(per_island.offspring)] if d.population else []
                for d in islands]
    # Screening pays when most offspring are left out; with refined == offspring every
    # one is refined (as Operon does), and scoring them first would be wasted.
    chosen = (_screen(islands, children, per_island)
              if per_island.refined < per_island.offspring else children)
    evaluated = _evaluate(islands, chosen, per_island)
    for d, individuals in zip(islands, evaluated):
      d.population = _select(d.population + individuals, per_island, d.rng)
      d.front = _pareto(d.front + individuals, config.archive)
    counts = [n + len(c) for n, c in zip(counts, chosen)]
    generations += 1
    last = generation_clock.seconds()
  results = []
  for k, p in enumerate(points):
    own = islands[k * config.islands:(k + 1) * config.islands]
    front = _pareto([i for d in own for i in d.front], config.archive)
    best = min((i for d in own for i in d.population), key=lambda i: _fitness(i, config),
               default=None)
    results.append(SearchResult(tuple(p.unstandardise(i) for i in front),
                                p.unstandardise(best), generations,
                                sum(counts[k * config.islands:(k + 1) * config.islands])))
  return results


def _screen(datasets: list[_Island], children: list[list], config: SearchConfig
            ) -> list[list]:
  """Per dataset, its `refined` best offspring (affine at the top) by error after the
  best linear scaling plus the parsimony price, scored in one batched call."""
  flat = [(k, affine(c)) for k, cs in enumerate(children) for c in cs]
  with jax.enable_x64(False):
    scores = selection.score([c for _, c in flat], [k for k, _ in flat],
                             [d.x for d in datasets], [d.y for d in datasets], scaled=True,
                             check=False)
  ranked = [[] for _ in datasets]
  for (k, prefix), r2 in zip(flat, scores.r2):
    if np.isfinite(r2):
      ranked[k].append((1 - r2 + config.parsimony * returned_complexity(prefix), prefix))
  return [[p for _, p in sorted(r, key=lambda e: e[0])[:config.refined]] for r in ranked]


def _evaluate(datasets: list[_Island], prefixes: list[list], config: SearchConfig
              ) -> list[list[Individual]]:
  """LM-refines every dataset's formulas (linear scaling at the top) in one call;
  returns the finite ones with their refined constants, in their datasets' units of
  error (MSE / var y)."""
  flat = [(k, affine(p)) for k, ps in enumerate(prefixes) for p in ps]
  if not flat:
    return [[] for _ in datasets]
  with jax.enable_x64(False):
    result = refine.refine([p for _, p in flat], [datasets[k].x for k, _ in flat],
                           [datasets[k].y for k, _ in flat],
                           refine.RefineConfig(max_iters=config.lm_iters,
                                               max_points=config.max_points, polish_iters=0,
                                               seed=config.seed), check=False)
  out = [[] for _ in datasets]
  for (k, _), prefix, loss, constants in zip(flat, result.prefixes, result.loss,
                                             result.constants):
    if np.isfinite(loss) and np.all(np.isfinite(constants)):
      out[k].append(Individual(tuple(prefix), float(loss) / datasets[k].variance,
                               returned_complexity(prefix)))
  return out


def _fitness(individual: Individual, config: SearchConfig) -> float:
  return individual.nmse + config.parsimony * individual.complexity


def _tournament(population: list[Individual], config: SearchConfig,
                rng: random.Random) -> Individual:
  contenders = rng.sample(population, min(config.tournament, len(population)))
  return min(contenders, key=lambda i: _fitness(i, config))


def _select(pool: list[Individual], config: SearchConfig, rng: random.Random
            ) -> list[Individual]:
  """The next population: distinct formulas, the elite by fitness, then tournament
  winners (without replacement) from the rest."""
  unique = _distinct(sorted(pool, key=lambda i: _fitness(i, config)), lambda i: i.prefix)
  if len(unique) <= config.population:
    return unique
  chosen, rest = unique[:config.elite], unique[config.elite:]
  while len(chosen) < config.population:
    contenders = rng.sample(range(len(rest)), min(config.tournament, len(rest)))
    winner = min(contenders)  # rest is sorted by fitness: the lowest index wins
    chosen.append(rest.pop(winner))
  return chosen


def _pareto(pool: list[Individual], size: int) -> list[Individual]:
  """The formulas no other beats in both complexity and error, simplest first; at most
  `size`, spread over the complexities when there are more."""
  front = []
  for individual in sorted(pool, key=lambda i: (i.complexity, i.nmse)):
    if not front or individual.nmse < front[-1].nmse * (1 - 1e-9) - 1e-15:
      front.append(individual)
  if len(front) > size:
    keep = sorted({round(k * (len(front) - 1) / (size - 1)) for k in range(size)})
    front = [front[k] for k in keep]
  return front

