"""Seed formulas c * prod_i x_i^a_i * g(s * m)^p: a power law times a function of a group.

Physics laws often read a dimensionless group m, a product of powers of features
(m g x / (k T), v^2 / c^2, k d, h w / (k T)), through one nonlinear function, under a
power-law prefactor: n0 exp(-m g x / (k T)), m0 / sqrt(1 - v^2 / c^2), U sin^2(k d / 2),
h w / (exp(h w / (k T)) - 1). Mutation seldom assembles such a law (the search returned
rational approximations of all of these on SRBench's Feynman problems), but on logs it
is linear once g and s are fixed:

    log|y| = log c + sum_i a_i log x_i + p log|g(s m)|

so for every monomial m, function g and scale s on a grid, one least-squares fit
gives the exponents a and p, and all of them share one projection (the part of each
column outside the span of 1 and the log x_i). exp needs no grid: log exp(s m) = s m
is a column whose coefficient is s. The fits are weighted by y^2: with noise of a
fixed size in y, log|y| is off by about noise / |y|. The best candidates, exponents
rounded to halves, are ranked again on y itself (the search fits an affine top, so by
correlation) and the best few that fit seed the search (search.py), whose
Levenberg-Marquardt then fits c and s.
"""

from __future__ import annotations

import itertools

import numpy as np

Prefix = list

_MAX_MONOMIALS = 400  # groups read through the gridded functions
_MAX_EXP_MONOMIALS = 2000  # groups read through exp (one column each, no grid)
_REFITTED = 32  # best candidates of each kind by the log fit whose s is refined
_WRITTEN = 8  # best candidates of each kind then written as formulas and ranked on y
_MAX_POWER = 4  # |p| beyond it fits logs, not laws (cosh(0.02 m)^63.5)
# Seeds whose 1 - R2 on y exceeds this are left out: they only take places in the
# search's start (on 150 of E2E's generated problems, whose laws are seldom of this
# form, ungated seeds measured R2 > 0.99 at 2 s 70.7% -> 68.7%; 111 of the 150 have
# no seed below 0.05). Not lower: SRBench's noise 0.1 leaves 1 - R2 of 0.01 and more
# to the true law (of 67 Feynman problems where a seed reached test R2 > 0.99 at that
# noise, 59 pass 0.05, 6 pass 0.01; BENCHMARKS.md).
_MAX_ERROR = 0.05

# The gridded functions: name -> (values of g(u), prefix of g with "u" for s * m and
# "-u" for -s * m, the grid of s * max|m|). Trigonometric scales span 1/8 to 4 periods
# over the data in quarter octaves; 1 + s m spans s m in (-1, 10], where it stays
# positive for m of one sign. Each candidate's s is then refined on finer grids.
_PERIODS = 2 * np.pi * 2.0 ** (np.arange(-12, 9) / 4)
_OCTAVES = 2.0 ** (np.arange(-4, 9) / 2)
_GRIDDED = {
    "sin": (np.sin, ["sin", "u"], _PERIODS),
    "cos": (np.cos, ["cos", "u"], _PERIODS),
    "1+u": (lambda u: 1 + u, ["add", 1.0, "u"],
            np.array([-0.95, -0.8, -0.6, -0.4, -0.2, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0])),
    "exp-1": (np.expm1, ["sub", "exp", "u", 1.0], np.concatenate([-_OCTAVES, _OCTAVES])),
    "cosh": (lambda u: np.exp(u) + np.exp(-u), ["add", "exp", "u", "exp", "-u"], _OCTAVES),
}


def power_of(base: Prefix, exponent: float) -> Prefix:
  """base ** exponent as a prefix, with the unary operators where they apply."""
  named = {1.0: [], 2.0: ["pow2"], 3.0: ["pow3"], 0.5: ["sqrt"], -1.0: ["inv"],
           -2.0: ["inv", "pow2"], -3.0: ["inv", "pow3"], -0.5: ["inv", "sqrt"]}
  if float(exponent) in named:
    return named[float(exponent)] + list(base)
  return ["pow"] + list(base) + [float(exponent)]


def _product(factors: list[Prefix]) -> Prefix:
  return ["mul"] * (len(factors) - 1) + [t for f in factors for t in f]


def monomials(x_NxD: np.ndarray, features: list[int], max_count: int,
              max_factors: int | None = None, wide_factors: int = 2
              ) -> tuple[list[Prefix], np.ndarray]:
  """The first max_count products of 1 .. max_factors (default: all) distinct
  features, fewest first: up to wide_factors features to the powers -2, -1, 1, 2,
  more to -1 and 1. Returns the prefixes and values N x M of those finite and not
  constant on the points."""
  terms, columns, count = [], [], 0
  with np.errstate(all="ignore"):
    powers = {(i, a): x_NxD[:, i] ** a for i in features for a in (-2, -1, 1, 2)}
    for k in range(1, min(max_factors or len(features), len(features)) + 1):
      for chosen in itertools.combinations(features, k):
        for exponents in itertools.product((-2, -1, 1, 2) if k <= wide_factors else (-1, 1),
                                           repeat=k):
          if count >= max_count:
            break
          count += 1
          values = np.prod([powers[i, a] for i, a in zip(chosen, exponents)], axis=0)
          if np.all(np.isfinite(values)) and np.ptp(values) > 0:
            terms.append(_product([power_of([f"x_{i}"], a)
                                   for i, a in zip(chosen, exponents)]))
            columns.append(values)
  return terms, (np.stack(columns, axis=1) if columns else np.zeros((len(x_NxD), 0)))


def seeds(x_NxD: np.ndarray, y_N: np.ndarray, count: int = 4) -> list[Prefix]:
  """Up to `count` seeds c * prod x_i^a_i * g(s m)^p for (x, y) that fit it (1 - R2
  of an affine map at most _MAX_ERROR), best first; empty where y is not finite or is
  zero somewhere (no logs) or too few points remain."""
  x_NxD = np.asarray(x_NxD, np.float64)
  y_N = np.asarray(y_N, np.float64).reshape(-1)
  if (count < 1 or x_NxD.ndim != 2 or len(y_N) != len(x_NxD)
      or not np.all(np.isfinite(x_NxD)) or not np.all(np.isfinite(y_N))
      or np.any(y_N == 0) or np.ptp(y_N) == 0):
    return []
  varying = [i for i in range(x_NxD.shape[1]) if np.ptp(x_NxD[:, i]) > 0]
  positive = [i for i in varying if np.all(x_NxD[:, i] > 0)]  # the prefactor's
  design_NxP = np.column_stack([np.ones(len(y_N))] + [np.log(x_NxD[:, i]) for i in positive])
  if not varying or len(y_N) < design_NxP.shape[1] + 3:
    return []
  # Least squares weighted by y^2: with noise of a fixed size in y, log|y| is off by
  # about noise / |y|, so points near y = 0 would otherwise decide the fit.
  # Fitted to y / max|y| (squares of any finite y stay finite), c scaled back after.
  magnitude = float(np.max(np.abs(y_N)))
  y_N = y_N / magnitude
  weight_N = np.abs(y_N) / np.sqrt(np.mean(np.square(y_N)))
  weighted_NxP = design_NxP * weight_N[:, None]
  pinv_PxN = np.linalg.pinv(weighted_NxP)

  def outside(columns_NxC):  # non-finite columns (log 0) come out NaN and are skipped
    with np.errstate(all="ignore"):
      weighted = columns_NxC * weight_N[:, None]
      return weighted - weighted_NxP @ (pinv_PxN @ weighted)

  log_y = np.log(np.abs(y_N))
  rest_y = outside(log_y[:, None])[:, 0]

  candidates = []  # (residual sum of squares, kind, monomial index, s)
  exp_terms, exp_values = monomials(x_NxD, varying, _MAX_EXP_MONOMIALS)
  candidates += _ranked(rest_y, outside(exp_values), "exp", None)[:_WRITTEN]
  terms, values_NxM = monomials(x_NxD, varying, _MAX_MONOMIALS)
  scale_M = np.max(np.abs(values_NxM), axis=0) if values_NxM.size else np.zeros(0)
  for kind, (g, _, grid) in _GRIDDED.items():
    s_MxG = grid[None, :] / scale_M[:, None]
    best = _ranked(rest_y, outside(_log_abs(g, values_NxM[:, :, None] * s_MxG[None])),
                   kind, s_MxG)
    # Twice: each candidate's s on a finer grid around it, 1/16 of the last step apart.
    step = float(grid[1] / grid[0]) if grid[0] * grid[1] > 0 else 1.25
    for _ in range(2):
      if not best:
        break
      m_B = np.array([m for _, _, m, _ in best])
      s_BxF = np.array([s for _, _, _, s in best])[:, None] * step ** np.linspace(-1, 1, 33)
      best = _ranked(rest_y, outside(_log_abs(g, values_NxM[:, m_B, None] * s_BxF[None])),
                     kind, s_BxF, m_B)
      step = step ** (1 / 16)
    candidates += best[:_WRITTEN]

  written = []  # (1 - R2 on y, prefix)
  for _, kind, m, s in candidates:
    group = exp_terms[m] if kind == "exp" else terms[m]
    values = exp_values[:, m] if kind == "exp" else values_NxM[:, m]
    seed = _written(x_NxD, y_N, positive, weight_N, outside, kind, group, values, s)
    if seed is not None and np.isfinite(seed[1][1] * magnitude):
      seed[1][1] *= magnitude  # the prefix is ["mul", c, ...]
      written.append(seed)
  written.sort(key=lambda w: w[0])
  out, seen = [], set()
  for error, prefix in written:  # one of each law: constants that differ past 6 digits are one
    if error > _MAX_ERROR:
      break
    key = tuple(f"{t:.6g}" if isinstance(t, float) else t for t in prefix)
    if key not in seen:
      seen.add(key)
      out.append(prefix)
  return out[:count]


def _log_abs(g, u):
  """log|g(u)| as columns N x (the rest of u's axes, flattened)."""
  with np.errstate(all="ignore"):
    return np.log(np.abs(g(u))).reshape(len(u), -1)


def _ranked(rest_y: np.ndarray, rest_NxC: np.ndarray, kind: str, s_MxG, monomial_M=None):
  """(residual sum of squares, kind, monomial, s) of the _REFITTED best columns (column
  c is monomial_M[c // G] at s_MxG.flat[c]): the fit of rest_y by p times the column,
  both already outside the prefactor's span."""
  if rest_NxC.size == 0:
    return []
  with np.errstate(all="ignore"):
    norm_C = np.sum(rest_NxC ** 2, axis=0)
    dot_C = rest_y @ rest_NxC
    rss_C = rest_y @ rest_y - dot_C ** 2 / norm_C
  rss_C = np.where(np.isfinite(rss_C) & (norm_C > 1e-12 * len(rest_y)), rss_C, np.inf)
  best = np.argsort(rss_C, kind="stable")[:_REFITTED]
  out = []
  grid = 1 if s_MxG is None else s_MxG.shape[1]
  for c in best[np.isfinite(rss_C[best])]:
    m, k = divmod(int(c), grid)
    out.append((float(rss_C[c]), kind, m if monomial_M is None else int(monomial_M[m]),
                None if s_MxG is None else float(s_MxG[m, k])))
  return out


def _written(x_NxD, y_N, positive, weight_N, outside, kind, group, values, s):
  """(1 - R2 of the best affine map of the seed to y, the seed prefix) for one
  candidate: p rounded to a half, s refitted for that p (on logs, p and s trade
  off: log(1 + s m) is nearly s m for small s m), then the exponents refitted and
  rounded to halves; None where the rounded law is not finite on the points."""
  log_y = np.log(np.abs(y_N))
  if kind == "exp":
    log_g = values  # the coefficient is s
  else:
    log_g = _log_abs(_GRIDDED[kind][0], s * values[:, None])[:, 0]
  design = np.column_stack([np.ones(len(y_N))] + [np.log(x_NxD[:, i]) for i in positive]
                           + [log_g])
  solution, *_ = np.linalg.lstsq(design * weight_N[:, None], log_y * weight_N, rcond=None)
  p = float(solution[-1]) if kind == "exp" else float(np.round(solution[-1] * 2) / 2)
  if p == 0 or (kind != "exp" and abs(p) > _MAX_POWER):
    return None
  if kind != "exp":
    span = 2.0
    for _ in range(3):  # s on a grid around it, then on finer ones
      s_F = s * span ** np.linspace(-1, 1, 65)
      rest = outside(log_y[:, None] - p * _log_abs(_GRIDDED[kind][0],
                                                   values[:, None] * s_F[None]))
      rss_F = np.where(np.all(np.isfinite(rest), axis=0), np.sum(rest ** 2, axis=0), np.inf)
      if not np.isfinite(rss_F).any():
        return None
      k = int(np.argmin(rss_F))
      s, span = float(s_F[k]), span ** (1 / 32)
    if 0 < k < len(s_F) - 1 and np.all(np.isfinite(rss_F[k - 1:k + 2])):
      # The parabola through the last grid's best three points: s to ~1e-8, not 1e-3.
      left, middle, right = rss_F[k - 1:k + 2]
      curvature = left - 2 * middle + right
      if curvature > 0:
        s *= span ** (0.5 * (left - right) / curvature)  # span: the last grid's step
    log_g = _log_abs(_GRIDDED[kind][0], s * values[:, None])[:, 0]
    solution, *_ = np.linalg.lstsq(design[:, :-1] * weight_N[:, None],
                                   (log_y - p * log_g) * weight_N, rcond=None)
    solution = np.append(solution, p)
  exponents = np.round(solution[1:-1] * 2) / 2
  with np.errstate(all="ignore"):
    if kind == "exp":
      g_N = np.exp(p * values)
      function = ["exp", "mul", p] + group
    else:
      g_N = _GRIDDED[kind][0](s * values) ** p
      inner = {"u": ["mul", s] + group, "-u": ["mul", -s] + group}
      function = power_of(
          [t for token in _GRIDDED[kind][1] for t in inner.get(token, [token])], p)
    law_N = np.prod([x_NxD[:, i] ** a for i, a in zip(positive, exponents)], axis=0) * g_N
  # c by least squares on y (the sign comes with it); 1 - R2 after an affine map.
  with np.errstate(all="ignore"):
    c = float(law_N @ y_N / (law_N @ law_N))
    law_N, y_N = law_N - law_N.mean(), y_N - y_N.mean()
    correlation = float(law_N @ y_N / np.sqrt((law_N @ law_N) * (y_N @ y_N)))
  if not (np.all(np.isfinite(law_N)) and np.isfinite(c) and c != 0
          and np.isfinite(correlation)):
    return None
  factors = [power_of([f"x_{i}"], a) for i, a in zip(positive, exponents) if a != 0]
  return 1.0 - correlation ** 2, ["mul", c] + _product(factors + [function])
