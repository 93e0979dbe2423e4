"""Tidying found formulas: constants that do nothing removed, near-round ones rounded.

Refinement leaves traces that cost nodes and readability without buying accuracy:
`1.0*x1*y1 + 7.4e-17`, `sin(1.0000018*theta)`, `-1.2e-15*theta`. Each constant is
tried at 0 and at the nearest integer, half, third and quarter, the formula's other
constants refitted (a few Levenberg-Marquardt steps on the dataset's first 512
points; rounded ones stay as they are); a change is kept when the formula's error
there stays within a tolerance of the untidied (refitted) formula's, and the tree is
then folded (x + 0 -> x, 1 * x -> x, constant subtrees and nested weights merged). On
Strogatz at 2 s per dataset, tidying took the median SRBench size of the returned
formulas from 18 to 13 and SRBench's symbolic-solution rate from 25% to 57%
(BENCHMARKS.md).

With noise in y a fit's error is mostly the noise, and every constant the search
attached (the intercept of its linear scaling, sin(1.0009 theta)) has fitted a little
of it: 0.9946 T kb mob + 0.223 for T kb mob. Removing a constant whose true value is 0
raises the squared error summed over n points by sigma^2 times a chi-squared(1)
variable, below 4 sigma^2 95% of the time; with the formula's own mean squared error
for sigma^2, that is a relative rise of 4 / n (`noise_allowance`), which a change may
also use. Without the refit, dropping the intercept would leave the slope where the
intercept had pulled it, and the rise would exceed it; the search fitted its
constants on 128 points, the refit on 512 pins them down further. On 117 Feynman
problems at noise 0.1 this took SRBench's symbolic-solution rate from 27% to 39% (15
won, 1 lost) at the same R2 > 0.99 rate, and at noise 0 changed the R2 rates not at
all and solved one more (BENCHMARKS.md).

All formulas of all datasets are tried together: each round refits, batched over
every formula, each constant's first proposal (0), then the next proposal of each
constant whose earlier ones failed, and so on (a constant keeps its first acceptable
proposal, so later ones need no refit once one passed); then for each formula its
acceptable changes together, and the cheapest 2, 4, 8, 16 of them, keeps the largest
group that is still acceptable (else the one change that saves the most nodes), and
stops when no formula changes. Refits run in one refine call per constant bucket,
since a call pads every formula to its most constants. On 253 formulas from 64
in-domain problems with two residual rounds (long sums, up to 97 constants) this
refitted the same changes with the same outcome (2 formulas differ in a last digit)
in 89 s instead of 215 s (BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from sr_jax import compiler, expressions, operators, refine, selection

Node = expressions.Node


@dataclasses.dataclass(frozen=True)
class TidyConfig:
  # A change is kept when 1 - R2 stays within relative_tolerance of the untidied
  # formula's 1 - R2, or within absolute_tolerance of it (an exact fit has 1 - R2 near
  # 1e-30: the absolute part lets it shed a 1e-16 term, and the refits' 4 LM steps
  # stop near 1e-19). Not more: where y spans decades, R2 hardly sees its small
  # values, and 1e-9 let an exact fit shed a constant and a weighted variable that
  # were 100% of y where it is small (in-domain problem 97: E2E's Acc_tau counts such
  # points; 1e-15 still rounded them 0.4% off there; BENCHMARKS.md).
  relative_tolerance: float = 1e-3
  absolute_tolerance: float = 1e-18
  # ... or within noise_allowance / n of it, n the points judged on (see above).
  noise_allowance: float = 4.0
  refit_iters: int = 4  # LM iterations refitting a change's other constants; 0: none
  max_points: int = 512  # points (the dataset's first) the changes are judged on
  max_rounds: int = 8


def fold(prefix: expressions.Prefix) -> list:
  """prefix with identities removed and constant arithmetic done: x + 0, x - 0, x / 1
  -> x; 0 * x, 0 / x -> 0; op(constants) -> its value (when finite); the constants of
  a chain of products (of sums) multiplied (added) into one, which leaves out a product
  of 1 (a sum of 0); c * (d + a f + g) -> c d + (c a) f + c g when at most one term has
  no constant factor (it costs no node), so that constants merge. The search writes c0 + c1 * (c2 * x0) * (c3 * x1), where all constants may
  cancel out. Evaluated where the original is finite, the folded formula gives the
  same value (up to rounding)."""
  return _fold(expressions.parse(prefix)).prefix()


def _fold(node: Node) -> Node:
  if not node.children:
    return node
  children = tuple(_fold(c) for c in node.children)
  op = node.value
  if all(c.is_constant for c in children):
    with np.errstate(all="ignore"):
      value = float(operators.OPERATORS[op].np_fn(*(np.float64(c.value) for c in children)))
    if math.isfinite(value):
      return Node(value)
  if op in ("add", "mul"):
    return _fold_chain(op, children)
  if len(children) == 1:
    return Node(op, children)
  a, b = children
  zero = lambda n: n.is_constant and n.value == 0
  if op == "sub" and zero(b):
    return a
  if op == "div" and b.is_constant and b.value == 1:
    return a
  if op == "div" and zero(a):
    return Node(0.0)
  return Node(op, (a, b))


def _fold_chain(op: str, children: tuple[Node, ...]) -> Node:
  """A chain of add (mul) nodes with its constants summed (multiplied) into one, in
  front."""
  terms = [term for child in children for term in _chain_terms(child, op)]
  neutral = 0.0 if op == "add" else 1.0
  constant = neutral
  for term in terms:
    if term.is_constant:
      constant = constant + term.value if op == "add" else constant * term.value
  rest = [term for term in terms if not term.is_constant]
  if op == "mul" and (constant == 0 or not rest):
    return Node(constant)
  if op == "mul" and len(rest) == 1 and rest[0].value == "add" and constant != 1:
    distributed = _distributed(constant, rest[0])
    if distributed is not None:
      return _fold(distributed)
  if not rest:
    return Node(constant)
  chain = rest[-1]
  for term in reversed(rest[:-1]):
    chain = Node(op, (term, chain))
  return chain if constant == neutral else Node(op, (Node(constant), chain))


def _chain_terms(node: Node, op: str) -> list[Node]:
  """The operands of a chain of `op` nodes rooted at node, left to right."""
  terms, stack = [], [node]
  while stack:
    node = stack.pop()
    if node.value == op:
      stack.extend(reversed(node.children))
    else:
      terms.append(node)
  return terms


def _distributed(constant: float, sum_node: Node) -> Node | None:
  """constant * (t1 + t2 + ...) written constant * t1 + constant * t2 + ..., with the
  constant merged into each term's own constant factor; None when more than one term
  has none (then it would cost nodes)."""
  terms = _chain_terms(sum_node, "add")
  scaled, bare = [], 0
  for term in terms:
    factor, rest = (term, None) if term.is_constant else (
        _constant_and_rest(term) if term.value == "mul" else (None, None))
    if factor is None:
      bare += 1
      scaled.append(Node("mul", (Node(constant), term)))
    elif rest is None:
      scaled.append(Node(constant * factor.value))
    else:
      scaled.append(Node("mul", (Node(constant * factor.value), rest)))
  if bare > 1:
    return None
  out = scaled[-1]
  for term in reversed(scaled[:-1]):
    out = Node("add", (term, out))
  return out


def _constant_and_rest(node: Node) -> tuple[Node | None, Node | None]:
  a, b = node.children
  if a.is_constant:
    return a, b
  if b.is_constant:
    return b, a
  return None, None


def _proposals(value: float) -> list[float]:
  """Round values a constant may take instead: 0, then the nearest integer, half,
  third and quarter (expressions.SMALL_DENOMINATORS, which the model string writes
  exactly) within 10% (or 0.1 for small constants), the closest first. A constant
  that is already such a fraction may only go to 0: one round value for another
  (1/4 -> 1/3, the refit making up the difference) would never end."""
  if expressions.is_small_fraction(value):
    return [0.0] if value != 0 else []
  near = {round(q * value) / q for q in expressions.SMALL_DENOMINATORS}
  near = sorted((v for v in near if abs(v - value) <= 0.1 * max(abs(value), 1.0) and v),
                key=lambda v: abs(v - value))
  return [0.0] + near


def tidy(prefixes: Sequence[expressions.Prefix], dataset_ids: Sequence[int],
         xs: Sequence[np.ndarray], ys: Sequence[np.ndarray],
         config: TidyConfig = TidyConfig()) -> list[list]:
  """Each prefixes[i] tidied on dataset dataset_ids[i] (xs[j]: N_j x D_j, ys[j]: N_j,
  finite): never longer, and never worse than the tolerance allows. A formula that is
  not finite on its points is returned as given."""
  xs = [np.asarray(x)[:config.max_points] for x in xs]
  ys = [np.asarray(y)[:config.max_points] for y in ys]
  variance = np.array([max(float(np.var(y)), 1e-300) for y in ys])
  if not prefixes:
    return []
  # Changes are never longer than the formulas: all calls share one program shape, in
  # chunks of 64 (a chunk size per call compiled for seconds each, cold).
  shape = (max(map(compiler.num_operator_nodes, prefixes)),
           max(map(expressions.num_constants, prefixes)), 64)
  score = lambda tried, ids: selection.score(tried, ids, xs, ys, shape=shape).mse
  start = score(prefixes, dataset_ids) / variance[list(dataset_ids)]
  current = [fold(p) if np.isfinite(e) else list(p) for p, e in zip(prefixes, start)]
  if config.refit_iters:  # the changes are refitted on these points: so is the start
    refitted, mse = _refitted(prefixes, list(dataset_ids), xs, ys, config)
    refit = mse / variance[list(dataset_ids)]
    better = np.isfinite(start) & (refit < start)
    current = [fold(r) if b else c for r, c, b in zip(refitted, current, better)]
    start = np.where(better, refit, start)
  allowance = np.maximum(config.relative_tolerance,
                         config.noise_allowance / np.array([max(len(y), 1) for y in ys]))
  limit = np.maximum(start * (1 + allowance[list(dataset_ids)]),
                     start + config.absolute_tolerance)

  def judged(tried: list[list], owners: list[int]) -> tuple[list[list], np.ndarray]:
    """tried (changes of formulas owners[k]), refitted, and their error (MSE / var y)
    over their formula's limit: acceptable at most 1."""
    ids = [dataset_ids[i] for i in owners]
    if config.refit_iters:
      tried, mse = _refitted(tried, ids, xs, ys, config)
    else:
      mse = score(tried, ids)
    return tried, mse / variance[ids] / limit[owners]

  active = [i for i in range(len(current)) if np.isfinite(start[i])]
  for _ in range(config.max_rounds):
    # Changes are scored unfolded (the same values), and only acceptable ones folded.
    # A position keeps its first acceptable proposal (0 first, then the nearest round
    # values), so the proposals are tried in stages: stage s refits the s-th proposal
    # of the positions whose earlier ones all failed. Most constants of a long sum can
    # go to 0, so this refits a fraction of all proposals.
    pending = {(i, position): _proposals(token)
               for i in active for position, token in enumerate(current[i])
               if token.__class__ is not str}
    pending = {key: values for key, values in pending.items() if values}
    # formula -> position -> (excess, value, refitted change) of its first acceptable
    # proposal
    best: dict[int, dict[int, tuple[float, float, list]]] = {}
    while pending:
      keys = list(pending)
      tried_all, excess = judged(
          [_replaced(current[i], {position: pending[i, position][0]}) for i, position in keys],
          [i for i, _ in keys])
      for (i, position), tried, ratio in zip(keys, tried_all, excess):
        value, *later = pending.pop((i, position))
        if ratio <= 1:
          best.setdefault(i, {})[position] = (ratio, value, tried)
        elif later:
          pending[i, position] = later
    if not best:
      break
    # Each change costs some error, so all of them together may not pass: also try
    # the cheapest 2, 4, 8, ... together, and keep the most that pass (else the single
    # change that saves the most nodes), instead of one change per round.
    groups = []  # (formula, number of changes, prefix)
    for i, chosen in best.items():
      cheapest = sorted(chosen, key=lambda position: (chosen[position][0], position))
      sizes = sorted({len(cheapest)} | {k for k in (2, 4, 8, 16) if k < len(cheapest)})
      groups += [(i, k, _replaced(current[i], {p: chosen[p][1] for p in cheapest[:k]}))
                 for k in sizes if k > 1]
    tried_groups, group_excess = judged([g[2] for g in groups], [g[0] for g in groups])
    most = {}
    for (i, k, _), tried, ratio in zip(groups, tried_groups, group_excess):
      if ratio <= 1 and k > most.get(i, (0,))[0]:
        most[i] = (k, tried)
    for i, chosen in best.items():
      current[i] = fold(most[i][1] if i in most else chosen[_shortest(chosen)][2])
    active = list(best)
  return current


def _shortest(chosen: dict[int, tuple[float, float, list]]) -> int:
  """The position whose acceptable change folds shortest (the first among equals).
  The formula is folded already, so only a neutral value (0, 1) lets fold shorten it:
  folding every acceptable change took a quarter of tidying on long sums."""
  length = lambda position: len(fold(chosen[position][2]) if chosen[position][1] in (0.0, 1.0)
                                else chosen[position][2])
  return min(sorted(chosen), key=length)


def _replaced(prefix: list, values: dict[int, float]) -> list:
  return [values.get(k, token) for k, token in enumerate(prefix)]


def _refitted(prefixes: list[list], ids: list[int], xs, ys, config: TidyConfig
              ) -> tuple[list[list], np.ndarray]:
  """prefixes[k] with its constants refitted on dataset ids[k], except those written
  as exact fractions (the rounded ones; 0 included), and their MSE there (inf where
  not finite). Levenberg-Marquardt only takes steps that lower the error, so a
  refitted formula is never worse than the given one."""
  refitted, mse = [None] * len(prefixes), np.full(len(prefixes), np.inf)
  refine_config = refine.RefineConfig(max_iters=config.refit_iters,
                                      max_points=config.max_points, polish_iters=0)
  # One call per constant bucket: a call pads every formula to its most constants, and
  # LM's normal equations cost K^2 per point.
  classes: dict[int, list[int]] = {}
  for k, prefix in enumerate(prefixes):
    classes.setdefault(compiler.bucket(max(expressions.num_constants(prefix), 1),
                                       compiler.CALL_CONSTANT_BUCKETS), []).append(k)
  for members in classes.values():
    group = [prefixes[k] for k in members]
    held = [np.array([expressions.is_small_fraction(t) for t in p if t.__class__ is not str],
                     bool) for p in group]
    result = refine.refine(group, [xs[ids[k]] for k in members], [ys[ids[k]] for k in members],
                           refine_config, check=False, held=held)
    for k, prefix, loss in zip(members, result.prefixes, result.loss):
      refitted[k] = prefix
      mse[k] = loss if np.isfinite(loss) else np.inf
  return refitted, mse
