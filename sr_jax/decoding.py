"""Candidate generation (reference.md section 5.2): greedy, sampling and beam search.

Each method is one `lax.while_loop` over a `flax.struct.dataclass` state with the model's
self-attention KV cache (wmt/t5x structure). The encoder and the cross-attention K/V run once
per input; the decoder runs batched over (inputs x candidates), flattened B-major, and the C
candidate rows of an input attend to its K/V as one group of queries. `decode` splits the
NNX model into (graphdef, state) and calls one `jax.jit` with graphdef and the DecodeConfig
static: one compile per (model structure, config, input shapes).

Conventions shared by all methods:
- PAD and BOS are never emitted (masked out before choosing), so every row is BOS, generated
  tokens, EOS (unless max_len was reached first), then PAD.
- `log_probs_BxC` is the sum over generated tokens (EOS included) of log softmax(logits) of the
  model itself: no temperature, no top-k/top-p truncation, no PAD/BOS masking. It is what a
  teacher-forced forward pass gives, and is comparable across methods. A grammar-factored
  model's softmax is over the word group its previous word allows (grammar.py). Constrained, the
  softmax is over the tokens the grammar allows at each step (the model restricted to
  valid formulas), so the mantissa logits are only computed where one can come.
- `scores_BxC` = log_probs / (lengths - 1) ** length_penalty, E2E's beam score (lengths - 1
  generated tokens equals E2E's len(hyp): BOS plus tokens, EOS excluded).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from sr_jax import expressions, grammar
from sr_jax.model import Transformer
from sr_jax.tokens import BOS, DECODER_VOCAB, ENCODER_VOCAB, EOS, INPUT_PAD, TOKENS_PER_FLOAT
from sr_jax.tokens import decode_expression

PAD_ID = DECODER_VOCAB.pad_id
BOS_ID = DECODER_VOCAB.ids[BOS]
EOS_ID = DECODER_VOCAB.ids[EOS]
METHODS = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How to decode. num_candidates: samples per input, or the beam size (1 for greedy).
  max_len counts BOS and EOS (128, as the training targets) and must fit the model's
  max_target_len. length_penalty is alpha in score = sum log p / len ** alpha.
  constrained: every step masks the tokens after which no valid formula could end by
  max_len, and variables the input lacks (see `grammar_mask`), so every candidate
  parses and reads only its data's features; E2E decodes unconstrained
  and drops the invalid ones. Needs the model to use tokens.DECODER_VOCAB.
  greedy_first (sampling only): candidate 0 of every input is the greedy decode, in
  the same loop as the samples (E2E always adds one; a separate greedy loop cost a
  quarter of the sampling loop's time)."""
  method: str = "greedy"
  num_candidates: int = 1
  temperature: float = 1.0
  top_k: int = 0  # 0: off
  top_p: float = 1.0  # 1.0: off
  length_penalty: float = 1.0
  max_len: int = 128
  seed: int = 0
  constrained: bool = False  # only tokens that keep the sequence a valid formula
  greedy_first: bool = False

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"unknown method {self.method!r}; choose from {METHODS}")
    if self.num_candidates < 1 or (self.method == "greedy" and self.num_candidates != 1):
      raise ValueError(f"bad num_candidates {self.num_candidates} for {self.method}")
    if self.temperature <= 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
      raise ValueError(f"bad sampling settings {self}")
    if self.max_len < 2:
      raise ValueError(f"max_len {self.max_len} leaves no room after BOS")
    if self.greedy_first and self.method != "sample":
      raise ValueError("greedy_first only applies to method='sample'")


@struct.dataclass
class DecodeResult:
  """C candidates per input (greedy: C=1); beam candidates are sorted by score, best first."""
  tokens_BxCxL: jax.Array
  lengths_BxC: jax.Array  # non-PAD tokens: BOS through EOS
  log_probs_BxC: jax.Array
  scores_BxC: jax.Array


@struct.dataclass
class _SampleState:
  position: jax.Array  # index of the last token written
  tokens_BxL: jax.Array
  done_B: jax.Array
  log_probs_B: jax.Array
  cache: dict


@struct.dataclass
class _BeamState:
  position: jax.Array
  alive_tokens_BxKxL: jax.Array
  alive_log_probs_BxK: jax.Array
  cache: dict  # batch B*K, in the order of the alive beams
  finished_tokens_BxKxL: jax.Array
  finished_log_probs_BxK: jax.Array
  finished_scores_BxK: jax.Array  # -inf for an empty slot


def decode(model: Transformer, points_BxNxT: jax.Array, point_mask_BxN: jax.Array,
           cfg: DecodeConfig, rng: jax.Array | None = None) -> DecodeResult:
  """Candidates for each input. rng drives sampling only: one key per input (shape B),
  so an input's samples do not depend on the other inputs of the batch, or one key
  (default key(cfg.seed)) split into B."""
  if cfg.max_len > model.config.max_target_len:
    raise ValueError(f"max_len {cfg.max_len} exceeds max_target_len "
                     f"{model.config.max_target_len}")
  if cfg.constrained and model.config.decoder_vocab_size != len(DECODER_VOCAB):
    raise ValueError("constrained decoding needs the model's decoder vocabulary to be "
                     f"tokens.DECODER_VOCAB ({len(DECODER_VOCAB)} words); the model has "
                     f"{model.config.decoder_vocab_size}")
  graphdef, state = nnx.split(model)
  rng = jax.random.key(cfg.seed) if rng is None else rng
  if rng.ndim == 0:
    rng = jax.random.split(rng, points_BxNxT.shape[0])
  elif rng.shape != points_BxNxT.shape[:1]:
    raise ValueError(f"rng holds {rng.shape} keys for {points_BxNxT.shape[0]} inputs")
  return _decode_jit(graphdef, state, points_BxNxT, point_mask_BxN, rng, cfg)


# XLA:CPU's default copy insertion copies a loop-carried buffer that an iteration both
# reads and updates in place: the whole KV cache, several times per step (the copies
# took ~80% of a CPU decoding step). Region analysis proves the in-place update safe.
# Other backends ignore the option.
IN_PLACE_LOOPS = {"xla_cpu_copy_insertion_use_region_analysis": True}


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg"), compiler_options=IN_PLACE_LOOPS)
def _decode_jit(graphdef, state, points_BxNxT, point_mask_BxN, rng, cfg: DecodeConfig):
  model = nnx.merge(graphdef, state)
  B, C = points_BxNxT.shape[0], cfg.num_candidates
  # Rows are B-major (input b's candidates are rows b*C .. b*C+C-1); they share their
  # input's cross-attention K/V, computed once.
  cache = (model.init_cache(B * C, cfg.max_len)
           | model.precompute_cross_kv(model.encode(points_BxNxT, point_mask_BxN)))
  dims_BC = jnp.repeat(input_dimensions(points_BxNxT), C, axis=0)
  if cfg.method == "beam":
    tokens_BxCxL, log_probs_BxC = _beam_search(model, cache, point_mask_BxN, dims_BC, cfg)
  else:
    tokens_BCxL, log_probs_BC = _sample(model, cache, point_mask_BxN, dims_BC, cfg, rng)
    tokens_BxCxL = tokens_BCxL.reshape(B, C, cfg.max_len)
    log_probs_BxC = log_probs_BC.reshape(B, C)
  lengths_BxC = jnp.sum(tokens_BxCxL != PAD_ID, axis=-1, dtype=jnp.int32)
  return DecodeResult(tokens_BxCxL, lengths_BxC, log_probs_BxC,
                      _score(log_probs_BxC, lengths_BxC - 1, cfg.length_penalty))


def _score(log_probs, generated, length_penalty):
  return log_probs / jnp.maximum(generated, 1).astype(jnp.float32) ** length_penalty


def _mask_specials(logits_BxV: jax.Array) -> jax.Array:
  """PAD and BOS are never outputs."""
  special_V = (jnp.arange(logits_BxV.shape[-1]) == PAD_ID) | (jnp.arange(logits_BxV.shape[-1])
                                                              == BOS_ID)
  return jnp.where(special_V, -jnp.inf, logits_BxV)


def _truncate(logits_BxV: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Top-k, then nucleus (smallest set of tokens whose probability reaches top_p)."""
  if top_k:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  if top_p < 1.0:
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    keep_B = jnp.sum(jnp.cumsum(probs_BxV, axis=-1) - probs_BxV < top_p, axis=-1)
    min_kept_Bx1 = jnp.take_along_axis(sorted_BxV, keep_B[:, None] - 1, axis=-1)
    logits_BxV = jnp.where(logits_BxV < min_kept_Bx1, -jnp.inf, logits_BxV)
  return logits_BxV


def _sample_rows(uniform_Bx2: jax.Array, logits_BxV: jax.Array) -> jax.Array:
  """One token per row from softmax(logits), by inverting the CDF with two uniforms per
  row: the first picks a block of ~sqrt(V) tokens by its mass, the second a token in it.
  Exact sampling, without the B x V Gumbel draws of jax.random.categorical nor a
  vocabulary-wide cumulative sum, which dominate a decoding step on CPU."""
  B, V = logits_BxV.shape
  block = math.isqrt(V - 1) + 1
  num_blocks = -(-V // block)
  padded_BxP = jnp.pad(logits_BxV, ((0, 0), (0, num_blocks * block - V)),
                       constant_values=-jnp.inf)
  probs_BxNxK = jnp.exp(padded_BxP - jnp.max(logits_BxV, axis=-1, keepdims=True)).reshape(
      B, num_blocks, block)
  block_B = _invert_cdf(uniform_Bx2[:, 0], jnp.sum(probs_BxNxK, axis=-1))
  in_block_BxK = jnp.take_along_axis(probs_BxNxK, block_B[:, None, None], axis=1)[:, 0]
  return block_B * block + _invert_cdf(uniform_Bx2[:, 1], in_block_BxK)


def _invert_cdf(uniform_B: jax.Array, weights_BxK: jax.Array) -> jax.Array:
  """Index i with cdf[i-1] <= u * total < cdf[i]: never a zero-weight entry, even when
  rounding makes u * total reach the total."""
  cdf_BxK = jnp.cumsum(weights_BxK, axis=-1)
  index_B = jnp.sum(cdf_BxK <= uniform_B[:, None] * cdf_BxK[:, -1:], axis=-1)
  last_positive_B = weights_BxK.shape[-1] - 1 - jnp.argmax(weights_BxK[:, ::-1] > 0, axis=-1)
  return jnp.minimum(index_B, last_positive_B)


def _choose(logits_BxV: jax.Array, uniform_Bx2: jax.Array, greedy_B: jax.Array,
            cfg: DecodeConfig) -> jax.Array:
  """The next token of each row (an index into the logits' last axis): the argmax for
  greedy rows, else a sample."""
  index_B = _argmax(logits_BxV)
  if cfg.method != "greedy":
    index_B = jnp.where(greedy_B, index_B, _sample_rows(uniform_Bx2, _truncate(
        logits_BxV / cfg.temperature, cfg.top_k, cfg.top_p)))
  return index_B.astype(jnp.int32)


def _argmax(x_BxV: jax.Array) -> jax.Array:
  """jnp.argmax over the last axis (first index of the maximum) as two plain
  reductions: XLA:CPU runs argmax's joint (value, index) reduction ~10x slower, and on
  the 10,000 mantissa logits it took a fifth of a decoding step."""
  iota_BxV = jax.lax.broadcasted_iota(jnp.int32, x_BxV.shape, x_BxV.ndim - 1)
  is_max_BxV = x_BxV == jnp.max(x_BxV, axis=-1, keepdims=True)
  return jnp.min(jnp.where(is_max_BxV, iota_BxV, x_BxV.shape[-1] - 1), axis=-1)


def _log_prob(logits_BxV: jax.Array, index_B: jax.Array) -> jax.Array:
  """log softmax(logits) at each row's index (no temperature, no truncation)."""
  return jnp.take_along_axis(jax.nn.log_softmax(logits_BxV), index_B[:, None], axis=-1)[:, 0]


def input_dimensions(points_BxNxT: jax.Array) -> jax.Array:
  """Features per input, read off the first point's tokens: x slots (3 tokens each)
  holding INPUT_PAD are missing dimensions."""
  x_slots_BxD = points_BxNxT[:, 0, :-TOKENS_PER_FLOAT:TOKENS_PER_FLOAT]
  return jnp.sum(x_slots_BxD != ENCODER_VOCAB.ids[INPUT_PAD], axis=1)


def _initial_tokens(batch: int, max_len: int) -> jax.Array:
  return jnp.full((batch, max_len), PAD_ID, jnp.int32).at[:, 0].set(BOS_ID)


def _sample(model, cache, mask_BxN, dims_BC, cfg: DecodeConfig, rng_B):
  """Greedy (argmax) or ancestral sampling from softmax(logits / temperature), for
  B*C rows reading B inputs."""
  BC, L = dims_BC.shape[0], cfg.max_len
  greedy_B = cfg.greedy_first & (jnp.arange(BC) % cfg.num_candidates == 0)

  def cond(s: _SampleState):
    return (s.position < L - 1) & ~jnp.all(s.done_B)

  def body(s: _SampleState):
    token_Bx1 = jax.lax.dynamic_slice_in_dim(s.tokens_BxL, s.position, 1, axis=1)
    hidden_BxD, cache = model.decode_step(token_Bx1, s.cache, None, mask_BxN, s.position)
    # Each input's C rows draw from that input's own key.
    uniform_Bx2 = jax.vmap(lambda key: jax.random.uniform(
        jax.random.fold_in(key, s.position), (cfg.num_candidates, 2)))(rng_B).reshape(BC, 2)
    if cfg.constrained:
      next_B, log_prob_B = _constrained_step(model, hidden_BxD, s, dims_BC, uniform_Bx2,
                                             greedy_B, cfg)
    else:
      logits_BxV = _model_logits(model, hidden_BxD, token_Bx1[:, 0])
      next_B = _choose(_mask_specials(logits_BxV), uniform_Bx2, greedy_B, cfg)
      # The model's own log-probability: PAD and BOS are masked only for choosing.
      log_prob_B = _log_prob(logits_BxV, next_B)
    next_B = jnp.where(s.done_B, PAD_ID, next_B).astype(jnp.int32)
    tokens_BxL = jax.lax.dynamic_update_slice_in_dim(s.tokens_BxL, next_B[:, None],
                                                     s.position + 1, axis=1)
    return _SampleState(s.position + 1, tokens_BxL, s.done_B | (next_B == EOS_ID),
                        s.log_probs_B + jnp.where(s.done_B, 0.0, log_prob_B), cache)

  init = _SampleState(jnp.int32(0), _initial_tokens(BC, L), jnp.zeros(BC, bool),
                      jnp.zeros(BC, jnp.float32), cache)
  final = jax.lax.while_loop(cond, body, init)
  return final.tokens_BxL, final.log_probs_B


def _model_logits(model, hidden_BxD: jax.Array, previous_B: jax.Array) -> jax.Array:
  """The model's own logits over the whole vocabulary: a grammar-factored model
  (ModelConfig.output_layer) defines a distribution over the group of words its previous
  word allows only, so the others are -inf."""
  logits_BxV = model.output_logits(hidden_BxD)
  if model.config.output_layer == "factored":
    logits_BxV = jnp.where(grammar.group_mask(previous_B), logits_BxV, -jnp.inf)
  return logits_BxV


def _constrained_step(model, hidden_BxD, s: _SampleState, dims_B, uniform_Bx2, greedy_B,
                      cfg: DecodeConfig) -> tuple[jax.Array, jax.Array]:
  """Next token and its log-probability under the model restricted to the tokens the
  grammar allows. The grammar splits the vocabulary: after a sign word only the 10,000
  mantissa words may come, otherwise none of them. So every row gets logits over the
  234 other words, and only the rows that need a mantissa (about one in six) get the
  mantissa logits, in compacted chunks of ~B/16 rows: a step's vocabulary-wide work
  shrinks ~4x."""
  mantissa_ids, other_ids = grammar.vocab_split()
  B = hidden_BxD.shape[0]
  allowed_BxO = grammar.grammar_mask(s.tokens_BxL, s.position, dims_B, other_ids)
  logits_BxO = jnp.where(allowed_BxO, model.output_logits(hidden_BxD, other_ids), -jnp.inf)
  wants_mantissa_B = ~jnp.any(allowed_BxO, axis=-1)  # only a mantissa may come next
  # Rows that need a mantissa choose among zeros here (no NaN); the mantissa pass below
  # overwrites their token and log-probability.
  logits_BxO = jnp.where(wants_mantissa_B[:, None], 0.0, logits_BxO)
  index_B = _choose(logits_BxO, uniform_Bx2, greedy_B, cfg)
  next_B = jnp.asarray(other_ids, jnp.int32)[index_B]
  log_prob_B = _log_prob(logits_BxO, index_B)

  chunk = min(B, max(8, -(-B // 128) * 8))  # ~B/16 rows
  rank_B = jnp.cumsum(wants_mantissa_B) - 1
  num_chunks = (jnp.sum(wants_mantissa_B) + chunk - 1) // chunk

  def mantissa_chunk(carry):
    j, next_B, log_prob_B = carry
    slot_B = jnp.where(wants_mantissa_B & (rank_B // chunk == j), rank_B % chunk, chunk)
    rows_M = jnp.full(chunk, B, jnp.int32).at[slot_B].set(jnp.arange(B, dtype=jnp.int32),
                                                          mode="drop")
    take = functools.partial(jnp.take, indices=rows_M, axis=0, mode="clip")
    logits_MxV = model.output_logits(take(hidden_BxD), mantissa_ids)
    index_M = _choose(logits_MxV, take(uniform_Bx2), take(greedy_B), cfg)
    log_prob_M = _log_prob(logits_MxV, index_M)
    next_B = next_B.at[rows_M].set(jnp.asarray(mantissa_ids, jnp.int32)[index_M],
                                   mode="drop")
    return j + 1, next_B, log_prob_B.at[rows_M].set(log_prob_M, mode="drop")

  _, next_B, log_prob_B = jax.lax.while_loop(lambda c: c[0] < num_chunks, mantissa_chunk,
                                             (jnp.int32(0), next_B, log_prob_B))
  return next_B, log_prob_B


def _beam_search(model, cache, mask_BxN, dims_BK, cfg: DecodeConfig):
  """E2E's (XLM's) beam search with early stopping: each step takes the top 2K expansions of
  the K alive beams; EOS expansions ranked before the K-th non-EOS one become finished
  hypotheses, the top K non-EOS ones stay alive. An input is done once it has K finished
  hypotheses; at max_len, an input's alive beams join its finished ones. Returns the K best
  finished hypotheses by length-penalized score. Constrained, log-probabilities are
  those of the model restricted to the allowed tokens (renormalised over them)."""
  K, L, alpha = cfg.num_candidates, cfg.max_len, cfg.length_penalty
  B = mask_BxN.shape[0]

  def gather_BxK(x_BxMx, idx_BxK):
    return jnp.take_along_axis(x_BxMx, idx_BxK.reshape(idx_BxK.shape + (1,) * (x_BxMx.ndim - 2)),
                               axis=1)

  def done(s: _BeamState):
    return jnp.all(s.finished_scores_BxK > -jnp.inf, axis=1)

  def cond(s: _BeamState):
    return (s.position < L - 1) & ~jnp.all(done(s))

  def body(s: _BeamState):
    token_BKx1 = jax.lax.dynamic_slice_in_dim(s.alive_tokens_BxKxL.reshape(B * K, L), s.position,
                                              1, axis=1)
    hidden_BKxD, cache = model.decode_step(token_BKx1, s.cache, None, mask_BxN, s.position)
    logits_BKxV = _model_logits(model, hidden_BKxD, token_BKx1[:, 0])
    V = logits_BKxV.shape[-1]
    if cfg.constrained:
      log_probs_BKxV = jax.nn.log_softmax(jnp.where(
          grammar.grammar_mask(s.alive_tokens_BxKxL.reshape(B * K, L), s.position, dims_BK),
          logits_BKxV, -jnp.inf))
    else:
      log_probs_BKxV = _mask_specials(jax.nn.log_softmax(logits_BKxV))
    log_probs_BxKxV = log_probs_BKxV.reshape(B, K, V)
    expanded_BxKV = (s.alive_log_probs_BxK[..., None] + log_probs_BxKxV).reshape(B, K * V)
    top_log_probs_Bx2K, top_idx_Bx2K = jax.lax.top_k(expanded_BxKV, 2 * K)
    beam_Bx2K, token_Bx2K = top_idx_Bx2K // V, (top_idx_Bx2K % V).astype(jnp.int32)
    tokens_Bx2KxL = jax.lax.dynamic_update_slice_in_dim(
        gather_BxK(s.alive_tokens_BxKxL, beam_Bx2K), token_Bx2K[..., None], s.position + 1,
        axis=2)
    eos_Bx2K = token_Bx2K == EOS_ID
    non_eos_before_Bx2K = jnp.cumsum(~eos_Bx2K, axis=1) - ~eos_Bx2K
    new_finished_Bx2K = eos_Bx2K & (non_eos_before_Bx2K < K) & (top_log_probs_Bx2K > -jnp.inf)
    new_scores_Bx2K = jnp.where(new_finished_Bx2K,
                                _score(top_log_probs_Bx2K, s.position + 1, alpha), -jnp.inf)
    # Alive: the K best non-EOS expansions, with their caches.
    _, alive_Bx2K_idx_BxK = jax.lax.top_k(jnp.where(eos_Bx2K, -jnp.inf, top_log_probs_Bx2K), K)
    source_beam_BxK = gather_BxK(beam_Bx2K, alive_Bx2K_idx_BxK)
    source_BK = (jnp.arange(B)[:, None] * K + source_beam_BxK).reshape(B * K)
    cache = {**cache, **{name: jnp.take(cache[name], source_BK, axis=1)
                         for name in ("k_YxBxHxSxK", "v_YxBxHxSxK")}}  # not the cross K/V
    finished = _merge_finished(s, tokens_Bx2KxL, top_log_probs_Bx2K, new_scores_Bx2K, K)
    finished = jax.tree.map(lambda old, new: jnp.where(
        done(s).reshape((B,) + (1,) * (old.ndim - 1)), old, new), _finished(s), finished)
    return _BeamState(s.position + 1, gather_BxK(tokens_Bx2KxL, alive_Bx2K_idx_BxK),
                      gather_BxK(top_log_probs_Bx2K, alive_Bx2K_idx_BxK), cache, *finished)

  alive_log_probs_BxK = jnp.full((B, K), -jnp.inf).at[:, 0].set(0.0)  # K copies of one beam
  init = _BeamState(jnp.int32(0), _initial_tokens(B * K, L).reshape(B, K, L), alive_log_probs_BxK,
                    cache, jnp.zeros((B, K, L), jnp.int32),
                    jnp.zeros((B, K)), jnp.full((B, K), -jnp.inf))
  final = jax.lax.while_loop(cond, body, init)
  # Inputs not done at max_len: their alive beams (no EOS) compete with the finished ones.
  alive_scores_BxK = jnp.where(done(final)[:, None], -jnp.inf,
                               _score(final.alive_log_probs_BxK, final.position, alpha))
  tokens_BxKxL, log_probs_BxK, _ = _merge_finished(
      final, final.alive_tokens_BxKxL, final.alive_log_probs_BxK, alive_scores_BxK, K)
  return tokens_BxKxL, log_probs_BxK


def _finished(s: _BeamState):
  return s.finished_tokens_BxKxL, s.finished_log_probs_BxK, s.finished_scores_BxK


def _merge_finished(s: _BeamState, tokens_BxMxL, log_probs_BxM, scores_BxM, K):
  """The K best by score of the finished hypotheses and M new ones (-inf score: not a
  hypothesis), best first."""
  scores_BxKM = jnp.concatenate([s.finished_scores_BxK, scores_BxM], axis=1)
  scores_BxK, idx_BxK = jax.lax.top_k(scores_BxKM, K)
  tokens_BxKMxL = jnp.concatenate([s.finished_tokens_BxKxL, tokens_BxMxL], axis=1)
  log_probs_BxKM = jnp.concatenate([s.finished_log_probs_BxK, log_probs_BxM], axis=1)
  return (jnp.take_along_axis(tokens_BxKMxL, idx_BxK[..., None], axis=1),
          jnp.take_along_axis(log_probs_BxKM, idx_BxK, axis=1), scores_BxK)


def to_prefixes(tokens_BxCxL) -> tuple[list[list[list[expressions.Token] | None]], int]:
  """Prefix of every candidate, None where it is invalid (no EOS within max_len, or
  tokens.decode_expression rejects it); also returns how many are invalid, since E2E drops them."""
  prefixes, invalid = [], 0
  for candidates_CxL in np.asarray(tokens_BxCxL):
    row = []
    for ids_L in candidates_CxL:
      try:
        if EOS_ID not in ids_L:
          raise expressions.ExpressionError("no EOS")
        row.append(decode_expression(ids_L))
      except expressions.ExpressionError:
        row.append(None)
        invalid += 1
    prefixes.append(row)
  return prefixes, invalid
