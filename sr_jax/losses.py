"""Teacher-forced token cross-entropy: E2E's full softmax, or the grammar-factored one.

E2E's output layer scores all 10,234 words at every position, although the grammar
(grammar.py) allows only one group after each word: a mantissa after a sign (10,000
words), an exponent after a mantissa (201), a structure word anywhere else (33). The
factored loss is the cross-entropy of the softmax within that group, which is the
distribution constrained decoding samples from (its grammar mask is always inside the
group), so training spends nothing on ruling out words no decoder ever considers.

Cost: the 234 non-mantissa logits at every position, and the 10,000 mantissa logits only
at the positions after a sign, gathered into a fixed number of rows. A target of L
words (BOS/EOS included) holds at most (L - 1) // 4 constants (each is 3 words, and c
leaves need c - 1 binary operators), so B * ((L_in + 1 - 1) // 4) rows always suffice.
For the `small` model this is ~1/8 of the full output layer's FLOPs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from sr_jax import grammar

_MASKED = -1e9  # the logit of a word outside the group (exp underflows to 0)


def mantissa_rows(batch: int, input_length: int) -> int:
  """Mantissa positions a batch of targets[:, :-1] of this shape can hold at most."""
  return batch * (input_length // 4)


def token_losses(model, hidden_BxLxD: jax.Array, inputs_BxL: jax.Array,
                 labels_BxL: jax.Array, mask_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Cross-entropy and argmax correctness per position (zero where mask_BxL is False) of
  the words `labels` after `inputs` (targets[:, 1:] after targets[:, :-1]), under the
  model's output layer (ModelConfig.output_layer)."""
  if model.config.output_layer == "full":
    logits_BxLxV = model.output_logits(hidden_BxLxD)
    losses_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, labels_BxL)
    correct_BxL = jnp.argmax(logits_BxLxV, -1) == labels_BxL
    return jnp.where(mask_BxL, losses_BxL, 0.0), correct_BxL & mask_BxL

  B, L, D = hidden_BxLxD.shape
  _, other_ids = grammar.vocab_split()
  other_index_V = jnp.full(len(grammar.tables()[0]), -1, jnp.int32).at[other_ids].set(
      jnp.arange(len(other_ids), dtype=jnp.int32))

  # Positions whose word is a structure word or an exponent: a softmax over their group
  # among the 234 non-mantissa words. Masked logits are finite and mantissa positions
  # allow all 234 here, so that every discarded loss stays finite and its zero gradient
  # is not NaN.
  mantissa_BxL = grammar.mantissa_follows(inputs_BxL)
  allowed_BxLxO = (grammar.group_mask(inputs_BxL.reshape(-1), other_ids).reshape(B, L, -1)
                   | mantissa_BxL[..., None])
  logits_BxLxO = jnp.where(allowed_BxLxO, model.output_logits(hidden_BxLxD, other_ids),
                           _MASKED)
  label_BxL = jnp.maximum(other_index_V[labels_BxL], 0)
  label_logit_BxL = jnp.take_along_axis(logits_BxLxO, label_BxL[..., None], -1)[..., 0]
  losses_BxL = jax.nn.logsumexp(logits_BxLxO, axis=-1) - label_logit_BxL
  correct_BxL = jnp.argmax(logits_BxLxO, -1) == label_BxL

  # Positions whose word is a mantissa, gathered: a softmax over the 10,000 mantissas.
  mantissa_BxL &= mask_BxL
  M = mantissa_rows(B, L)
  flat_M = jnp.nonzero(mantissa_BxL.reshape(-1), size=M, fill_value=0)[0]
  real_M = jnp.arange(M) < jnp.sum(mantissa_BxL)
  logits_MxT = model.output_logits(hidden_BxLxD.reshape(B * L, D)[flat_M], grammar.MANTISSA_IDS)
  label_M = labels_BxL.reshape(-1)[flat_M] - grammar.MANTISSA_IDS.start
  loss_M = optax.softmax_cross_entropy_with_integer_labels(logits_MxT, label_M)
  correct_M = jnp.argmax(logits_MxT, -1) == label_M

  keep_BxL = mask_BxL & ~mantissa_BxL
  losses = (jnp.where(keep_BxL, losses_BxL, 0.0).reshape(-1)
            .at[flat_M].add(jnp.where(real_M, loss_M, 0.0))).reshape(B, L)
  correct = ((correct_BxL & keep_BxL).reshape(-1)
             .at[flat_M].max(correct_M & real_M)).reshape(B, L)
  return losses, correct
