"""Decoding tests on a tiny random model: greedy against a no-cache argmax loop, beam(1) and
near-zero-temperature sampling against greedy, reported log-probs and beam scores against a
teacher-forced forward pass, EOS/PAD layout, seeds, prefix conversion."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sr_jax import data, decoding, expressions, grammar, operators, tokens
from sr_jax.decoding import BOS_ID, EOS_ID, PAD_ID, DecodeConfig, decode, to_prefixes
from sr_jax.model import Transformer, model_config
from sr_jax.sharding import DEFAULT_RULES, MeshConfig, batch_sharding, make_mesh

B, N, L = 3, 6, 16
GREEDY = DecodeConfig("greedy", max_len=L)
SAMPLE = DecodeConfig("sample", num_candidates=4, max_len=L)
BEAM = DecodeConfig("beam", num_candidates=4, max_len=L, length_penalty=0.7)


@pytest.fixture(scope="module")
def model():
  """Random weights, with an EOS bias so that candidates end at varied lengths (greedy ends
  at once for two inputs and never for the third)."""
  cfg = model_config("debug", num_decoder_layers=2, encoder_vocab_size=64, decoder_vocab_size=64,
                     output_layer="full", max_target_len=32)
  m = Transformer(cfg, rngs=nnx.Rngs(0))
  m.output_bias[...] = jnp.zeros(cfg.decoder_vocab_size).at[EOS_ID].set(4.5)
  return m


@pytest.fixture(scope="module")
def batch(model):
  rng = np.random.default_rng(0)
  points_BxNxT = rng.integers(1, model.config.encoder_vocab_size, (B, N, model.config.point_tokens),
                              dtype=np.int32)
  mask_BxN = np.ones((B, N), bool)
  mask_BxN[1, -2:] = False
  return jnp.asarray(points_BxNxT), jnp.asarray(mask_BxN)


@pytest.fixture(scope="module")
def greedy(model, batch):
  return decode(model, *batch, GREEDY)


def _teacher_forced_log_probs(model, points_BxNxT, mask_BxN, tokens_BxCxL):
  """Sum of log-probs of every non-PAD token after BOS, from one full forward pass."""
  Bt, C, Lt = tokens_BxCxL.shape
  tokens_BCxL = tokens_BxCxL.reshape(Bt * C, Lt)
  logits_BCxLxV = jax.jit(lambda m, *a: m(*a))(model, jnp.repeat(points_BxNxT, C, axis=0),
                                               jnp.repeat(mask_BxN, C, axis=0),
                                               tokens_BCxL[:, :-1])
  log_probs_BCxL = jnp.take_along_axis(jax.nn.log_softmax(logits_BCxLxV),
                                       tokens_BCxL[:, 1:, None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(tokens_BCxL[:, 1:] != PAD_ID, log_probs_BCxL, 0), -1).reshape(Bt, C)


def _check_layout(result, max_len):
  """BOS, then non-special tokens, then EOS (unless max_len was reached) and only PAD after."""
  for row, length in zip(np.asarray(result.tokens_BxCxL).reshape(-1, max_len),
                         np.asarray(result.lengths_BxC).reshape(-1)):
    assert row[0] == BOS_ID
    eos = np.flatnonzero(row == EOS_ID)
    end = eos[0] + 1 if eos.size else max_len
    assert length == end
    assert np.all(row[end:] == PAD_ID)
    assert not np.isin(row[1:end - 1], [PAD_ID, BOS_ID, EOS_ID]).any()


def test_greedy_equals_argmax_loop_without_cache(model, batch, greedy):
  points, mask = batch
  full = jax.jit(lambda m, p, k, t: m(p, k, t))
  tokens_BxL = np.full((B, L), PAD_ID, np.int32)
  tokens_BxL[:, 0] = BOS_ID
  done_B = np.zeros(B, bool)
  for t in range(L - 1):
    logits_BxV = np.array(full(model, points, mask, jnp.asarray(tokens_BxL))[:, t])
    logits_BxV[:, [PAD_ID, BOS_ID]] = -np.inf
    tokens_BxL[:, t + 1] = np.where(done_B, PAD_ID, logits_BxV.argmax(-1))
    done_B |= tokens_BxL[:, t + 1] == EOS_ID
  np.testing.assert_array_equal(greedy.tokens_BxCxL[:, 0], tokens_BxL)
  assert greedy.tokens_BxCxL.shape == (B, 1, L) and greedy.tokens_BxCxL.dtype == jnp.int32


@pytest.mark.parametrize("cfg", [GREEDY, SAMPLE, BEAM], ids=lambda c: c.method)
def test_log_probs_equal_teacher_forcing(model, batch, cfg):
  """The cached loop's log-probs equal a full forward pass over the decoded tokens."""
  result = decode(model, *batch, cfg)
  _check_layout(result, L)
  np.testing.assert_allclose(result.log_probs_BxC,
                             _teacher_forced_log_probs(model, *batch, result.tokens_BxCxL),
                             rtol=1e-4, atol=1e-4)
  generated_BxC = np.asarray(result.lengths_BxC) - 1
  np.testing.assert_allclose(result.scores_BxC,
                             result.log_probs_BxC / generated_BxC ** cfg.length_penalty, rtol=1e-5)


def test_beam_one_equals_greedy(model, batch, greedy):
  beam = decode(model, *batch, dataclasses.replace(BEAM, num_candidates=1))
  np.testing.assert_array_equal(beam.tokens_BxCxL, greedy.tokens_BxCxL)
  np.testing.assert_allclose(beam.log_probs_BxC, greedy.log_probs_BxC, rtol=1e-5)


def _reference_beam(model, points, mask, K, max_len, alpha):
  """Beam search as documented in decoding._beam_search, written independently: plain
  Python over hypotheses, each step's log-probabilities from a full teacher-forced
  forward pass (no cache), finished hypotheses kept in per-input lists."""
  full = jax.jit(lambda m, p, k, t: m(p, k, t))
  B = points.shape[0]
  alive = [[([BOS_ID], 0.0)] for _ in range(B)]  # (tokens, sum log-prob)
  finished = [[] for _ in range(B)]  # (score, tokens, sum log-prob)
  for position in range(max_len - 1):
    if all(len(f) == K for f in finished):
      break
    rows = [(b, tokens, lp) for b in range(B) for tokens, lp in alive[b]]
    tokens_RxL = np.full((len(rows), max_len), PAD_ID, np.int32)
    for r, (_, tokens, _) in enumerate(rows):
      tokens_RxL[r, :len(tokens)] = tokens
    owners = [b for b, _, _ in rows]
    logits = np.asarray(full(model, points[np.array(owners)], mask[np.array(owners)],
                             jnp.asarray(tokens_RxL)))[:, position].astype(np.float64)
    log_probs = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1,
                                       keepdims=True)) - logits.max(-1, keepdims=True)
    log_probs[:, [PAD_ID, BOS_ID]] = -np.inf
    for b in range(B):
      expansions = sorted(((lp + log_probs[r, w], tokens + [w])
                           for r, (owner, tokens, lp) in enumerate(rows) if owner == b
                           for w in range(log_probs.shape[1])), key=lambda e: -e[0])[:2 * K]
      if len(finished[b]) < K:
        non_eos = 0
        for lp, tokens in expansions:
          if tokens[-1] == EOS_ID and non_eos < K and np.isfinite(lp):
            finished[b].append((lp / (position + 1) ** alpha, tokens, lp))
          non_eos += tokens[-1] != EOS_ID
        finished[b] = sorted(finished[b], key=lambda f: -f[0])[:K]
      alive[b] = [(tokens, lp) for lp, tokens in expansions if tokens[-1] != EOS_ID][:K]
  for b in range(B):
    if len(finished[b]) < K:  # not done at max_len: alive beams compete too
      finished[b] = sorted(finished[b] + [(lp / (max_len - 1) ** alpha, tokens, lp)
                                          for tokens, lp in alive[b]],
                           key=lambda f: -f[0])[:K]
  return finished


@pytest.mark.parametrize("K, alpha", [(3, 1.0), (4, 0.7)])
def test_beam_search_equals_an_independent_implementation(model, batch, K, alpha):
  cfg = DecodeConfig("beam", num_candidates=K, max_len=L, length_penalty=alpha)
  result = decode(model, *batch, cfg)
  expected = _reference_beam(model, *batch, K, L, alpha)
  for b, hypotheses in enumerate(expected):
    for k, (score, tokens, log_prob) in enumerate(hypotheses):
      row = np.asarray(result.tokens_BxCxL)[b, k]
      np.testing.assert_array_equal(row[:len(tokens)], tokens)
      assert np.all(row[len(tokens):] == PAD_ID)
      assert float(result.scores_BxC[b, k]) == pytest.approx(score, rel=1e-4, abs=1e-4)
      assert float(result.log_probs_BxC[b, k]) == pytest.approx(log_prob, rel=1e-4, abs=1e-4)


def test_beam_is_sorted_distinct_and_ends(model, batch):
  beam = decode(model, *batch, BEAM)
  scores_BxK = np.asarray(beam.scores_BxC)
  assert np.all(np.diff(scores_BxK, axis=1) <= 0)
  assert np.all(np.isfinite(scores_BxK))
  for candidates_KxL in np.asarray(beam.tokens_BxCxL):
    assert len({tuple(c) for c in candidates_KxL}) == BEAM.num_candidates
  assert np.any(np.asarray(beam.lengths_BxC) < L)  # some hypotheses finished with EOS


@pytest.mark.parametrize("cfg", [
    dataclasses.replace(SAMPLE, temperature=1e-6),
    dataclasses.replace(SAMPLE, top_k=1),
    dataclasses.replace(SAMPLE, top_p=1e-6),
], ids=["temperature", "top_k", "top_p"])
def test_sampling_limits_equal_greedy(model, batch, greedy, cfg):
  sampled = decode(model, *batch, cfg)
  np.testing.assert_array_equal(
      sampled.tokens_BxCxL, jnp.repeat(greedy.tokens_BxCxL, cfg.num_candidates, axis=1))


def test_sampling_seeds(model, batch):
  a = decode(model, *batch, SAMPLE)
  np.testing.assert_array_equal(a.tokens_BxCxL, decode(model, *batch, SAMPLE).tokens_BxCxL)
  np.testing.assert_array_equal(
      a.tokens_BxCxL, decode(model, *batch, SAMPLE, jax.random.key(SAMPLE.seed)).tokens_BxCxL)
  b = decode(model, *batch, dataclasses.replace(SAMPLE, seed=1))
  assert not np.array_equal(a.tokens_BxCxL, b.tokens_BxCxL)
  # Candidates of one input differ from each other.
  assert len({tuple(c) for c in np.asarray(a.tokens_BxCxL).reshape(-1, L)}) > B


def test_truncate_keeps_top_k_and_nucleus():
  logits_1xV = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = lambda k, p: np.isfinite(np.asarray(decoding._truncate(logits_1xV, k, p)))[0].tolist()
  assert kept(2, 1.0) == [True, True, False, False]
  assert kept(0, 0.5) == [True, False, False, False]
  assert kept(0, 0.8) == [True, True, False, False]
  assert kept(0, 0.81) == [True, True, True, False]
  assert kept(1, 0.9) == [True, False, False, False]


def test_argmax_matches_numpy_with_ties_and_masked_rows():
  rng = np.random.default_rng(0)
  x = rng.integers(-3, 4, size=(64, 300)).astype(np.float32)  # many ties
  x[::5] = np.where(rng.random((13, 300)) < 0.9, -np.inf, x[::5])
  x[7] = -np.inf  # every token masked
  np.testing.assert_array_equal(np.asarray(decoding._argmax(jnp.asarray(x))),
                                np.argmax(x, axis=-1))


def test_decode_under_mesh_matches_single_device(model, batch, greedy):
  mesh = make_mesh(MeshConfig(data=2, fsdp=1, tensor=1), jax.devices()[:2])
  points = jnp.concatenate([batch[0], batch[0][:1]])  # batch 4: divisible by the data axis
  mask = jnp.concatenate([batch[1], batch[1][:1]])
  with jax.set_mesh(mesh), nnx.logical_axis_rules(DEFAULT_RULES):
    data = [jax.device_put(a, batch_sharding(mesh, DEFAULT_RULES, a.ndim)) for a in (points, mask)]
    sharded = decode(model, *data, GREEDY)
  np.testing.assert_array_equal(sharded.tokens_BxCxL[:B], greedy.tokens_BxCxL)


def test_to_prefixes_marks_invalid():
  good = tokens.encode_expression(["add", "x_0", "sin", "x_1"])
  tokens_BxCxL = np.full((2, 2, 12), PAD_ID, np.int32)
  tokens_BxCxL[0, 0, :len(good)] = good
  tokens_BxCxL[0, 1, :4] = [BOS_ID, tokens.DECODER_VOCAB.ids["add"], tokens.DECODER_VOCAB.ids["x_0"],
                            EOS_ID]  # add with one operand
  tokens_BxCxL[1, 0, :len(good) - 1] = good[:-1]  # no EOS: cut at max_len
  tokens_BxCxL[1, 1, :len(good)] = good
  prefixes, invalid = to_prefixes(tokens_BxCxL)
  assert prefixes == [[["add", "x_0", "sin", "x_1"], None], [None, ["add", "x_0", "sin", "x_1"]]]
  assert invalid == 2


def test_config_errors(model, batch):
  with pytest.raises(ValueError):
    DecodeConfig("nucleus")
  with pytest.raises(ValueError):
    DecodeConfig("greedy", num_candidates=2)
  with pytest.raises(ValueError):
    DecodeConfig("sample", temperature=0.0)
  with pytest.raises(ValueError):
    decode(model, *batch, DecodeConfig(max_len=model.config.max_target_len + 1))


def _completes(words, max_len):
  """Independent oracle: can `words` (BOS first) be completed into a formula that
  tokens.decode_expression accepts, EOS included, within max_len tokens? Completes a
  started float, then fills every missing operand with x_0."""
  words = list(words)
  if words[-1] in tokens.SIGN_WORDS:
    words += ["N1000", "E0"]
  elif words[-1] in tokens.MANTISSA_WORDS:
    words += ["E0"]
  if words[-1] == tokens.EOS:
    completed = words
  else:
    needed = 1
    i = 1
    while i < len(words):
      w = words[i]
      if w in tokens.SIGN_WORDS:
        needed -= 1
        i += 3
        continue
      needed += (operators.OPERATORS[w].arity - 1
                 if w in operators.OPERATORS else -1)
      i += 1
    if needed < 0:
      return False
    completed = words + ["x_0"] * needed + [tokens.EOS]
  if len(completed) > max_len:
    return False
  try:
    ids = tokens.DECODER_VOCAB.encode_words(completed)
    tokens.decode_expression(ids)
  except Exception:
    return False
  return True


def test_grammar_mask_allows_exactly_the_completable_tokens():
  rng = np.random.default_rng(0)
  vocab = tokens.DECODER_VOCAB
  candidates = ["add", "mul", "sin", "x_1", "+", "N1234", "E-2", tokens.EOS, "pow2"]
  max_len = 12
  for _ in range(30):
    words = [tokens.BOS]
    while True:  # a random valid partial sequence, grown with the mask itself
      row = np.full((1, max_len), PAD_ID, np.int32)
      row[0, :len(words)] = vocab.encode_words(words)
      mask = np.asarray(grammar.grammar_mask(jnp.asarray(row), jnp.int32(len(words) - 1)))[0]
      for word in candidates:
        assert mask[vocab.ids[word]] == _completes(words + [word], max_len), (words, word)
      allowed = np.flatnonzero(mask)
      choice = vocab.words[int(rng.choice(allowed))]
      words.append(choice)
      if choice == tokens.EOS:
        break
    assert tokens.decode_expression(vocab.encode_words(words)) and len(words) <= max_len


@pytest.mark.parametrize("method, count", [("greedy", 1), ("sample", 4), ("beam", 3)])
def test_constrained_decoding_always_parses(method, count):
  """An untrained full-vocabulary model writes junk unconstrained; constrained, every
  candidate is a valid formula, even with little room (max_len 12)."""
  model = Transformer(model_config("debug", max_target_len=16), rngs=nnx.Rngs(1))
  points = jnp.asarray(np.random.default_rng(0).integers(
      1, model.config.encoder_vocab_size, (2, N, model.config.point_tokens), dtype=np.int32))
  mask = jnp.ones((2, N), bool)
  cfg = DecodeConfig(method, num_candidates=count, max_len=12, constrained=True)
  result = decode(model, points, mask, cfg)
  prefixes, invalid = to_prefixes(result.tokens_BxCxL)
  assert invalid == 0 and all(p for row in prefixes for p in row)
  # Random point tokens fill all 10 x slots; real inputs with D < 10 pad the rest.
  assert np.all(np.asarray(decoding.input_dimensions(points)) == 10)
  _, invalid_free = to_prefixes(decode(model, points, mask, dataclasses.replace(
      cfg, constrained=False)).tokens_BxCxL)
  assert invalid_free > 0
  with pytest.raises(ValueError, match="decoder vocabulary"):
    small = Transformer(model_config("debug", decoder_vocab_size=64, output_layer="full"), rngs=nnx.Rngs(0))
    decode(small, points, mask, cfg)


def test_constrained_decoding_reads_only_the_input_features():
  model = Transformer(model_config("debug", max_target_len=32), rngs=nnx.Rngs(2))
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, N, 2))
  samples = [type("S", (), {"x": x[b], "y": x[b, :, 0]})() for b in range(2)]
  points = jnp.asarray(data.tokenize_points(samples, N))
  assert np.all(np.asarray(decoding.input_dimensions(points)) == 2)
  cfg = DecodeConfig("sample", num_candidates=8, max_len=24, constrained=True)
  prefixes, invalid = to_prefixes(decode(model, points, jnp.ones((2, N), bool), cfg).tokens_BxCxL)
  assert invalid == 0
  used = set().union(*(expressions.variables_used(p) for row in prefixes for p in row))
  assert used and used <= {0, 1}


@pytest.mark.parametrize("constrained", [False, True])
def test_greedy_first_row_is_the_greedy_decode(constrained):
  """Sampling with greedy_first: row 0 of each input equals a separate greedy decode,
  the other rows are samples (they differ from it and from each other)."""
  model = Transformer(model_config("debug", max_target_len=32), rngs=nnx.Rngs(3))
  points = jnp.asarray(np.random.default_rng(2).integers(
      1, model.config.encoder_vocab_size, (2, N, model.config.point_tokens), dtype=np.int32))
  mask = jnp.ones((2, N), bool)
  greedy = decode(model, points, mask, DecodeConfig("greedy", max_len=24,
                                                    constrained=constrained))
  mixed = decode(model, points, mask, DecodeConfig(
      "sample", num_candidates=5, max_len=24, constrained=constrained, greedy_first=True))
  np.testing.assert_array_equal(mixed.tokens_BxCxL[:, 0], greedy.tokens_BxCxL[:, 0])
  np.testing.assert_allclose(mixed.log_probs_BxC[:, 0], greedy.log_probs_BxC[:, 0],
                             rtol=1e-5)
  rows = {tuple(r) for r in np.asarray(mixed.tokens_BxCxL).reshape(-1, 24)}
  assert len(rows) > 2 + 2
  with pytest.raises(ValueError, match="greedy_first"):
    DecodeConfig("beam", num_candidates=2, greedy_first=True)


def _constrained_log_probs(model, points, mask, tokens_BxCxL):
  """Sum over generated tokens of log softmax over the tokens grammar_mask allows,
  from one full-vocabulary teacher-forced pass: the reference for the decoder's
  vocabulary-split constrained step."""
  B, C, L = tokens_BxCxL.shape
  rows_BCxL = jnp.asarray(tokens_BxCxL).reshape(B * C, L)
  logits_BCxLxV = jax.jit(lambda m, p, k, t: m(p, k, t))(
      model, jnp.repeat(points, C, axis=0), jnp.repeat(mask, C, axis=0), rows_BCxL[:, :-1])
  dims_BC = jnp.repeat(decoding.input_dimensions(points), C, axis=0)
  total_BC = np.zeros(B * C)
  for t in range(L - 1):
    allowed_BCxV = grammar.grammar_mask(rows_BCxL, jnp.int32(t), dims_BC)
    log_probs_BCxV = jax.nn.log_softmax(jnp.where(allowed_BCxV, logits_BCxLxV[:, t], -jnp.inf))
    next_BC = rows_BCxL[:, t + 1]
    chosen = np.asarray(jnp.take_along_axis(log_probs_BCxV, next_BC[:, None], axis=1)[:, 0])
    total_BC += np.where(np.asarray(next_BC) == PAD_ID, 0.0, chosen)
  return total_BC.reshape(B, C)


def test_constrained_step_matches_the_full_vocabulary():
  """The constrained loop computes mantissa logits only for the rows that need them,
  in compacted chunks of 8 rows here (32 rows per step): its greedy tokens and the
  log-probabilities of its samples equal the full-vocabulary masked computation."""
  model = Transformer(model_config("debug", max_target_len=32), rngs=nnx.Rngs(4))
  signs = [tokens.DECODER_VOCAB.ids[w] for w in tokens.SIGN_WORDS]
  model.output_bias[...] = model.output_bias[...].at[jnp.asarray(signs)].set(3.0)  # floats
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, N, 3))
  samples = [type("S", (), {"x": x[b], "y": np.sin(x[b, :, 0])})() for b in range(2)]
  points = jnp.asarray(data.tokenize_points(samples, N))
  mask = jnp.ones((2, N), bool)
  sampled = decode(model, points, mask, DecodeConfig("sample", num_candidates=16, max_len=24,
                                                     constrained=True))
  np.testing.assert_allclose(sampled.log_probs_BxC,
                             _constrained_log_probs(model, points, mask, sampled.tokens_BxCxL),
                             rtol=1e-4, atol=1e-4)
  words_BCxL = np.asarray(sampled.tokens_BxCxL).reshape(32, 24)
  # Some step had more rows needing a mantissa than one chunk holds.
  assert np.isin(words_BCxL, grammar.vocab_split()[0]).sum(axis=0).max() > 8
  greedy = decode(model, points, mask, DecodeConfig("greedy", max_len=24, constrained=True))
  tokens_BxL = np.full((2, 24), PAD_ID, np.int32)
  tokens_BxL[:, 0] = BOS_ID
  full = jax.jit(lambda m, p, k, t: m(p, k, t))
  dims_B = decoding.input_dimensions(points)
  for t in range(23):
    logits_BxV = full(model, points, mask, jnp.asarray(tokens_BxL))[:, t]
    allowed_BxV = grammar.grammar_mask(jnp.asarray(tokens_BxL), jnp.int32(t), dims_B)
    done_B = (tokens_BxL == EOS_ID).any(axis=1)
    tokens_BxL[:, t + 1] = np.where(done_B, PAD_ID, np.argmax(
        np.where(allowed_BxV, logits_BxV, -np.inf), axis=-1))
  np.testing.assert_array_equal(greedy.tokens_BxCxL[:, 0], tokens_BxL)


def test_two_level_sampling_follows_the_softmax():
  """_sample_rows (block by mass, then token in block) draws from softmax(logits):
  frequencies over 200k rows match it; masked tokens never come, even at u -> 1."""
  logits_V = np.random.default_rng(4).normal(size=37)  # 7 blocks of 6, the last padded
  logits_V[[0, 5, 36]] = -np.inf
  rows = 200_000
  uniform_Rx2 = jax.random.uniform(jax.random.key(0), (rows, 2))
  drawn_R = np.asarray(decoding._sample_rows(
      uniform_Rx2, jnp.broadcast_to(jnp.asarray(logits_V, jnp.float32), (rows, 37))))
  probs_V = np.asarray(jax.nn.softmax(jnp.asarray(logits_V)))
  counts_V = np.bincount(drawn_R, minlength=37)
  assert counts_V[[0, 5, 36]].sum() == 0
  sigma_V = np.sqrt(rows * probs_V * (1 - probs_V)) + 1
  assert np.all(np.abs(counts_V - rows * probs_V) < 5 * sigma_V)
  edge = decoding._sample_rows(jnp.full((1, 2), 1 - 2**-24),
                               jnp.asarray(logits_V, jnp.float32)[None])
  assert int(edge[0]) == 35
