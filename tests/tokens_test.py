"""Float tokens and vocabularies, against Python's decimal formatting as the oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sr_jax import expressions, tokens

MAGNITUDES = st.floats(min_value=1e-100, max_value=9.99e100)
VALUES = st.one_of(st.just(0.0), MAGNITUDES, MAGNITUDES.map(lambda v: -v))


@settings(max_examples=500, deadline=None)
@given(st.lists(VALUES, min_size=1, max_size=50))
def test_round_trip_relative_error(values):
  values = np.array(values)
  decoded = tokens.decode_floats(tokens.encode_floats(values))
  np.testing.assert_array_less(np.abs(decoded - values), 5e-4 * np.abs(values) + 1e-300)
  assert np.all(np.sign(decoded) == np.sign(values))


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-99, max_value=9.99e99))
def test_digits_match_python_decimal_formatting(value):
  """'%.3e' rounds the exact binary value; ours may differ by one in the last digit
  only when the value sits within rounding error of a half-way point."""
  sign, mantissa, exponent = tokens.float_to_words(value)
  digits, exp = f"{value:.3e}".split("e")
  expected = int(digits.replace(".", ""))
  got = int(mantissa[1:])
  if int(exponent[1:]) != int(exp):  # 9.9995 -> 1.000e1 vs 9.999e0 (tie)
    assert abs(float(digits) - 10.0) < 2e-3 or got == 1000
  else:
    assert abs(got - expected) <= 1
    if abs(value / 10.0 ** int(exp) * 1000 % 1 - 0.5) > 1e-6:
      assert got == expected
  assert sign == "+"


def test_reference_examples():
  assert tokens.float_to_words(3.14159) == ["+", "N3142", "E0"]
  assert tokens.float_to_words(-1.23456e-4) == ["-", "N1235", "E-4"]
  assert tokens.float_to_words(0.0) == ["+", "N0000", "E0"]
  assert tokens.float_to_words(-0.0) == ["+", "N0000", "E0"]
  assert tokens.float_to_words(9.9996) == ["+", "N1000", "E1"]
  assert tokens.float_to_words(1e-101) == ["+", "N0000", "E0"]  # flush to zero


def test_generator_constants_are_exact():
  """E2E constants (+-1..999 x 10^-3..-1) have <= 3 digits: tokens keep them exactly."""
  mantissas = np.arange(1, 1000)
  values = np.concatenate([mantissas * 10.0 ** e for e in (-3, -2, -1)])
  values = np.concatenate([values, -values])
  decoded = tokens.decode_floats(tokens.encode_floats(values))
  np.testing.assert_allclose(decoded, values, rtol=1e-15)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e101, -2e105])
def test_invalid_values_raise_or_flag(bad):
  values = np.array([1.0, bad, 2.0])
  with pytest.raises(ValueError, match="cannot encode 1 value.*index \\(1,\\)"):
    tokens.encode_floats(values)
  ids, valid = tokens.encode_floats(values, on_invalid="flag")
  assert valid.tolist() == [True, False, True]
  assert (ids[1] == tokens.ENCODER_VOCAB.pad_id).all()
  with np.errstate(over="ignore"):  # float32 (JAX's default) overflows to inf
    values32 = values.astype(np.float32)
  jax_ids, jax_valid = tokens.encode_floats_jax(jnp.asarray(values32))
  assert np.asarray(jax_valid).tolist() == [True, False, True]
  assert (np.asarray(jax_ids)[1] == tokens.ENCODER_VOCAB.pad_id).all()


def _random_values(rng, n, dtype):
  exponent_range = 300 if dtype == np.float64 else 37
  values = rng.uniform(1, 10, n) * 10.0 ** rng.integers(-exponent_range, exponent_range, n)
  values = np.concatenate([values, 10.0 ** np.arange(-exponent_range, exponent_range),
                           [0.0, 9.9995, 9.99949999, 1.00005, 123.45, 5e-101]])
  signs = rng.choice([-1.0, 1.0], values.shape)
  return (values * signs).astype(dtype)


def test_numpy_and_jax_agree_bit_for_bit_float32():
  values = _random_values(np.random.default_rng(0), 20000, np.float32)
  expected = tokens.encode_floats(values)
  got, valid = jax.jit(tokens.encode_floats_jax)(jnp.asarray(values))
  assert np.asarray(valid).all()
  np.testing.assert_array_equal(np.asarray(got), expected)


def test_numpy_and_jax_agree_bit_for_bit_float64():
  values = _random_values(np.random.default_rng(1), 20000, np.float64)
  expected, expected_valid = tokens.encode_floats(values, on_invalid="flag")
  assert 0.1 < expected_valid.mean() < 0.9  # both in-range and overflowing values
  with jax.enable_x64(True):
    got, valid = jax.jit(tokens.encode_floats_jax)(jnp.asarray(values, jnp.float64))
    decoded, ok = tokens.decode_floats_jax(got[valid])
    decoded = np.asarray(decoded)
  np.testing.assert_array_equal(np.asarray(got), expected)
  np.testing.assert_array_equal(np.asarray(valid), expected_valid)
  assert np.asarray(ok).all()
  np.testing.assert_allclose(decoded, tokens.decode_floats(expected[expected_valid]),
                             rtol=1e-12)


def test_vocabularies_have_stable_ids():
  enc, dec = tokens.ENCODER_VOCAB, tokens.DECODER_VOCAB
  assert enc.pad_id == dec.pad_id == 0
  assert len(enc) == 3 + 2 + 10000 + 201
  assert enc.words[enc.float_offset] == "+"
  assert dec.words[dec.float_offset:] == enc.words[enc.float_offset:]
  for word in ("add", "sin", "pow3", "x_0", "x_9", "<BOS>", "<EOS>", "N1234", "E-100"):
    assert dec.words[dec.ids[word]] == word
  with pytest.raises(ValueError, match="unknown word 'foo'"):
    dec.encode_words(["foo"])


def test_expression_round_trip_through_decoder_ids():
  prefix = ["add", 1.5, "mul", -0.025, "sin", "x_3"]
  ids = tokens.encode_expression(prefix)
  assert ids[0] == tokens.DECODER_VOCAB.ids["<BOS>"]
  assert ids[-1] == tokens.DECODER_VOCAB.ids["<EOS>"]
  assert len(ids) == len(prefix) + 2 * 2 + 2
  assert tokens.decode_expression(ids) == prefix
  padded = np.concatenate([ids, np.zeros(5, np.int32)])
  assert tokens.decode_expression(padded) == prefix


@pytest.mark.parametrize("words, message", [
    (["add", "x_0"], "truncated"),
    (["mul", "+", "N1000", "x_0"], "malformed constant"),
    (["mul", "N1000", "+", "E0", "x_0"], "malformed constant"),
    (["add", "<PAD>", "x_0"], "special token"),
])
def test_malformed_decoder_sequences(words, message):
  ids = tokens.DECODER_VOCAB.encode_words(words)
  with pytest.raises(expressions.ExpressionError, match=message):
    tokens.decode_expression(ids)
  with pytest.raises(expressions.ExpressionError, match="out of range"):
    tokens.decode_expression([10**6])
