"""Float tokens and the two vocabularies, with every integer id defined here.

A float becomes three words: a sign (`+`/`-`), a 4-significant-digit mantissa
(`N0000`..`N9999`) and a decimal exponent (`E-100`..`E100`), as in E2E
(reference.md section 2).

Deviation from E2E, on purpose: the exponent word is the exponent of the *leading*
digit (scientific notation), value = sign * mantissa/1000 * 10**E, so 3.14159 ->
`+ N3142 E0`. E2E writes mantissa * 10**E (`+ N3142 E-3`), which can only reach
[1e-97, 9.999e103]; ours covers [1e-100, 9.9995e100], symmetric around 1. Values
below 1e-100 in magnitude flush to zero (`+ N0000 E0`, sign kept); values of
magnitude >= 9.9995e100 overflow.

NaN, +-inf and overflowing values are never silently encoded. The numpy encoder
raises a ValueError naming how many and where (or, with `on_invalid="flag"`,
returns a validity mask); the jax encoder runs inside jit, so it cannot raise and
always returns a validity mask, with invalid entries encoded as `<PAD>` words.

Both encoders run one algorithm, written once against an array module, so they give
the same ids bit for bit for the same input dtype: the exponent comes from a
log10 estimate corrected by exact comparisons with a table of powers of ten, and
the mantissa from one IEEE division or multiplication and a round-half-even.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from sr_jax import expressions, operators

NUM_DIGITS = 4  # significant digits of the mantissa
MANTISSA_SCALE = 10 ** (NUM_DIGITS - 1)  # N3142 means 3.142
MAX_EXPONENT = 100
NUM_MANTISSAS = 10 ** NUM_DIGITS
NUM_EXPONENTS = 2 * MAX_EXPONENT + 1
SIGN_WORDS = ("+", "-")
MANTISSA_WORDS = tuple(f"N{m:0{NUM_DIGITS}d}" for m in range(NUM_MANTISSAS))
EXPONENT_WORDS = tuple(f"E{e}" for e in range(-MAX_EXPONENT, MAX_EXPONENT + 1))
FLOAT_WORDS = SIGN_WORDS + MANTISSA_WORDS + EXPONENT_WORDS
TOKENS_PER_FLOAT = 3
# Offsets of each part inside FLOAT_WORDS.
_SIGN_OFFSET = 0
_MANTISSA_OFFSET = len(SIGN_WORDS)
_EXPONENT_OFFSET = _MANTISSA_OFFSET + NUM_MANTISSAS

PAD, BOS, EOS = "<PAD>", "<BOS>", "<EOS>"
INPUT_PAD, OUTPUT_PAD = "<INPUT_PAD>", "<OUTPUT_PAD>"


class Vocabulary:
  """An ordered list of words with stable ids; float words form one contiguous block."""

  def __init__(self, special: Sequence[str], symbols: Sequence[str]):
    self.words: tuple[str, ...] = tuple(special) + tuple(symbols) + FLOAT_WORDS
    self.ids: dict[str, int] = {w: i for i, w in enumerate(self.words)}
    if len(self.ids) != len(self.words):
      raise ValueError("duplicate words in vocabulary")
    self.float_offset = len(special) + len(symbols)
    self.pad_id = self.ids[PAD]

  def __len__(self) -> int:
    return len(self.words)

  def encode_words(self, words: Sequence[str]) -> np.ndarray:
    try:
      return np.array([self.ids[w] for w in words], dtype=np.int32)
    except KeyError as e:
      raise ValueError(f"unknown word {e.args[0]!r}") from None

  def decode_ids(self, ids: Sequence[int]) -> list[str]:
    out = []
    for i in ids:
      if not 0 <= int(i) < len(self.words):
        raise ValueError(f"token id {int(i)} out of range [0, {len(self.words)})")
      out.append(self.words[int(i)])
    return out


# Encoder: reads points (x padded to 10 dims with INPUT_PAD, then y).
ENCODER_VOCAB = Vocabulary((PAD, INPUT_PAD, OUTPUT_PAD), ())
# Decoder: writes expressions. Operators and variables come from the operator table.
DECODER_VOCAB = Vocabulary((PAD, BOS, EOS),
                           tuple(operators.OPERATORS) + operators.VARIABLES)


@functools.lru_cache(maxsize=4)
def _powers_of_ten(dtype) -> np.ndarray:
  """10**k for k = 0..max, each correctly rounded to `dtype` (parsed from text)."""
  dtype = np.dtype(dtype)
  max_k = int(np.floor(np.log10(np.finfo(dtype).max)))
  table = np.array([float(f"1e{k}") for k in range(max_k + 1)], dtype=dtype)
  table.flags.writeable = False
  return table


def _encode(xp, values, pow10):
  """The shared algorithm: returns (sign, mantissa, exponent, valid) as int32 arrays.

  `xp` is numpy or jax.numpy; `pow10` is `_powers_of_ten(values.dtype)`.
  """
  max_k = pow10.shape[0] - 1
  tiny = np.finfo(values.dtype).tiny  # below this: flush to zero (XLA drops subnormals)
  finite = xp.isfinite(values)
  magnitude = xp.where(finite, xp.abs(values), 0).astype(values.dtype)
  nonzero = magnitude >= tiny
  safe = xp.where(nonzero, magnitude, 1).astype(values.dtype)

  def power(k):  # 10**k as `dtype`, for -max_k <= k <= max_k, and its use
    return pow10[xp.clip(xp.abs(k), 0, max_k)]

  def scale_down(a, k):  # a / 10**k, exact op choice so both backends agree
    return xp.where(k >= 0, a / power(k), a * power(-k))

  exponent = xp.floor(xp.log10(safe)).astype(np.int32)
  exponent = xp.clip(exponent, -max_k, max_k)
  # Correct the log10 estimate so that 1 <= safe / 10**exponent < 10 exactly.
  exponent = xp.where(scale_down(safe, exponent) < 1, exponent - 1, exponent)
  exponent = xp.where(scale_down(safe, exponent) >= 10, exponent + 1, exponent)
  mantissa = xp.rint(scale_down(safe, exponent) * MANTISSA_SCALE).astype(np.int32)
  carry = mantissa >= NUM_MANTISSAS  # 9.9996 rounds to 10.000
  mantissa = xp.where(carry, MANTISSA_SCALE, mantissa)
  exponent = xp.where(carry, exponent + 1, exponent)
  underflow = ~nonzero | (exponent < -MAX_EXPONENT)
  mantissa = xp.where(underflow, 0, mantissa)
  exponent = xp.where(underflow, 0, exponent)
  valid = finite & (exponent <= MAX_EXPONENT)
  sign = (values < 0).astype(np.int32)
  return sign, mantissa, exponent, valid


def _float_ids(sign, mantissa, exponent, offset, xp):
  return xp.stack([offset + _SIGN_OFFSET + sign,
                   offset + _MANTISSA_OFFSET + mantissa,
                   offset + _EXPONENT_OFFSET + exponent + MAX_EXPONENT], axis=-1)


def encode_floats(values, vocab: Vocabulary = ENCODER_VOCAB, on_invalid: str = "raise"):
  """numpy: values (any shape) -> token ids (shape + (3,)), int32.

  on_invalid="raise" (default): a ValueError if any value is NaN, inf or too large.
  on_invalid="flag": returns (ids, valid), invalid entries encoded as `<PAD>` x 3.
  float32 input is encoded in float32, anything else in float64.
  """
  values = np.asarray(values)
  if values.dtype != np.float32:
    values = values.astype(np.float64)
  with np.errstate(all="ignore"):
    sign, mantissa, exponent, valid = _encode(np, values, _powers_of_ten(values.dtype))
  ids = _float_ids(sign, mantissa, exponent, vocab.float_offset, np).astype(np.int32)
  ids = np.where(valid[..., None], ids, vocab.pad_id).astype(np.int32)
  if on_invalid == "flag":
    return ids, valid
  if on_invalid != "raise":
    raise ValueError(f"on_invalid must be 'raise' or 'flag', got {on_invalid!r}")
  if not valid.all():
    bad = np.argwhere(~valid)
    first = tuple(int(i) for i in bad[0])
    raise ValueError(
        f"cannot encode {len(bad)} value(s) as float tokens (NaN, inf, or magnitude "
        f">= 9.9995e{MAX_EXPONENT}); first at index {first}: {values[first]!r}")
  return ids


def encode_floats_jax(values, vocab: Vocabulary = ENCODER_VOCAB):
  """jax.numpy, jit-compatible: values -> (ids (shape + (3,)), valid mask).

  Invalid values (NaN, inf, too large) are encoded as `<PAD>` x 3 with valid=False:
  a jitted function cannot raise, so callers must check or propagate the mask.
  """
  values = jnp.asarray(values)
  if not jnp.issubdtype(values.dtype, jnp.floating):
    values = values.astype(jnp.float32)
  pow10 = jnp.asarray(_powers_of_ten(values.dtype))
  sign, mantissa, exponent, valid = _encode(jnp, values, pow10)
  ids = _float_ids(sign, mantissa, exponent, vocab.float_offset, jnp).astype(jnp.int32)
  return jnp.where(valid[..., None], ids, vocab.pad_id).astype(jnp.int32), valid


def _decode(xp, ids, offset):
  local = ids - offset
  sign = local[..., 0] - _SIGN_OFFSET
  mantissa = local[..., 1] - _MANTISSA_OFFSET
  exponent = local[..., 2] - _EXPONENT_OFFSET - MAX_EXPONENT
  ok = ((sign >= 0) & (sign < len(SIGN_WORDS)) & (mantissa >= 0)
        & (mantissa < NUM_MANTISSAS) & (exponent >= -MAX_EXPONENT)
        & (exponent <= MAX_EXPONENT))
  return sign, mantissa, exponent, ok


def decode_floats(ids, vocab: Vocabulary = ENCODER_VOCAB) -> np.ndarray:
  """numpy: ids (..., 3) -> float64 values; a ValueError on malformed triples."""
  ids = np.asarray(ids)
  if ids.shape[-1:] != (TOKENS_PER_FLOAT,):
    raise ValueError(f"float ids need a last axis of 3, got shape {ids.shape}")
  sign, mantissa, exponent, ok = _decode(np, ids, vocab.float_offset)
  if not ok.all():
    first = tuple(int(i) for i in np.argwhere(~ok)[0])
    raise ValueError(f"malformed float token triple at index {first}: "
                     f"{vocab.decode_ids(np.clip(ids[first], 0, len(vocab) - 1))}")
  # mantissa * 10**k, or mantissa / 10**-k: with exact powers (|k| <= 22) the result
  # is the correctly rounded decimal, so 0.3989 decodes to the float literal 0.3989.
  k = exponent - (NUM_DIGITS - 1)
  pow10 = _powers_of_ten(np.float64)
  magnitude = np.where(k >= 0, mantissa * pow10[np.abs(k)], mantissa / pow10[np.abs(k)])
  return np.where(sign == 1, -magnitude, magnitude)


def decode_floats_jax(ids, vocab: Vocabulary = ENCODER_VOCAB):
  """jax.numpy: ids (..., 3) -> (values, ok); malformed triples give NaN, ok=False."""
  ids = jnp.asarray(ids)
  sign, mantissa, exponent, ok = _decode(jnp, ids, vocab.float_offset)
  dtype = jnp.result_type(float)
  values = (mantissa.astype(dtype) / MANTISSA_SCALE) * jnp.power(
      jnp.asarray(10.0, dtype), exponent.astype(dtype))
  values = jnp.where(sign == 1, -values, values)
  return jnp.where(ok, values, jnp.nan), ok


def float_to_words(value: float) -> list[str]:
  """One float -> its three words, e.g. 3.14159 -> ['+', 'N3142', 'E0']."""
  return ENCODER_VOCAB.decode_ids(encode_floats(np.float64(value)))


def round_to_tokens(values) -> np.ndarray:
  """The values a float-token round trip gives: 4 significant digits."""
  return decode_floats(encode_floats(values))


# ---------------------------------------------------------------------------------
# expressions <-> decoder token ids


def encode_expression(prefix: expressions.Prefix, vocab: Vocabulary = DECODER_VOCAB,
                      add_bos_eos: bool = True) -> np.ndarray:
  """A prefix -> decoder ids; each constant becomes 3 float words."""
  expressions.validate(prefix)
  ids: list[int] = [vocab.ids[BOS]] if add_bos_eos else []
  constants = [float(t) for t in prefix if not isinstance(t, str)]
  float_ids = iter(encode_floats(np.array(constants, dtype=np.float64), vocab).tolist())
  for token in prefix:
    if isinstance(token, str):
      ids.append(vocab.ids[token])
    else:
      ids.extend(next(float_ids))
  if add_bos_eos:
    ids.append(vocab.ids[EOS])
  return np.array(ids, dtype=np.int32)


def _decode_constant(triple: list[int], position: int, vocab: Vocabulary) -> float:
  try:
    return float(decode_floats(np.array(triple), vocab))
  except ValueError as e:
    raise expressions.ExpressionError(
        f"malformed constant at position {position}: {e}") from None


def decode_expression(ids: Sequence[int], vocab: Vocabulary = DECODER_VOCAB
                      ) -> list[expressions.Token]:
  """Decoder ids -> a validated prefix. Leading BOS and anything from EOS on are dropped.

  Raises ExpressionError on a malformed sequence (unknown id, a float cut short or
  out of order, an invalid prefix).
  """
  ids = [int(i) for i in ids]
  if ids and ids[0] == vocab.ids[BOS]:
    ids = ids[1:]
  if vocab.ids[EOS] in ids:
    ids = ids[:ids.index(vocab.ids[EOS])]
  prefix: list[expressions.Token] = []
  floats = []  # (index in prefix, position, id triple): decoded together below
  position = 0
  while position < len(ids):
    i = ids[position]
    if not 0 <= i < len(vocab):
      raise expressions.ExpressionError(f"token id {i} at position {position} is out "
                                        f"of range [0, {len(vocab)})")
    if i >= vocab.float_offset:
      floats.append((len(prefix), position, ids[position:position + TOKENS_PER_FLOAT]))
      prefix.append(0.0)
      position += TOKENS_PER_FLOAT
    elif vocab.words[i] in (PAD, BOS, EOS, INPUT_PAD, OUTPUT_PAD):
      raise expressions.ExpressionError(
          f"special token {vocab.words[i]} at position {position}")
    else:
      prefix.append(vocab.words[i])
      position += 1
  if floats:
    try:  # one numpy call for all constants: one call each was most of a parse
      values = decode_floats(np.array([triple for *_, triple in floats]), vocab)
    except ValueError:  # a malformed or cut-short triple: decode one by one to name it
      values = [_decode_constant(triple, position, vocab) for _, position, triple in floats]
    for (index, _, _), value in zip(floats, values):
      prefix[index] = float(value)
  expressions.validate(prefix)
  return prefix
