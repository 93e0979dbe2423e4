"""The grammar-factored loss against a numpy oracle built from the full logits, its
mantissa-row bound, its gradients, and the full loss against optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sr_jax import data, generator, grammar, losses, tokens
from sr_jax.model import Transformer, model_config

V = len(tokens.DECODER_VOCAB)


@pytest.fixture(scope="module")
def model():
  return Transformer(model_config("debug"), rngs=nnx.Rngs(3))


def _targets(count=6, length=64, seed=0):
  config = generator.GeneratorConfig(max_input_dimension=3, max_target_length=length - 2)
  prefixes = [generator.generate(config, seed, i).prefix for i in range(count)]
  ids = data.tokenize_targets(prefixes, length)
  return ids, ids != tokens.DECODER_VOCAB.pad_id


def _oracle(logits_BxLxV, inputs_BxL, labels_BxL, mask_BxL):
  """Per position: log-softmax over the word group the previous word allows, computed
  in float64 from the whole vocabulary's logits."""
  words = tokens.DECODER_VOCAB.words
  mantissa = np.array([w in tokens.MANTISSA_WORDS for w in words])
  exponent = np.array([w in tokens.EXPONENT_WORDS for w in words])
  structure = ~mantissa & ~exponent
  logits = np.asarray(logits_BxLxV, np.float64)
  B, L = labels_BxL.shape
  loss, correct = np.zeros((B, L)), np.zeros((B, L), bool)
  for b in range(B):
    for t in range(L):
      if not mask_BxL[b, t]:
        continue
      previous = words[inputs_BxL[b, t]]
      group = (mantissa if previous in tokens.SIGN_WORDS else
               exponent if previous in tokens.MANTISSA_WORDS else structure)
      row = np.where(group, logits[b, t], -np.inf)
      log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
      loss[b, t] = log_z - row[labels_BxL[b, t]]
      correct[b, t] = np.argmax(row) == labels_BxL[b, t]
  return loss, correct


def _hidden(model, targets, seed=0):
  rng = np.random.default_rng(seed)
  points = jnp.asarray(rng.integers(3, 100, (targets.shape[0], 7, model.config.point_tokens)),
                       jnp.int32)
  return model.hidden(points, jnp.ones(points.shape[:2], bool), jnp.asarray(targets[:, :-1]))


def test_factored_loss_equals_group_softmax_oracle(model):
  targets, mask = _targets()
  hidden = _hidden(model, targets)
  inputs, labels, label_mask = targets[:, :-1], targets[:, 1:], mask[:, 1:]
  label_mask[1] = False  # a masked-out example
  loss, correct = jax.jit(lambda h: losses.token_losses(
      model, h, jnp.asarray(inputs), jnp.asarray(labels), jnp.asarray(label_mask)))(hidden)
  expected_loss, expected_correct = _oracle(model.output_logits(hidden), inputs, labels,
                                            label_mask)
  np.testing.assert_allclose(np.asarray(loss), expected_loss, rtol=2e-5, atol=2e-5)
  np.testing.assert_array_equal(np.asarray(correct), expected_correct)
  # Mantissa positions really are scored over the mantissas (a tenth of the words).
  after_sign = np.isin(inputs, [tokens.DECODER_VOCAB.ids[w] for w in tokens.SIGN_WORDS])
  assert (after_sign & label_mask).sum() > 10
  assert np.all(np.asarray(loss)[after_sign & label_mask] > 5.0)  # ~log(10,000) at init


def test_densest_targets_fit_the_mantissa_rows(model):
  """A target of L words holds at most (L - 1) // 4 constants: add(c, add(c, ..., c))
  reaches it, and every one of its mantissas is scored."""
  length = 41  # BOS + 39 words + EOS: 10 constants and 9 adds
  prefix = ["add", 1.5] * 9 + [2.5]
  ids = data.tokenize_targets([prefix, prefix], length)
  assert (ids != tokens.DECODER_VOCAB.pad_id).sum(1).tolist() == [length, length]
  assert losses.mantissa_rows(2, length - 1) == 20
  inputs, labels = ids[:, :-1], ids[:, 1:]
  mask = np.ones_like(labels, bool)
  hidden = _hidden(model, ids, seed=1)
  loss, _ = losses.token_losses(model, hidden, jnp.asarray(inputs), jnp.asarray(labels),
                                jnp.asarray(mask))
  expected, _ = _oracle(model.output_logits(hidden), inputs, labels, mask)
  np.testing.assert_allclose(np.asarray(loss), expected, rtol=2e-5, atol=2e-5)


def test_factored_gradients_are_finite_and_ignore_masked_positions(model):
  targets, mask = _targets(seed=2)
  inputs, labels, label_mask = targets[:, :-1], targets[:, 1:], mask[:, 1:]
  params = nnx.state(model, nnx.Param)
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)

  def total(p, labels):
    m = nnx.merge(graphdef, p, rest)
    h = m.hidden(jnp.full((labels.shape[0], 5, m.config.point_tokens), 4, jnp.int32),
                 jnp.ones((labels.shape[0], 5), bool), jnp.asarray(inputs))
    return jnp.sum(losses.token_losses(m, h, jnp.asarray(inputs), labels,
                                       jnp.asarray(label_mask))[0])

  grad = jax.jit(jax.value_and_grad(total))
  value, grads = grad(params, jnp.asarray(labels))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  scrambled = np.where(label_mask, labels, (labels + 9) % V)  # change only masked labels
  other_value, other_grads = grad(params, jnp.asarray(scrambled))
  assert float(other_value) == float(value)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(other_grads)):
    np.testing.assert_array_equal(a, b)


def test_full_loss_is_optax_cross_entropy():
  model = Transformer(model_config("debug", output_layer="full"), rngs=nnx.Rngs(0))
  targets, mask = _targets(count=3)
  hidden = _hidden(model, targets)
  loss, correct = losses.token_losses(model, hidden, jnp.asarray(targets[:, :-1]),
                                      jnp.asarray(targets[:, 1:]), jnp.asarray(mask[:, 1:]))
  logits = model.output_logits(hidden)
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, targets[:, 1:])
  np.testing.assert_allclose(np.asarray(loss), np.where(mask[:, 1:], expected, 0), rtol=1e-6)
  np.testing.assert_array_equal(
      np.asarray(correct), (np.argmax(logits, -1) == targets[:, 1:]) & mask[:, 1:])


def test_factored_output_needs_the_decoder_vocabulary():
  with pytest.raises(ValueError, match="factored.*DECODER_VOCAB"):
    model_config("debug", decoder_vocab_size=64)
  assert model_config("debug", decoder_vocab_size=64, output_layer="full").output_layer == "full"


def test_group_mask_holds_every_grammar_mask(model):
  """Constrained decoding samples from the factored model's support: at every step of
  real targets the grammar mask is inside the group mask."""
  targets, _ = _targets(count=4, seed=5)
  ids = jnp.asarray(targets)
  for t in range(0, 40, 3):
    allowed = np.asarray(grammar.grammar_mask(ids, jnp.int32(t)))
    group = np.asarray(grammar.group_mask(ids[:, t]))
    assert np.all(group | ~allowed)
