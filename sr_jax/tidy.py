"""Tidying found formulas: constants that do nothing removed, near-round ones rounded.

Refinement leaves traces that cost nodes and readability without buying accuracy:
`1.0*x1*y1 + 7.4e-17`, `sin(1.0000018*theta)`, `-1.2e-15*theta`. Each constant is
tried at 0 and at the nearest integer and half; a change is kept when the formula's
error on its dataset stays within a tolerance of the untidied formula's, and the tree
is then folded (x + 0 -> x, 1 * x -> x, constant subtrees and nested weights merged).
On Strogatz at 2 s per dataset, tidying took the median SRBench size of the returned
formulas from 18 to 13 and SRBench's symbolic-solution rate from 25% to 57%
(BENCHMARKS.md).

All formulas of all datasets are tried together: each round scores every single change
of every formula in one batched selection.score call, keeps for each formula all its
acceptable changes at once when their combination is still acceptable (else the one
that saves the most nodes), and stops when no formula changes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from sr_jax import compiler, expressions, operators, selection

Node = expressions.Node


@dataclasses.dataclass(frozen=True)
class TidyConfig:
  # A change is kept when 1 - R2 stays within relative_tolerance of the untidied
  # formula's 1 - R2, or within absolute_tolerance of it (an exact fit has 1 - R2 near
  # 1e-30: the absolute part lets it shed a 1e-16 term).
  relative_tolerance: float = 1e-3
  absolute_tolerance: float = 1e-9
  max_points: int = 128  # points (the dataset's first) the changes are judged on
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
  """Round values a constant may take instead: 0, then the nearest integer and half
  when within 10% (or 0.1 for small constants)."""
  out = [0.0]
  for candidate in (float(round(value)), round(2 * value) / 2):
    if abs(candidate - value) <= 0.1 * max(abs(value), 1.0) and candidate not in out:
      out.append(candidate)
  return [v for v in out if v != value]


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
  limit = np.maximum(start * (1 + config.relative_tolerance),
                     start + config.absolute_tolerance)
  active = [i for i in range(len(current)) if np.isfinite(start[i])]
  for _ in range(config.max_rounds):
    # Changes are scored unfolded (the same values), and only acceptable ones folded.
    changes = []  # (formula, position, value, tried prefix)
    for i in active:
      for position, token in enumerate(current[i]):
        if token.__class__ is not str:
          changes += [(i, position, value, _replaced(current[i], {position: value}))
                      for value in _proposals(token)]
    if not changes:
      break
    accepted = _acceptable([c[3] for c in changes], [c[0] for c in changes], dataset_ids,
                           score, variance, limit)
    best: dict[int, dict[int, float]] = {}  # formula -> position -> value
    shortest: dict[int, list] = {}
    for (i, position, value, tried), ok in zip(changes, accepted):
      if ok:
        best.setdefault(i, {}).setdefault(position, value)  # 0 before rounding
        tried = fold(tried)
        if i not in shortest or len(tried) < len(shortest[i]):
          shortest[i] = tried
    if not best:
      break
    combined = {i: fold(_replaced(current[i], values)) for i, values in best.items()}
    together = _acceptable(list(combined.values()), list(combined), dataset_ids, score,
                           variance, limit)
    for (i, prefix), ok in zip(combined.items(), together):
      current[i] = prefix if ok else shortest[i]
    active = list(best)
  return current


def _replaced(prefix: list, values: dict[int, float]) -> list:
  return [values.get(k, token) for k, token in enumerate(prefix)]


def _acceptable(prefixes, owners, dataset_ids, score, variance, limit) -> np.ndarray:
  """Whether each prefix (a change of formula owners[k]) stays within that formula's
  error limit."""
  ids = [dataset_ids[i] for i in owners]
  return score(prefixes, ids) / variance[ids] <= limit[list(owners)]
