"""The decoder grammar over tokens.DECODER_VOCAB: which words may follow which.

Two levels, both used by training and decoding:
- word groups: a float is sign, mantissa, exponent, so after a sign word only a mantissa
  (10,000 words) may come, after a mantissa only an exponent (201 words), and anywhere
  else a structure word (EOS, operators, variables, a sign). The grammar-factored output
  layer (losses.py) is a softmax within the group the previous word selects.
- `grammar_mask`: the words after which the row can still end as a valid formula within
  its length, reading only the input's variables (constrained decoding).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sr_jax import operators, tokens
from sr_jax.tokens import DECODER_VOCAB, EOS

# Word kinds; a float is counted as one leaf at its sign word.
OTHER, SYMBOL, SIGN, MANTISSA, EXPONENT, END = range(6)

# The mantissa words are one contiguous block of ids.
MANTISSA_IDS = slice(DECODER_VOCAB.ids[tokens.MANTISSA_WORDS[0]],
                     DECODER_VOCAB.ids[tokens.MANTISSA_WORDS[-1]] + 1)


@functools.lru_cache(maxsize=1)
def tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """kind, operand-count change (arity - 1) and variable index (-1: not a variable) per
  token id."""
  kind_V = np.full(len(DECODER_VOCAB), OTHER, np.int32)
  delta_V = np.zeros(len(DECODER_VOCAB), np.int32)
  variable_V = np.full(len(DECODER_VOCAB), -1, np.int32)
  for i, word in enumerate(DECODER_VOCAB.words):
    if word in operators.OPERATORS:
      kind_V[i], delta_V[i] = SYMBOL, operators.OPERATORS[word].arity - 1
    elif operators.variable_index(word) is not None:
      kind_V[i], delta_V[i] = SYMBOL, -1
      variable_V[i] = operators.variable_index(word)
    elif word in tokens.SIGN_WORDS:
      kind_V[i], delta_V[i] = SIGN, -1
    elif word in tokens.MANTISSA_WORDS:
      kind_V[i] = MANTISSA
    elif word == EOS:
      kind_V[i] = END
    elif word in tokens.EXPONENT_WORDS:
      kind_V[i] = EXPONENT
  for kind in (kind_V, delta_V, variable_V):
    kind.flags.writeable = False
  return kind_V, delta_V, variable_V


@functools.lru_cache(maxsize=1)
def vocab_split() -> tuple[np.ndarray, np.ndarray]:
  """Token ids of the mantissa words (10,000 of the 10,234) and of all the others."""
  kind_V = tables()[0]
  return np.flatnonzero(kind_V == MANTISSA), np.flatnonzero(kind_V != MANTISSA)


def exponent_follows(previous_ids: jax.Array) -> jax.Array:
  """True where the word after `previous_ids` must be an exponent."""
  return jnp.asarray(tables()[0])[previous_ids] == MANTISSA


def mantissa_follows(previous_ids: jax.Array) -> jax.Array:
  """True where the word after `previous_ids` must be a mantissa."""
  return jnp.asarray(tables()[0])[previous_ids] == SIGN


def group_mask(previous_ids_B: jax.Array, vocab_ids: np.ndarray | None = None) -> jax.Array:
  """B x V: the words of the group that may follow each previous word (the factored
  output layer's support), over the whole vocabulary or over `vocab_ids`."""
  kind_V = jnp.asarray(tables()[0] if vocab_ids is None else tables()[0][vocab_ids])
  after_sign_Bx1 = mantissa_follows(previous_ids_B)[:, None]
  after_mantissa_Bx1 = exponent_follows(previous_ids_B)[:, None]
  return jnp.where(after_sign_Bx1, kind_V == MANTISSA,
                   jnp.where(after_mantissa_Bx1, kind_V == EXPONENT,
                             (kind_V != MANTISSA) & (kind_V != EXPONENT)))


def grammar_mask(tokens_BxL: jax.Array, position: jax.Array,
                 dims_B: jax.Array | None = None, vocab_ids=None) -> jax.Array:
  """Which tokens may follow tokens_BxL[:, :position + 1] (BOS first) so that the row is
  still the start of a valid formula that can end, EOS included, within L tokens.

  A float is sign, mantissa, exponent in that order; EOS comes exactly when no operand
  is missing; an operator, variable or float is allowed only if the operands it leaves
  missing can still be filled with one-token variables before the last slot. With
  dims_B, row b may only use variables x_0 .. x_{dims_B[b] - 1}. With vocab_ids (a
  numpy array), the mask covers those token ids only, in their order. Always a subset
  of `group_mask`."""
  all_tables = tables()
  all_kind_V, all_delta_V = map(jnp.asarray, all_tables[:2])
  kind_V, delta_V, variable_V = (jnp.asarray(t if vocab_ids is None else t[vocab_ids])
                                 for t in all_tables)
  L = tokens_BxL.shape[1]
  written_BxL = jnp.arange(L) <= position
  needed_B = 1 + jnp.sum(jnp.where(written_BxL, all_delta_V[tokens_BxL], 0), axis=1)
  last_kind_B = all_kind_V[jax.lax.dynamic_index_in_dim(tokens_BxL, position, 1,
                                                        keepdims=False)]
  slots = L - 1 - position  # positions position+1 .. L-1 are still free
  cost_V = jnp.where(kind_V == SIGN, 3, 1)
  needed_after_BxV = needed_B[:, None] + delta_V[None, :]
  fits_BxV = cost_V[None, :] + needed_after_BxV + 1 <= slots
  opens_BxV = ((kind_V == SYMBOL) | (kind_V == SIGN))[None, :] & (needed_B > 0)[:, None]
  if dims_B is not None:
    opens_BxV &= variable_V[None, :] < dims_B[:, None]
  ends_BxV = (kind_V == END)[None, :] & (needed_B == 0)[:, None]
  free_BxV = (opens_BxV & fits_BxV) | ends_BxV
  return jnp.where((last_kind_B == SIGN)[:, None], (kind_V == MANTISSA)[None, :],
                   jnp.where((last_kind_B == MANTISSA)[:, None],
                             (kind_V == EXPONENT)[None, :], free_BxV))
