"""Seed formulas from sparse linear regression on a library of terms (SINDy, FFX).

Many laws are a few terms, each a simple function of one or two features, with
coefficients: 3 x - 2 x y - x^2, 0.5 sin(x - y) - sin(x), x - cos(y) / x. For a search
that finds structure by mutation such sums are slow to assemble term by term, but
least squares finds the coefficients of any set of terms at once, so a greedy choice
of terms (forward selection by orthogonal least squares, with a beam and exchanges)
tries hundreds of structures in a few matrix products. Three kinds of seeds, all on
the dataset's own features:

- sums: y ~ b + sum_j w_j t_j, the terms t_j chosen from a library: the monomials up
  to degree 3 (SINDy's), and a wider one (powers, inverse, sqrt, log, exp, sin, cos of
  each feature; products of two features' terms; sin and cos of differences of two
  features); the best subsets of each size are seeds;
- ratios: y ~ (b + sum_j w_j p_j) / (1 + sum_k v_k q_k), linear in the coefficients
  once multiplied out (y = b + sum_j w_j p_j - sum_k v_k y q_k), so the same greedy
  regression over the library and the library times y finds it (rational regression);
- a power law: where every feature is positive and y keeps one sign, log |y| linear
  in log x_i gives y ~ c prod_i x_i^a_i, exponents rounded to halves;
- sums of monomials: y ~ b + sum_j w_j m_j, each m_j a product of up to four features'
  powers -2, -1, 1 or 2 (c^2 k / (G r^2) + H^2 / G, a physics law's usual shape, which
  neither the pairs of the wide library nor one power law holds);
- a power law times a function of a group: y ~ c prod_i x_i^a_i g(s m)^p, m a product
  of features' powers, g exp, sin, cos, 1 + u, exp(u) - 1 or cosh (group_seeds.py:
  n0 exp(-m g x / (k T)), m0 / sqrt(1 - v^2 / c^2)).

These are guesses, not answers: they seed the search (search.SearchConfig.regression_seeds),
which refits their constants and varies them like any other seed. On noisy data the
ratio regression is biased (y is on both sides), which the search's LM then corrects.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from sr_jax import group_seeds

Prefix = list

# Terms of one feature, written as prefixes of "x": (name, prefix, function, needs).
# needs: "positive" (the feature must be > 0), "nonzero", or None.
_UNARY = (
    ("x", ["x"], lambda x: x, None),
    ("x^2", ["pow2", "x"], np.square, None),
    ("x^3", ["pow3", "x"], lambda x: x**3, None),
    ("1/x", ["inv", "x"], lambda x: 1 / x, "nonzero"),
    ("1/x^2", ["inv", "pow2", "x"], lambda x: 1 / x**2, "nonzero"),
    ("sqrt x", ["sqrt", "x"], np.sqrt, "positive"),
    ("log x", ["log", "x"], np.log, "positive"),
    ("exp x", ["exp", "x"], np.exp, None),
    ("sin x", ["sin", "x"], np.sin, None),
    ("cos x", ["cos", "x"], np.cos, None),
)
# Terms that multiply in pairs across two features.
_PAIRED = ("x", "x^2", "1/x", "sin x", "cos x")


@dataclasses.dataclass(frozen=True)
class SparseSeedConfig:
  max_terms: int = 4  # terms of a sum (the greedy path's length)
  max_ratio_terms: int = 6  # terms of numerator and denominator together
  max_columns: int = 4000  # library size cap (pairs are dropped first beyond it)
  beam: int = 8  # subsets kept per size in the forward selection
  # Monomials of up to this many features, fewer while their count exceeds
  # max_monomials (4 factors fit 6 features: 5,384 columns; 3 factors fit 9).
  max_factors: int = 4
  max_monomials: int = 6000
  per_size: int = 2  # seeds written per size
  group_seeds: int = 4  # power laws times a function of a group (0: none)

  def __post_init__(self):
    if min(self.max_terms, self.max_ratio_terms, self.max_columns, self.beam,
           self.per_size, self.max_factors, self.max_monomials) < 1 or self.group_seeds < 0:
      raise ValueError(f"sparse seed sizes must be positive: {self}")


def _substitute(prefix: Prefix, variable: str) -> Prefix:
  return [variable if token == "x" else token for token in prefix]


def library(x_NxD: np.ndarray, max_columns: int = 4000) -> tuple[list[Prefix], np.ndarray]:
  """The terms (prefixes over x_0 .. x_{D-1}) and their values N x L, without the
  terms that are not finite on every point or constant."""
  x_NxD = np.asarray(x_NxD, np.float64)
  features = _varying(x_NxD)
  terms, columns = [], []
  singles = {}  # (feature, name) -> (prefix, values)
  with np.errstate(all="ignore"):
    for i in features:
      x = x_NxD[:, i]
      for name, prefix, fn, needs in _UNARY:
        if needs == "positive" and not np.all(x > 0):
          continue
        if needs == "nonzero" and not np.all(x != 0):
          continue
        singles[i, name] = (_substitute(prefix, f"x_{i}"), fn(x))
    terms += [p for p, _ in singles.values()]
    columns += [v for _, v in singles.values()]
    for i, j in itertools.combinations(features, 2):
      difference = x_NxD[:, i] - x_NxD[:, j]
      for name, fn in (("sin", np.sin), ("cos", np.cos)):
        terms.append([name, "sub", f"x_{i}", f"x_{j}"])
        columns.append(fn(difference))
    for (i, j), a, b in itertools.product(
        itertools.combinations(features, 2), _PAIRED, _PAIRED):
      if len(terms) >= max_columns:
        break
      if (i, a) in singles and (j, b) in singles:
        terms.append(["mul"] + singles[i, a][0] + singles[j, b][0])
        columns.append(singles[i, a][1] * singles[j, b][1])
  return _finite(terms, columns, len(x_NxD))


def polynomial_library(x_NxD: np.ndarray, degree: int = 3,
                       max_columns: int = 4000) -> tuple[list[Prefix], np.ndarray]:
  """The monomials of total degree 1 .. degree (SINDy's default library): on data
  where the features move together (a trajectory), the full library holds products
  such as x^2 y that mimic x, and the subset search is easier among monomials alone."""
  x_NxD = np.asarray(x_NxD, np.float64)
  terms, columns = [], []
  for total in range(1, degree + 1):
    for combination in itertools.combinations_with_replacement(_varying(x_NxD), total):
      if len(terms) >= max_columns:
        break
      counts = {i: combination.count(i) for i in sorted(set(combination))}
      factors = [group_seeds.power_of([f"x_{i}"], n) for i, n in counts.items()]
      terms.append(["mul"] * (len(factors) - 1) + [t for f in factors for t in f])
      columns.append(np.prod([x_NxD[:, i]**n for i, n in counts.items()], axis=0))
  return _finite(terms, columns, len(x_NxD))


def monomial_library(x_NxD: np.ndarray, max_factors: int = 4,
                     max_monomials: int = 6000) -> tuple[list[Prefix], np.ndarray]:
  """The products of 1 .. k distinct features, each to a power in -2, -1, 1, 2, with k
  the largest up to max_factors whose count of products stays within max_monomials
  (the count grows as C(D, k) 4^k). Products with a zero feature in a denominator are
  left out (not finite)."""
  x_NxD = np.asarray(x_NxD, np.float64)
  features = _varying(x_NxD)
  count = lambda k: sum(math.comb(len(features), j) * 4**j for j in range(1, k + 1))
  factors = max_factors
  while factors > 1 and count(factors) > max_monomials:
    factors -= 1
  return group_seeds.monomials(x_NxD, features, max_monomials, factors, wide_factors=factors)


def _varying(x_NxD: np.ndarray) -> list[int]:
  """The features that are not constant (a constant one only repeats other terms)."""
  return [i for i in range(x_NxD.shape[1]) if np.ptp(x_NxD[:, i]) > 0]


def _finite(terms: list[Prefix], columns: list[np.ndarray], num_points: int):
  """The terms whose values are finite on every point and not constant, and their
  values N x L."""
  if not columns:
    return [], np.zeros((num_points, 0))
  with np.errstate(all="ignore"):
    values = np.stack(columns, axis=1)
    keep = np.all(np.isfinite(values), axis=0) & (np.ptp(values, axis=0) > 0)
  return [t for t, k in zip(terms, keep) if k], values[:, keep]


class _Regression:
  """Least squares of a target on subsets of a library's columns (centred, unit
  length: the intercept is implicit)."""

  def __init__(self, columns_NxL: np.ndarray, target_N: np.ndarray):
    self.mean_L = columns_NxL.mean(axis=0)
    centred = columns_NxL - self.mean_L
    self.norm_L = np.linalg.norm(centred, axis=0)
    self.usable_L = self.norm_L > 1e-12 * max(1.0, float(self.norm_L.max(initial=0.0)))
    self.unit_NxL = centred / np.where(self.usable_L, self.norm_L, 1.0)
    self.target_mean = float(target_N.mean())
    self.target = target_N - self.target_mean

  def fit(self, chosen: tuple) -> tuple:
    """A subset: (residual sum of squares, columns, orthonormal basis N x k,
    residual)."""
    basis_NxK, _ = np.linalg.qr(self.unit_NxL[:, list(chosen)])
    residual = self.target - basis_NxK @ (basis_NxK.T @ self.target)
    return float(residual @ residual), tuple(chosen), basis_NxK, residual

  def gains(self, subset: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Per column: how much adding it lowers the subset's residual sum of squares
    (-1: not addable), and the length of its part orthogonal to the subset. The
    residual is orthogonal to the subset's basis B, so a column u's orthogonal part
    u - B B'u meets it as u does, and has squared length 1 - |B'u|^2 (u is unit
    length): no N x L array is formed, which matters for libraries of thousands of
    columns."""
    _, chosen, basis_NxK, residual = subset
    length_L = np.sqrt(np.maximum(
        1.0 - np.sum((basis_NxK.T @ self.unit_NxL)**2, axis=0), 0.0))
    open_L = self.usable_L & (length_L > 1e-6)
    open_L[list(chosen)] = False
    gain_L = np.where(open_L, (residual @ self.unit_NxL)**2
                      / np.where(open_L, length_L, 1.0)**2, -1.0)
    return gain_L, length_L

  def orthogonal(self, subset: tuple, column: int) -> np.ndarray:
    """The part of a column orthogonal to the subset's basis."""
    basis_NxK = subset[2]
    u = self.unit_NxL[:, column]
    return u - basis_NxK @ (basis_NxK.T @ u)

  def swapped(self, subset: tuple, passes: int = 3) -> tuple:
    """The subset after exchanges: each member in turn replaced by the column that
    best completes the others, while that lowers the residual (forward selection
    alone keeps an early pick that later ones make wrong)."""
    for _ in range(passes):
      before = subset[0]
      for m in range(len(subset[1])):
        others = self.fit(subset[1][:m] + subset[1][m + 1:])
        gain_L = self.gains(others)[0]
        j = int(np.argmax(gain_L))
        if gain_L[j] >= 0 and others[0] - gain_L[j] < subset[0] * (1 - 1e-9):
          subset = self.fit(others[1] + (j,))
      if subset[0] >= before * (1 - 1e-9):
        break
    return subset

  def solution(self, chosen: tuple) -> tuple[list[int], np.ndarray, float]:
    """(columns, their weights in the library's units, intercept)."""
    columns = list(chosen)
    weights, *_ = np.linalg.lstsq(self.unit_NxL[:, columns], self.target, rcond=None)
    weights = weights / self.norm_L[columns]
    return columns, weights, self.target_mean - float(self.mean_L[columns] @ weights)


def _subset_path(columns_NxL: np.ndarray, target_N: np.ndarray, max_terms: int,
                 beam: int, per_size: int):
  """Forward selection by orthogonal least squares with a beam: each step extends
  every kept subset by the columns that lower its residual most after refitting (the
  column's part orthogonal to the subset, not its raw correlation, which picks
  x^2 y over x when both correlate with 3 x - 2 x y - x^2), keeps the `beam` best
  subsets and improves the best ones by exchanges. Yields (columns, weights,
  intercept) of the `per_size` best subsets of each size; stops after a size that
  fits exactly."""
  regression = _Regression(columns_NxL, target_N)
  target = regression.target
  floor = 1e-20 * float(target @ target)
  subsets = [(float(target @ target), (), np.zeros((len(target), 0)), target)]
  for _ in range(min(max_terms, int(regression.usable_L.sum()))):
    grown = {}
    for subset in subsets:
      _, chosen, basis_NxK, residual = subset
      gain_L, length_L = regression.gains(subset)
      for j in np.argsort(-gain_L)[:beam]:
        key = tuple(sorted(chosen + (int(j),)))
        if gain_L[j] < 0 or key in grown:
          continue
        direction = regression.orthogonal(subset, int(j)) / length_L[j]
        rest = residual - direction * (direction @ residual)
        grown[key] = (float(rest @ rest), chosen + (int(j),), (basis_NxK, direction), rest)
    if not grown:
      return
    subsets = [(rss, chosen, np.column_stack(basis), rest) for rss, chosen, basis, rest
               in sorted(grown.values(), key=lambda s: s[0])[:beam]]
    subsets[:per_size] = [regression.swapped(s) for s in subsets[:per_size]]
    subsets.sort(key=lambda s: s[0])
    for _, chosen, _, _ in subsets[:per_size]:
      yield regression.solution(chosen)
    if subsets[0][0] <= floor:
      return


def _chain(op: str, parts: list[Prefix]) -> Prefix:
  """op(p_1, op(p_2, ... p_n)) as a prefix."""
  out: Prefix = []
  for k, part in enumerate(parts):
    if k < len(parts) - 1:
      out.append(op)
    out += part
  return out


def _sum(intercept: float, weights, terms: list[Prefix]) -> Prefix:
  """intercept + sum_j weights_j * terms_j as a prefix."""
  out: Prefix = ["add", float(intercept)] if intercept else []
  out += _chain("add", [["mul", float(w)] + term for w, term in zip(weights, terms)])
  return out or [0.0]


def _power_law(x_NxD: np.ndarray, y_N: np.ndarray) -> Prefix | None:
  """sign * c * prod_i x_i ** a_i from least squares on logs, exponents rounded to
  halves (those rounded to 0 dropped); None where logs do not apply."""
  if not (np.all(x_NxD > 0) and (np.all(y_N > 0) or np.all(y_N < 0))):
    return None
  design = np.column_stack([np.ones(len(y_N)), np.log(x_NxD)])
  solution, *_ = np.linalg.lstsq(design, np.log(np.abs(y_N)), rcond=None)
  exponents = np.round(solution[1:] * 2) / 2
  # The constant for the rounded exponents (a log-space mean).
  log_c = np.mean(np.log(np.abs(y_N)) - np.log(x_NxD) @ exponents)
  if not np.isfinite(log_c) or abs(log_c) > 700:
    return None
  factors = [group_seeds.power_of([f"x_{i}"], a) for i, a in enumerate(exponents) if a != 0]
  if not factors:
    return None
  return ["mul", float(np.sign(y_N[0]) * np.exp(log_c))] + _chain("mul", factors)


def _sums(terms: list[Prefix], columns_NxL: np.ndarray, y_N: np.ndarray,
          config: SparseSeedConfig) -> list[Prefix]:
  """b + sum_j w_j t_j for the best subsets of each size of the library's terms."""
  return [_sum(intercept, weights, [terms[j] for j in chosen])
          for chosen, weights, intercept in _subset_path(
              columns_NxL, y_N, config.max_terms, config.beam, config.per_size)]


def _sums_and_ratios(terms: list[Prefix], columns_NxL: np.ndarray, y_N: np.ndarray,
                     config: SparseSeedConfig) -> tuple[list[Prefix], list[Prefix]]:
  sums = _sums(terms, columns_NxL, y_N, config)
  # Ratios: the library, then the library times y (the denominator's terms).
  both_NxL = np.concatenate([columns_NxL, columns_NxL * y_N[:, None]], axis=1)
  ratios = []
  for chosen, weights, intercept in _subset_path(both_NxL, y_N, config.max_ratio_terms,
                                                 config.beam, config.per_size):
    top = [(w, terms[j]) for w, j in zip(weights, chosen) if j < len(terms)]
    bottom = [(-w, terms[j - len(terms)]) for w, j in zip(weights, chosen)
              if j >= len(terms)]
    if bottom:  # else a plain sum, found above
      numerator = _sum(intercept, *zip(*top)) if top else [float(intercept)]
      ratios.append(["div"] + numerator + _sum(1.0, *zip(*bottom)))
  return sums, ratios


def seeds(x_NxD: np.ndarray, y_N: np.ndarray,
          config: SparseSeedConfig = SparseSeedConfig()) -> list[Prefix]:
  """Seed formulas for (x, y): the kinds (sums and ratios over each library, the
  power law) in turns, fewest terms first; empty when x or y is not finite or y is
  constant (there is nothing to regress)."""
  x_NxD = np.asarray(x_NxD, np.float64)
  y_N = np.asarray(y_N, np.float64).reshape(-1)
  if (x_NxD.ndim != 2 or len(y_N) != len(x_NxD) or len(y_N) < 2
      or not np.all(np.isfinite(x_NxD)) or not np.all(np.isfinite(y_N))
      or np.ptp(y_N) == 0):
    return []
  # Regressed on standardised y (y times a term stays finite for any finite y), and
  # mapped back by an affine top, the form the search writes every formula in.
  magnitude = float(np.max(np.abs(y_N)))  # > 0: y is not constant
  shift, scale = float(np.mean(y_N)), magnitude * float(np.std(y_N / magnitude))
  standard_N = (y_N - shift) / scale
  kinds = []  # each kind's seeds, fewest terms first
  for terms, columns_NxL in (polynomial_library(x_NxD, max_columns=config.max_columns),
                             library(x_NxD, config.max_columns)):
    if terms:
      kinds += [[["add", shift, "mul", scale] + seed for seed in kind]
                for kind in _sums_and_ratios(terms, columns_NxL, standard_N, config)]
  terms, columns_NxL = monomial_library(x_NxD, config.max_factors, config.max_monomials)
  if terms:
    kinds.append([["add", shift, "mul", scale] + seed
                  for seed in _sums(terms, columns_NxL, standard_N, config)])
  power_law = _power_law(x_NxD, y_N)
  kinds.append([power_law] if power_law is not None else [])
  kinds.append(group_seeds.seeds(x_NxD, y_N, config.group_seeds))
  # Taken in turns, so that a population with room for only some of them gets the
  # simplest of every kind.
  return [seed for turn in itertools.zip_longest(*kinds) for seed in turn
          if seed is not None]
