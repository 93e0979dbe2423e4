"""Variation operators of the evolutionary search: random formulas, mutation, crossover.

Formulas are prefix lists (expressions.py) over the features x_0 .. x_{D-1} of one
dataset. Every operator returns a valid prefix that reads only those features and has
at most `max_length` tokens (a constant counts as one token here, as a node); when a
draw would break the limit, the operator retries, then falls back to a constant
perturbation of the parent, which always fits.

Pure Python on small lists (a formula has tens of tokens) with `random.Random`, whose
scalar draws cost a fraction of numpy's: the search makes tens of thousands of
offspring per second per core this way (benchmarks/search.py measures it).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from typing import Sequence

from sr_jax import operators

Prefix = list  # tokens: operator names, "x_i", floats

# Unary operators that take an affine argument when inserted, as E2E's generator
# writes them: u(c1 + c2 * subtree) (pow2/pow3/inv/abs are rescaled by the outer
# affine map already).
_AFFINE_INSIDE = frozenset({"sin", "cos", "tan", "exp", "log", "sqrt", "arctan"})


@dataclasses.dataclass(frozen=True)
class VariationConfig:
  binary: tuple[str, ...] = ("add", "sub", "mul", "div")
  unary: tuple[str, ...] = ("inv", "sqrt", "log", "exp", "sin", "cos", "pow2", "pow3",
                            "abs", "tan", "arctan")
  max_length: int = 60  # tokens of a formula
  new_tree_nodes: int = 7  # operator nodes of a random subtree, at most
  weighted_variables: float = 0.5  # share of variable leaves written c * x_i
  constant_leaves: float = 0.2  # share of leaves that are constants
  # Relative frequency of each mutation, and the chance an offspring is a crossover.
  mutations: tuple[tuple[str, float], ...] = (
      ("subtree", 3.0), ("point", 2.0), ("insert_unary", 1.0), ("remove_unary", 1.0),
      ("hoist", 0.5), ("constants", 1.0))
  crossover: float = 0.3

  def __post_init__(self):
    unknown = [o for o in self.binary + self.unary if o not in operators.OPERATORS]
    if unknown:
      raise ValueError(f"unknown operators {unknown}")
    for name in self.binary:
      if operators.OPERATORS[name].arity != 2:
        raise ValueError(f"{name} is not binary")
    for name in self.unary:
      if operators.OPERATORS[name].arity != 1:
        raise ValueError(f"{name} is not unary")
    if self.max_length < 3:
      raise ValueError(f"max_length {self.max_length} is too small for any formula")


_ARITY = {name: op.arity for name, op in operators.OPERATORS.items()}


def _arity(token) -> int:
  return _ARITY.get(token, 0) if token.__class__ is str else 0


def subtree_end(prefix: Sequence, start: int) -> int:
  """The index just after the subtree that starts at token `start`: a scan of that
  subtree only (mutation points are mostly near the leaves, so it is short)."""
  missing = 1  # operands still to read
  arities = _ARITY
  for i in range(start, len(prefix)):
    token = prefix[i]
    missing += (arities.get(token, 0) if token.__class__ is str else 0) - 1
    if not missing:
      return i + 1
  raise ValueError(f"prefix ends inside the subtree at {start}: {prefix}")


class Variation:
  """Draws formulas and offspring for one dataset of `num_features` features."""

  def __init__(self, config: VariationConfig, num_features: int, rng: random.Random):
    if num_features < 1:
      raise ValueError("a dataset needs at least one feature")
    self.config, self.dim, self.rng = config, num_features, rng
    names, weights = zip(*config.mutations)
    self._mutations = [getattr(self, "_" + name) for name in names]
    self._weights = list(itertools.accumulate(weights))

  # -- leaves and random trees ----------------------------------------------------

  def constant(self) -> float:
    """A constant of E2E's scale: sign, then log-uniform magnitude in [0.01, 10]."""
    return self.rng.choice((-1.0, 1.0)) * 10 ** self.rng.uniform(-2, 1)

  def leaf(self) -> Prefix:
    rng, config = self.rng, self.config
    if rng.random() < config.constant_leaves:
      return [self.constant()]
    variable = f"x_{rng.randrange(self.dim)}"
    if rng.random() < config.weighted_variables:
      return ["mul", self.constant(), variable]
    return [variable]

  def random_tree(self, max_nodes: int | None = None) -> Prefix:
    """A random formula of at most max_nodes operator nodes (grow method: each node
    is a leaf with a chance that rises as the budget is spent)."""
    budget = [self.config.new_tree_nodes if max_nodes is None else max_nodes]
    rng, config = self.rng, self.config

    def grow(depth: int) -> Prefix:
      if budget[0] <= 0 or rng.random() < 0.25 + 0.15 * depth:
        return self.leaf()
      budget[0] -= 1
      if rng.random() < 0.6:
        op = rng.choice(config.binary)
        return [op] + grow(depth + 1) + grow(depth + 1)
      op = rng.choice(config.unary)
      if op in _AFFINE_INSIDE:
        return [op, "add", self.constant(), "mul", self.constant()] + grow(depth + 1)
      return [op] + grow(depth + 1)

    return grow(0)

  def random_formula(self) -> Prefix:
    """A seed formula for the population, affine at the top: c0 + c1 * f."""
    return ["add", self.constant(), "mul", self.constant()] + self.random_tree()

  # -- offspring --------------------------------------------------------------------

  def offspring(self, parent: Prefix, other: Prefix | None = None) -> Prefix:
    """A crossover of parent with `other` (when given, with the configured chance) or a
    mutation of parent; valid and within max_length."""
    rng = self.rng
    for _ in range(8):
      if other is not None and rng.random() < self.config.crossover:
        child = self.crossover(parent, other)
      else:
        mutate = self._mutations[_pick(self._weights, rng.random())]
        child = mutate(parent)
      if child is not None and len(child) <= self.config.max_length:
        return child
    return self._constants(parent)

  def crossover(self, parent: Prefix, donor: Prefix) -> Prefix:
    """parent with one of its subtrees replaced by a subtree of donor."""
    i, end_i = self._node(parent)
    j, end_j = self._node(donor)
    return parent[:i] + donor[j:end_j] + parent[end_i:]

  def _node(self, prefix: Prefix, where=None) -> tuple[int, int]:
    """A random token position (optionally one `where(token)` accepts) and the end of
    its subtree; (-1, -1) when none qualifies."""
    positions = range(len(prefix)) if where is None else [
        i for i, t in enumerate(prefix) if where(t)]
    if not positions:
      return -1, -1
    i = self.rng.choice(positions)
    return i, subtree_end(prefix, i)

  def _subtree(self, parent: Prefix) -> Prefix:
    i, end = self._node(parent)
    return parent[:i] + self.random_tree() + parent[end:]

  def _point(self, parent: Prefix) -> Prefix:
    i, _ = self._node(parent)
    token, child = parent[i], list(parent)
    if not isinstance(token, str):
      child[i] = token * math.exp(self.rng.gauss(0, 0.5)) + self.rng.gauss(0, 0.1)
    elif _arity(token) == 2:
      child[i] = self.rng.choice(self.config.binary)
    elif _arity(token) == 1:
      child[i] = self.rng.choice(self.config.unary)
    else:
      child[i] = f"x_{self.rng.randrange(self.dim)}"
    return child

  def _insert_unary(self, parent: Prefix) -> Prefix:
    i, end = self._node(parent)
    op = self.rng.choice(self.config.unary)
    wrapper = ([op, "add", self.constant(), "mul", self.constant()]
               if op in _AFFINE_INSIDE else [op])
    return parent[:i] + wrapper + parent[i:end] + parent[end:]

  def _remove_unary(self, parent: Prefix) -> Prefix | None:
    i, end = self._node(parent, lambda t: _arity(t) == 1)
    if i < 0:
      return None
    return parent[:i] + parent[i + 1:end] + parent[end:]

  def _hoist(self, parent: Prefix) -> Prefix | None:
    i, end = self._node(parent, lambda t: _arity(t) > 0)
    if i <= 0:
      return None
    return ["add", self.constant(), "mul", self.constant()] + parent[i:end]

  def _constants(self, parent: Prefix) -> Prefix:
    rng = self.rng
    return [t if isinstance(t, str) else t * math.exp(rng.gauss(0, 0.3)) + rng.gauss(0, 0.05)
            for t in parent]


def _pick(cumulative: list[float], u: float) -> int:
  target = u * cumulative[-1]
  for k, c in enumerate(cumulative):
    if target < c:
      return k
  return len(cumulative) - 1
