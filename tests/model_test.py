"""Model tests on the 'debug' size: shapes/dtypes, causality, point-permutation invariance,
padding invariance, cached decoding, parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sr_jax import data, generator
from sr_jax.model import SIZES, ModelConfig, Transformer, count_params, model_config

B, N, L = 2, 6, 8
# Behaviour tests use small vocabularies: same code paths, less compile and run time.
SMALL_VOCAB = dict(encoder_vocab_size=64, decoder_vocab_size=64, output_layer="full")


def _batch(cfg: ModelConfig, seed=0):
  rng = np.random.default_rng(seed)
  points_BxNxT = rng.integers(1, cfg.encoder_vocab_size, (B, N, cfg.point_tokens), dtype=np.int32)
  mask_BxN = np.ones((B, N), bool)
  mask_BxN[1, -2:] = False
  targets_BxL = rng.integers(1, cfg.decoder_vocab_size, (B, L), dtype=np.int32)
  return jnp.asarray(points_BxNxT), jnp.asarray(mask_BxN), jnp.asarray(targets_BxL)


@pytest.fixture(scope="module")
def model():
  return Transformer(model_config("debug", num_decoder_layers=2, **SMALL_VOCAB), rngs=nnx.Rngs(0))


_forward = jax.jit(lambda m, p, mask, t: m(p, mask, t))
_encode = jax.jit(lambda m, p, mask: m.encode(p, mask))


@jax.jit
def _logits_step(m, *args):
  hidden_BxD, cache = m.decode_step(*args)
  return m.output_logits(hidden_BxD), cache


def test_cached_decode_equals_full_decode(model):
  cfg = model.config
  points, mask, targets = _batch(cfg)
  enc = _encode(model, points, mask)
  full_BxLxV = jax.jit(lambda m, t, e, k: m.decode(t, e, k))(model, targets, enc, mask)
  step = _logits_step
  cache = model.init_cache(B, L + 2)
  for t in range(L):
    logits_BxV, cache = step(model, targets[:, t:t + 1], cache, enc, mask, jnp.int32(t))
    np.testing.assert_allclose(logits_BxV, full_BxLxV[:, t], atol=1e-4, rtol=1e-4)
  assert cache["k_YxBxHxSxK"].shape == (2, B, cfg.num_heads, L + 2, cfg.head_dim)
  assert not np.any(np.asarray(cache["k_YxBxHxSxK"][:, :, :, L:]))


def test_precomputed_cross_kv_equals_recomputed(model):
  points, mask, targets = _batch(model.config)
  enc = _encode(model, points, mask)
  step = _logits_step
  plain = model.init_cache(B, L)
  precomputed = plain | jax.jit(lambda m, e: m.precompute_cross_kv(e))(model, enc)
  for t in range(3):
    logits_BxV, plain = step(model, targets[:, t:t + 1], plain, enc, mask, jnp.int32(t))
    logits2_BxV, precomputed = step(model, targets[:, t:t + 1], precomputed, enc, mask,
                                    jnp.int32(t))
    np.testing.assert_allclose(logits2_BxV, logits_BxV, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(precomputed["k_YxBxHxSxK"], plain["k_YxBxHxSxK"], atol=1e-5)
  assert precomputed["cross_k_YxBxHxNxK"].shape == (2, B, model.config.num_heads, N,
                                                    model.config.head_dim)


def test_rows_sharing_an_input_equal_repeated_inputs(model):
  """G candidate rows per input reading its cross K/V once (decoding's layout) give the
  logits of each row having its own copy of the input; output_logits over a vocabulary
  slice equals that slice of the full logits."""
  G = 3
  points, mask, targets = _batch(model.config)
  enc = _encode(model, points, mask)
  rows_BG = jnp.repeat(targets[:, :4], G, axis=0)
  cross = jax.jit(lambda m, e: m.precompute_cross_kv(e))
  shared = model.init_cache(B * G, L) | cross(model, enc)
  copied = model.init_cache(B * G, L) | cross(model, jnp.repeat(enc, G, axis=0))
  for t in range(4):
    logits_BGxV, shared = _logits_step(model, rows_BG[:, t:t + 1], shared, None, mask,
                                       jnp.int32(t))
    expected_BGxV, copied = _logits_step(model, rows_BG[:, t:t + 1], copied, None,
                                         jnp.repeat(mask, G, axis=0), jnp.int32(t))
    np.testing.assert_allclose(logits_BGxV, expected_BGxV, atol=1e-5, rtol=1e-5)
  hidden_BGxD, _ = jax.jit(lambda m, *a: m.decode_step(*a))(model, rows_BG[:, :1], shared, None,
                                                           mask, jnp.int32(0))
  ids = jnp.array([5, 0, 63, 17])
  np.testing.assert_allclose(model.output_logits(hidden_BGxD, ids),
                             model.output_logits(hidden_BGxD)[:, ids], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shapes_and_dtypes(dtype):
  cfg = model_config("debug", dtype=dtype)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  points, mask, targets = _batch(cfg)
  logits_BxLxV = _forward(model, points, mask, targets)
  assert logits_BxLxV.shape == (B, L, cfg.decoder_vocab_size)
  assert logits_BxLxV.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits_BxLxV)))
  assert _encode(model, points, mask).dtype == jnp.dtype(dtype)
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}


def test_pre_layer_norm_blocks_and_final_norms():
  """Pre-LN: a block is x + f(LN(x)) (checked against that formula with the layer's own
  sublayer), the encoder ends in a LayerNorm (unit-scale, zero-mean outputs at init),
  and cached decoding, which applies the final decoder LayerNorm in output_logits,
  equals teacher forcing."""
  cfg = model_config("debug", pre_layer_norm=True, num_decoder_layers=2, **SMALL_VOCAB)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, cfg.d_model)), jnp.float32)
  layer = model.encoder_layers[0]
  mask = jnp.ones((2, 5, 5), bool)
  h = x + layer.attn(layer.ln_attn(x), layer.ln_attn(x), mask, "points", "points")
  expected = h + layer.mlp(layer.ln_mlp(h), "points")
  np.testing.assert_allclose(layer(x, mask), expected, rtol=1e-5, atol=1e-5)
  points, point_mask, targets = _batch(cfg)
  enc = np.asarray(_encode(model, points, point_mask))[np.asarray(point_mask)]
  np.testing.assert_allclose(enc.mean(-1), 0, atol=1e-5)
  np.testing.assert_allclose(enc.std(-1), 1, atol=1e-3)
  full = jax.jit(lambda m, t, e, k: m.decode(t, e, k))(
      model, targets, _encode(model, points, point_mask), point_mask)
  cache = model.init_cache(B, L)
  for t in range(L):
    logits, cache = _logits_step(model, targets[:, t:t + 1], cache,
                                 _encode(model, points, point_mask), point_mask, jnp.int32(t))
    np.testing.assert_allclose(logits, full[:, t], atol=1e-4, rtol=1e-4)


def test_decoder_is_causal(model):
  points, mask, targets = _batch(model.config)
  t = 3
  changed = targets.at[:, t + 1:].set((targets[:, t + 1:] + 7) % model.config.decoder_vocab_size)
  a, b = _forward(model, points, mask, targets), _forward(model, points, mask, changed)
  np.testing.assert_array_equal(a[:, :t + 1], b[:, :t + 1])
  assert not np.allclose(a[:, t + 1:], b[:, t + 1:])


def test_decoder_causal_by_gradient(model):
  """d logits[t] / d (position embedding at s) is zero for every s > t."""
  points, mask, targets = _batch(model.config)
  enc = _encode(model, points, mask)
  t = 2

  grads = jax.jit(jax.grad(lambda m: m.decode(targets, enc, mask)[:, t].sum()))(model)
  grad_LxD = grads.position_embed[...]
  assert np.all(np.asarray(grad_LxD[t + 1:L]) == 0)
  assert np.any(np.asarray(grad_LxD[:t + 1]) != 0)


def test_encoder_is_permutation_invariant(model):
  points, mask, targets = _batch(model.config)
  perm = np.random.default_rng(1).permutation(N)
  enc = _encode(model, points, mask)
  enc_perm = _encode(model, points[:, perm], mask[:, perm])
  np.testing.assert_allclose(enc_perm, enc[:, perm], atol=1e-5)
  np.testing.assert_allclose(_forward(model, points[:, perm], mask[:, perm], targets),
                             _forward(model, points, mask, targets), atol=1e-4)


def test_point_embedder_equals_e2e_concatenation():
  """The sign-slot lookup (Transformer._embed_points) computes E2E's layer, the
  concatenation of all 33 token embeddings times the kernel plus bias, on tokenized points."""
  cfg = model_config("debug")
  model = Transformer(cfg, rngs=nnx.Rngs(4))
  samples = [generator.generate(generator.GeneratorConfig(), 0, i) for i in range(3)]
  points = jnp.asarray(data.tokenize_points(samples, 200))
  table = np.asarray(model.point_embed[...], np.float64)
  emb = np.where((np.asarray(points) != cfg.encoder_pad_id)[..., None], table[points], 0)
  expected = (emb.reshape(3, 200, -1) @ np.asarray(model.embed_hidden.kernel[...], np.float64)
              + np.asarray(model.embed_hidden.bias[...], np.float64))
  np.testing.assert_allclose(np.asarray(model._embed_points(points)), expected, rtol=1e-4,
                             atol=1e-4)


def test_masked_points_do_not_matter(model):
  points, mask, targets = _batch(model.config)
  garbage = jnp.asarray(np.random.default_rng(2).integers(
      1, model.config.encoder_vocab_size, (B, 3, model.config.point_tokens), dtype=np.int32))
  padded_points = jnp.concatenate([points, garbage], axis=1)
  padded_mask = jnp.concatenate([mask, jnp.zeros((B, 3), bool)], axis=1)
  np.testing.assert_allclose(_forward(model, padded_points, padded_mask, targets),
                             _forward(model, points, mask, targets), atol=1e-4)


def test_repr_is_one_line_with_the_size_and_parameter_count(model):
  text = repr(model)
  assert "\n" not in text and len(text) < 200, text
  assert f"d_model={model.config.d_model}," in text
  assert f"parameters={count_params(model):,})" in text


def test_paper_param_count():
  """4/16 layers, d 512: reference.md counts 93.45M with 4096 positions and its vocabularies;
  256 positions (-1.97M) and our vocabularies (-0.03M) give 91.45M."""
  abstract = nnx.eval_shape(lambda: Transformer(model_config("paper"), rngs=nnx.Rngs(0)))
  assert count_params(abstract) == pytest.approx(91.45e6, rel=2e-3)


@pytest.mark.parametrize("size,millions", [("s3m", 3), ("s20m", 20), ("s90m", 90), ("s300m", 300)])
def test_scaling_sizes(size, millions):
  abstract = nnx.eval_shape(lambda: Transformer(model_config(size), rngs=nnx.Rngs(0)))
  assert 0.85 * millions * 1e6 < count_params(abstract) < 1.15 * millions * 1e6


def test_model_config_errors():
  assert set(SIZES) >= {"debug", "small", "paper"}
  assert model_config("debug", num_decoder_layers=3).num_decoder_layers == 3
  with pytest.raises(ValueError):
    model_config("nope")
  with pytest.raises(ValueError):
    model_config("debug", num_heads=3)
