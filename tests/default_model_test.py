"""The model shipped in the package: it loads with its card, and the default regressor
(model, refinement and the default 2 s of search) fits easy laws."""

import numpy as np
import pytest

from sr_jax import pretrained
from sr_jax.regressor import SymbolicTransformerRegressor


def test_shipped_model_loads_with_its_card():
  card = pretrained.card()
  model = pretrained.load()
  assert card["parameters"] == sum(v.size for v in pretrained.param_arrays(model).values())
  assert card["examples"] > 100_000 and card["validation"]["valid_loss"] < 2.3
  assert {"command", "device", "seconds", "steps", "date"} <= set(card)


@pytest.mark.parametrize("name, law", [
    ("2.5*x0 + 1", lambda x: 2.5 * x[:, 0] + 1),
    ("sin(x0)", lambda x: np.sin(x[:, 0])),
    ("x0*x1", lambda x: x[:, 0] * x[:, 1]),
])
def test_default_regressor_fits_easy_laws(name, law):
  rng = np.random.default_rng(0)
  x = rng.uniform(-2, 2, size=(200, 2 if "x1" in name else 1))
  y = law(x)
  est = SymbolicTransformerRegressor(random_state=0).fit(x, y)
  assert est.score(x, y) > 0.99, (name, est.model())
  x_new = rng.uniform(-2, 2, size=(100, x.shape[1]))
  assert est.score(x_new, law(x_new)) > 0.99, (name, est.model())
