"""Seeded random expression trees over the whole operator table, for tests."""

import numpy as np

from sr_jax import operators


def random_prefix(rng: np.random.Generator, num_variables: int = 3,
                  max_depth: int = 4, leaf_probability: float = 0.3) -> list:
  """A random prefix using every operator (weights ignored) and signed constants."""
  names = list(operators.OPERATORS)

  def build(depth: int) -> list:
    if depth == 0 or rng.random() < leaf_probability:
      if rng.random() < 0.5:
        return [f"x_{rng.integers(num_variables)}"]
      magnitude = 10.0 ** rng.uniform(-2, 2)
      return [float(rng.choice([-1, 1]) * magnitude)]
    op = operators.OPERATORS[names[rng.integers(len(names))]]
    out = [op.name]
    for _ in range(op.arity):
      out += build(depth - 1)
    return out

  return build(max_depth)
