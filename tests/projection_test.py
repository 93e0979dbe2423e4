"""benchmarks/projection.py's fit: the examples at which a + b log10(examples) reaches
a target, checked against lines whose crossing is known in closed form."""

import importlib.util
import math
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _projection():
  spec = importlib.util.spec_from_file_location(
      "projection", os.path.join(ROOT, "benchmarks", "projection.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.projection


def test_a_rising_line_reaches_its_target_where_algebra_says():
  examples = np.array([1e5, 4e5, 2.4e6])
  values = 0.1 + 0.08 * np.log10(examples)  # 0.5 at 1e5, 0.65 at 10 ** 6.875
  gain, intercept, needed = _projection()(examples, values, 0.65)
  assert gain == pytest.approx(0.08) and intercept == pytest.approx(0.1)
  assert needed == pytest.approx(10 ** 6.875, rel=1e-9)


def test_a_scattered_rise_uses_the_least_squares_line():
  examples = np.array([1e5, 1e6, 1e7])
  values = np.array([0.30, 0.36, 0.40])  # least squares: 0.0517 + 0.05 log10(x)
  slope, intercept = np.polyfit(np.log10(examples), values, 1)
  gain, fitted_intercept, needed = _projection()(examples, values, 0.5)
  assert gain == pytest.approx(0.05) and fitted_intercept == pytest.approx(intercept)
  assert math.log10(needed) == pytest.approx((0.5 - intercept) / slope)


def test_reached_and_unreachable_targets():
  examples = np.array([1e5, 1e6])
  projection = _projection()
  assert projection(examples, np.array([0.2, 0.7]), 0.68) == pytest.approx((0.5, -2.3, 1e6))
  gain, _, needed = projection(examples, np.array([0.4, 0.3]), 0.61)
  assert gain == pytest.approx(-0.1) and needed == math.inf
  assert projection(examples, np.array([0.2, 0.7]), None)[2] is None
