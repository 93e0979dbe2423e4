"""Benchmark suites as lists of `Problem`s: `load(suite, **options)`.

Suites:
- "feynman" (100 AI-Feynman equations) and "feynman_bonus" (its 20 bonus ones), named
  as in PMLB (feynman_I_6_2a, feynman_test_1, ...), sampled uniformly in the published
  ranges with a fixed seed (100,000 rows like PMLB by default). SRBench drops three of
  them (arcsin/arccos domain issues): they are kept but flagged `srbench_excluded`.
- "strogatz": the 14 two-state ODE right-hand sides (strogatz_bacres1, ...) on 400
  rows: RK4 trajectories from the official initial states, or the 14 official
  d_<name>.txt files read from `path=` (not shipped: 309 KB).
- "in_domain": a fixed, versioned validation set from sr_jax's own generator,
  stratified by input dimension and number of unary operators, with extrapolation
  points in its metadata.
- any folder of CSV/TSV files: one problem per file, target = the last column or the
  column named `target=`.

Formulas are sympy-parsable in the feature names with `metrics.parse_expression`
(which maps names such as I, gamma or beta to variables, as SRBench does). The package
data under sr_jax/assets/ holds the Feynman tables; nothing here reads outside the
package unless a path is given.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import importlib.resources
import math
import os
import re
import zlib
from typing import Callable, Sequence

import numpy as np
import sympy

from sr_jax import expressions, generator, metrics

SUITES = ("feynman", "feynman_bonus", "strogatz", "in_domain")
SRBENCH_EXCLUDED = frozenset({"feynman_I_26_2", "feynman_I_30_5", "feynman_test_10"})
# Bump when the in-domain set changes (its selection rule, or generator semantics):
# the version is in every problem's name, so results on different sets never mix.
IN_DOMAIN_VERSION = 1
DATA_EXTENSIONS = {".csv": ",", ".tsv": "\t", ".csv.gz": ",", ".tsv.gz": "\t"}


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
  """One regression problem: data, ground truth if known, and suite-specific facts.

  metadata always has "dimension", "num_rows" and "srbench_excluded"; known formulas
  add "size" (SRBench's model size of the formula) and "num_operators" (its internal
  sympy nodes). In-domain problems carry "extrapolation": {sigma: (x, y)}.
  """

  name: str
  suite: str
  x: np.ndarray  # N x D, float64
  y: np.ndarray  # N, float64
  feature_names: tuple[str, ...]
  formula: str | None
  metadata: dict


def load(suite: str, **options) -> list[Problem]:
  """The problems of a named suite (see SUITES) or of a folder of CSV/TSV files."""
  loaders: dict[str, Callable[..., list[Problem]]] = {
      "feynman": feynman, "feynman_bonus": feynman_bonus, "strogatz": strogatz,
      "in_domain": in_domain}
  if suite in loaders:
    return loaders[suite](**options)
  if os.path.isdir(suite):
    return folder(suite, **options)
  raise ValueError(f"unknown suite {suite!r}: choose one of {', '.join(SUITES)}, or give "
                   "an existing folder of CSV/TSV files")


def _formula_facts(expr: sympy.Expr) -> dict:
  return {"size": metrics.model_size(expr),
          "num_operators": sum(1 for node in sympy.preorder_traversal(expr) if node.args)}


def _compile(formula: str, feature_names: Sequence[str]) -> Callable[[np.ndarray], np.ndarray]:
  """A numpy function of x (... x D) -> y (...), float64, for a formula with exact pi."""
  expr = metrics.parse_expression(formula, feature_names, keep_pi=True)
  symbols = [sympy.Symbol(name) for name in feature_names]
  function = sympy.lambdify(symbols, expr, modules="numpy", dummify=True)

  def evaluate(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
      y = function(*(x[..., i] for i in range(x.shape[-1])))
    return np.broadcast_to(np.asarray(y, dtype=np.float64), x.shape[:-1]).copy()

  return evaluate


# ---------------------------------------------------------------------------------
# Feynman

# The AI-Feynman tables use numpy's function names and `~` for unary minus.
_FEYNMAN_RENAMES = {r"\barcsin\b": "asin", r"\barccos\b": "acos", r"\bln\b": "log",
                    "~": "-"}


def _feynman_formula(text: str) -> str:
  for pattern, replacement in _FEYNMAN_RENAMES.items():
    text = re.sub(pattern, replacement, text)
  return text


def _feynman_table(asset: str) -> list[dict[str, str]]:
  with importlib.resources.files("sr_jax").joinpath("assets", asset).open() as f:
    return list(csv.DictReader(f))


def _feynman(asset: str, suite: str, num_rows: int, seed: int,
             names: Sequence[str] | None) -> list[Problem]:
  if num_rows < 1:
    raise ValueError(f"num_rows must be >= 1, got {num_rows}")
  rows = _feynman_table(asset)
  all_names = ["feynman_" + row["Filename"].replace(".", "_") for row in rows]
  if names is not None:
    unknown = sorted(set(names) - set(all_names))
    if unknown:
      raise ValueError(f"unknown {suite} problems {unknown}; known: {all_names}")
  problems = []
  for name, row in zip(all_names, rows):
    if names is not None and name not in names:
      continue
    # The "# variables" column undercounts some bonus equations: trust the names.
    feature_names = tuple(row[f"v{i}_name"] for i in range(1, 11) if row[f"v{i}_name"])
    ranges = [[float(row[f"v{i}_low"]), float(row[f"v{i}_high"])]
              for i in range(1, len(feature_names) + 1)]
    formula = _feynman_formula(row["Formula"])
    low, high = np.array(ranges).T
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    x = low + (high - low) * rng.random((num_rows, len(feature_names)))
    y = _compile(formula, feature_names)(x)
    if not np.all(np.isfinite(y)):
      raise ValueError(f"{name}: {formula} is not finite on its sampling ranges")
    metadata = {"dimension": len(feature_names), "num_rows": num_rows,
                "srbench_excluded": name in SRBENCH_EXCLUDED, "output": row["Output"],
                "source_formula": row["Formula"], "ranges": ranges, "seed": seed,
                **_formula_facts(metrics.parse_expression(formula, feature_names))}
    if "Name" in row:
      metadata["description"] = row["Name"]
    problems.append(Problem(name, suite, x, y, feature_names, formula, metadata))
  return problems


def feynman(num_rows: int = 100_000, seed: int = 0,
            names: Sequence[str] | None = None) -> list[Problem]:
  """The 100 AI-Feynman equations (or those in `names`), num_rows uniform samples each."""
  return _feynman("feynman_equations.csv", "feynman", num_rows, seed, names)


def feynman_bonus(num_rows: int = 100_000, seed: int = 0,
                  names: Sequence[str] | None = None) -> list[Problem]:
  """The 20 AI-Feynman bonus equations (feynman_test_1..20)."""
  return _feynman("feynman_bonus_equations.csv", "feynman_bonus", num_rows, seed, names)


# ---------------------------------------------------------------------------------
# Strogatz

# PMLB's ground truth: dx/dt for <system>1 and dy/dt for <system>2.
STROGATZ_FORMULAS = {
    "bacres1": "20 - x - x*y/(1 + 0.5*x**2)",
    "bacres2": "10 - x*y/(1 + 0.5*x**2)",
    "barmag1": "0.5*sin(x - y) - sin(x)",
    "barmag2": "0.5*sin(y - x) - sin(y)",
    "glider1": "-0.05*x**2 - sin(y)",
    "glider2": "x - cos(y)/x",
    "lv1": "3*x - 2*x*y - x**2",
    "lv2": "2*y - x*y - y**2",
    "predprey1": "x*(4 - x - y/(1 + x))",
    "predprey2": "y*(x/(1 + x) - 0.075*y)",
    "shearflow1": "cot(y)*cos(x)",
    "shearflow2": "(cos(y)**2 + 0.1*sin(y)**2)*sin(x)",
    "vdp1": "10*(y - (1/3)*(x**3 - x))",
    "vdp2": "-(1/10)*x",
}
# The first state of each of the four 100-row trajectories in the official files.
STROGATZ_INITIAL_STATES = {
    "bacres": ((9.01502740318998, 12.8015055992981), (3.48540194192317, 13.0700662237925),
               (5.81391692721814, 9.936214985790382), (5.80195472817425, 9.79266054660331)),
    "barmag": ((4.26461875246862, 4.76102165511013), (4.66923900501058, 2.46443504621593),
               (4.1184890487447, 1.07559768164234), (4.43621840643643, 0.200011672644315)),
    "glider": ((5.603272452842469, 1.8551204022395), (2.46553213651184, 0.872156816895428),
               (5.35766048171177, -1.32283061311855), (4.51350174933492, 0.346591870877256)),
    "lv": ((1.0, 3.0), (4.0, 1.0), (8.0, 2.0), (3.0, 3.0)),
    "predprey": ((4.86070775030401, 11.5069474930959), (6.58096270030409, 11.4336027281584),
                 (5.75343217591914, 8.77853103772431), (5.80475500292961, 11.6491125241285)),
    "shearflow": ((-1.40163422326322, -1.42574462518204),
                  (-2.53129567286853, 1.01617273721913),
                  (1.22414434129968, -0.5745989297785539),
                  (2.82882856222944, -1.462580773342)),
    "vdp": ((0.35730070503580397, 0.21669793236700896),
            (0.677280004283046, 0.7360147137408308),
            (0.0100185705081634, 0.3559143141937729),
            (0.23995458300156305, 0.9276087313632232)),
}
STROGATZ_FEATURES = ("x", "y")
STROGATZ_TIME_STEP = 0.1  # between rows, as in the official files
STROGATZ_SAMPLES_PER_TRAJECTORY = 100
STROGATZ_RK4_SUBSTEPS = 10  # states within 3e-6 of a 10x finer RK4 (stiffest: lv)


def _integrate(system: str) -> np.ndarray:
  """States along the four trajectories (trajectory-major), one row per time step.

  The official rows are not an accurate solution (their x column is one forward-Euler
  step of dt per row, so the LV trajectory from (8, 2) jumps to (0.8, ...)); ours
  follow the true trajectories from the same initial states.
  """
  rhs_functions = [_compile(STROGATZ_FORMULAS[system + derivative], STROGATZ_FEATURES)
                   for derivative in "12"]

  def rhs(states):  # T x 2 -> T x 2
    return np.stack([f(states) for f in rhs_functions], axis=-1)

  states = np.array(STROGATZ_INITIAL_STATES[system], dtype=np.float64)
  samples = np.empty((len(states), STROGATZ_SAMPLES_PER_TRAJECTORY, 2))
  h = STROGATZ_TIME_STEP / STROGATZ_RK4_SUBSTEPS
  for step in range(STROGATZ_SAMPLES_PER_TRAJECTORY):
    samples[:, step] = states
    for _ in range(STROGATZ_RK4_SUBSTEPS):
      k1 = rhs(states)
      k2 = rhs(states + h / 2 * k1)
      k3 = rhs(states + h / 2 * k2)
      k4 = rhs(states + h * k3)
      states = states + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
  return samples.reshape(-1, 2)


def _read_official_strogatz(path: str, name: str) -> tuple[np.ndarray, np.ndarray]:
  file = os.path.join(path, f"d_{name}.txt")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"no official Strogatz file {file!r}: the folder must hold "
                            "the 14 d_<system><1|2>.txt files (label,x,y)")
  header, rows = _read_table(file, ",")
  if header != ["label", "x", "y"]:
    raise ValueError(f"{file}: expected the columns label,x,y, got {header}")
  return rows[:, 1:], rows[:, 0]


def strogatz(path: str | None = None) -> list[Problem]:
  """The 14 Strogatz problems, 400 rows each: the official files under `path`, or RK4
  trajectories (dt = 0.1 between rows) from the official initial states."""
  problems = []
  trajectories = {}
  for name, formula in STROGATZ_FORMULAS.items():
    system = name[:-1]
    if path is None:
      if system not in trajectories:
        trajectories[system] = _integrate(system)
      x = trajectories[system]
      y = _compile(formula, STROGATZ_FEATURES)(x)
    else:
      x, y = _read_official_strogatz(path, name)
    metadata = {"dimension": 2, "num_rows": len(y), "srbench_excluded": False,
                "system": system, "derivative": "dx/dt" if name[-1] == "1" else "dy/dt",
                "source": "official" if path is not None else "rk4",
                **_formula_facts(metrics.parse_expression(formula, STROGATZ_FEATURES))}
    problems.append(Problem(f"strogatz_{name}", "strogatz", x, y, STROGATZ_FEATURES,
                            formula, metadata))
  return problems


# ---------------------------------------------------------------------------------
# in-domain


def in_domain(size: int = 1000, seed: int = 0,
              config: generator.GeneratorConfig | None = None,
              max_candidates_per_problem: int = 200) -> list[Problem]:
  """`size` test samples of the generator, equally many per (D, unary count) cell.

  Candidates generate(config, seed, i, test=True) for i = 0, 1, ... fill their cell
  until it holds its quota; quotas are size // cells each, plus one for the first
  size % cells cells of a seeded permutation. So the set depends only on (size, seed,
  config, IN_DOMAIN_VERSION) and the generator's code.
  """
  config = config or generator.GeneratorConfig()
  if size < 1:
    raise ValueError(f"size must be >= 1, got {size}")
  cells = [(dim, unary)
           for dim in range(config.min_input_dimension, config.max_input_dimension + 1)
           for unary in range(config.min_unary_ops, config.max_unary_ops + 1)]
  order = np.random.default_rng([seed, IN_DOMAIN_VERSION]).permutation(len(cells))
  quota = {cells[c]: size // len(cells) + (rank < size % len(cells))
           for rank, c in enumerate(order)}
  chosen = []
  max_candidates = max_candidates_per_problem * size
  for index in range(max_candidates):
    sample = generator.generate(config, seed, index, test=True)
    cell = (sample.input_dimension, sample.num_unary_ops)
    if quota.get(cell, 0) > 0:
      quota[cell] -= 1
      chosen.append((index, sample))
      if len(chosen) == size:
        break
  else:
    missing = {cell: left for cell, left in quota.items() if left}
    raise ValueError(f"after {max_candidates} candidates, (dimension, unary ops) cells "
                     f"still lack samples: {missing}; this config may never produce "
                     "them (or raise max_candidates_per_problem)")
  problems = []
  for rank, (index, sample) in enumerate(chosen):
    feature_names = tuple(f"x_{i}" for i in range(sample.input_dimension))
    # Plain symbols, as parse_expression reads them back (model_string's real symbols
    # would cost a second sympy pass here).
    expr = expressions.to_sympy(sample.prefix, [sympy.Symbol(n) for n in feature_names])
    metadata = {"dimension": sample.input_dimension, "num_rows": sample.num_points,
                "srbench_excluded": False, "version": IN_DOMAIN_VERSION, "seed": seed,
                "generator_index": index, "prefix": list(sample.prefix),
                "num_unary_ops": sample.num_unary_ops,
                "num_binary_ops": sample.num_binary_ops,
                "num_constants": sample.num_constants,
                **_formula_facts(expr),
                "extrapolation": {sigma: (x, y) for sigma, x, y in sample.predictions}}
    problems.append(Problem(f"in_domain_v{IN_DOMAIN_VERSION}_{rank:05d}", "in_domain",
                            sample.x, sample.y, feature_names, str(expr), metadata))
  return problems


# ---------------------------------------------------------------------------------
# user folders


def _read_table(file: str, delimiter: str) -> tuple[list[str], np.ndarray]:
  """(header, float64 rows) of a delimited text file, with errors naming the cell."""
  opener = gzip.open if file.endswith(".gz") else open
  with opener(file, "rt", newline="") as f:
    lines = [(number, fields) for number, fields
             in enumerate(csv.reader(f, delimiter=delimiter), start=1) if fields]
  if not lines:
    raise ValueError(f"{file}: empty file (expected a header row, then data rows)")
  header, body = [name.strip() for name in lines[0][1]], lines[1:]
  if not body:
    raise ValueError(f"{file}: a header but no data rows")
  if len(set(header)) != len(header):
    raise ValueError(f"{file}: duplicate column names in {header}")
  rows = np.empty((len(body), len(header)))
  for row, (number, fields) in enumerate(body):
    if len(fields) != len(header):
      raise ValueError(f"{file}, line {number}: {len(fields)} fields, but the header "
                       f"has {len(header)}")
    for column, text in enumerate(fields):
      try:
        value = float(text)
      except ValueError:
        raise ValueError(f"{file}, line {number}, column {header[column]!r}: {text!r} "
                         "is not a number") from None
      if not math.isfinite(value):
        raise ValueError(f"{file}, line {number}, column {header[column]!r}: "
                         f"non-finite value {text!r}")
      rows[row, column] = value
  return header, rows


def folder(path: str, target: str | None = None) -> list[Problem]:
  """One problem per .csv/.tsv(.gz) file in `path` (sorted by name), with a header row.

  The target is the column named `target`, or the last column. Problems are named by
  their file names without the extension; the suite is `path`.
  """
  if not os.path.isdir(path):
    raise ValueError(f"{path!r} is not a folder")
  files = sorted(f for f in os.listdir(path)
                 if any(f.endswith(ext) for ext in DATA_EXTENSIONS))
  if not files:
    raise ValueError(f"no data files in {path!r}: expected names ending in "
                     f"{', '.join(DATA_EXTENSIONS)}")
  problems = []
  for file in files:
    extension = max((ext for ext in DATA_EXTENSIONS if file.endswith(ext)), key=len)
    header, rows = _read_table(os.path.join(path, file), DATA_EXTENSIONS[extension])
    if len(header) < 2:
      raise ValueError(f"{os.path.join(path, file)}: need at least one feature column "
                       f"and a target column, got {header}")
    if target is None:
      target_column = len(header) - 1
    elif target in header:
      target_column = header.index(target)
    else:
      raise ValueError(f"{os.path.join(path, file)}: no target column {target!r} "
                       f"among {header}")
    features = [c for c in range(len(header)) if c != target_column]
    metadata = {"dimension": len(features), "num_rows": len(rows),
                "srbench_excluded": False, "file": file, "target": header[target_column]}
    problems.append(Problem(file[:-len(extension)], path, rows[:, features],
                            rows[:, target_column], tuple(header[c] for c in features),
                            None, metadata))
  return problems
