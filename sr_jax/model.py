"""The E2E encoder-decoder (reference.md section 3) in Flax NNX.

Points -> per-point token embeddings -> 2-layer MLP -> encoder without positions (so the
encoder is invariant to the order of the points) -> decoder with learned positions,
causal self-attention and cross-attention -> logits tied to the decoder embedding.
Post-LayerNorm blocks as in E2E (XLM), pre-LN as an option.

Every parameter carries logical axis names (sharding.DEFAULT_RULES); parameters stay
in `param_dtype` and are cast to the compute `dtype` at use. Every matrix product sums
in float32 whatever the compute dtype (mixed_precision.py: with bfloat16 this is mixed
precision, forward and backward). Attention scores, softmax, LayerNorm statistics and
logits are float32.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sr_jax import mixed_precision, sharding
from sr_jax.tokens import DECODER_VOCAB, ENCODER_VOCAB, INPUT_PAD, OUTPUT_PAD
from sr_jax.tokens import SIGN_WORDS, TOKENS_PER_FLOAT

MAX_INPUT_DIM = 10
OUTPUT_LAYERS = ("factored", "full")
# The words a sign slot of a point can hold besides PAD (see Transformer._embed_points).
_SIGN_SLOT_WORDS = (INPUT_PAD, OUTPUT_PAD) + SIGN_WORDS
NEG_INF = -1e9  # finite, so a row with every key masked gives a uniform softmax, not NaN


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and numerics of the model; the defaults are the paper's 4/16 E2E model."""
  encoder_vocab_size: int = len(ENCODER_VOCAB)
  decoder_vocab_size: int = len(DECODER_VOCAB)
  encoder_pad_id: int = ENCODER_VOCAB.pad_id
  decoder_pad_id: int = DECODER_VOCAB.pad_id
  point_tokens: int = (MAX_INPUT_DIM + 1) * TOKENS_PER_FLOAT
  token_embed_dim: int = 64
  d_model: int = 512
  num_heads: int = 16
  mlp_dim: int = 2048
  num_encoder_layers: int = 4
  num_decoder_layers: int = 16
  max_target_len: int = 256
  pre_layer_norm: bool = False
  dropout: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  layer_norm_eps: float = 1e-12
  # "factored": the loss and the unconstrained decoder use the grammar-factored softmax
  # (losses.py); "full": E2E's softmax over the whole vocabulary at every position.
  output_layer: str = "factored"

  def __post_init__(self):
    if self.output_layer not in OUTPUT_LAYERS:
      raise ValueError(f"unknown output_layer {self.output_layer!r}; choose from {OUTPUT_LAYERS}")
    if self.output_layer == "factored" and self.decoder_vocab_size != len(DECODER_VOCAB):
      raise ValueError("output_layer='factored' needs the decoder vocabulary tokens.DECODER_VOCAB "
                       f"({len(DECODER_VOCAB)} words), not {self.decoder_vocab_size}: "
                       "use output_layer='full' with another vocabulary")
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
    if self.dropout != 0.0:
      raise ValueError("dropout is not implemented: E2E trains with dropout=0")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads


# Overrides of ModelConfig per size, with count_params in the comments. 'paper' is E2E's
# 4/16 model as published, full output softmax included: 91.45M, where reference.md counts
# 93.45M for 4096 decoder positions (we keep 256: -1.97M) and its vocabularies (ours are 70
# words smaller: -0.03M). The s* family is the scaling sweep, with the grammar-factored
# output; s90m has the paper model's shape.
SIZES: dict[str, dict] = {
    "debug": dict(d_model=64, num_heads=2, mlp_dim=128, num_encoder_layers=1,
                  num_decoder_layers=1, token_embed_dim=16),  # 1.24M, 1.3M of it embeddings
    "small": dict(d_model=256, num_heads=8, mlp_dim=1024, num_encoder_layers=2,
                  num_decoder_layers=4),  # 14.15M
    "paper": dict(output_layer="full"),  # 91.45M, E2E's output softmax
    "s3m": dict(d_model=128, num_heads=4, mlp_dim=512, num_encoder_layers=2,
                num_decoder_layers=2, token_embed_dim=16),  # 2.79M
    "s7m": dict(d_model=192, num_heads=6, mlp_dim=768, num_encoder_layers=2,
                num_decoder_layers=4, token_embed_dim=32),  # 6.93M
    "s10m": dict(d_model=256, num_heads=8, mlp_dim=1024, num_encoder_layers=2,
                 num_decoder_layers=4, token_embed_dim=32),  # 10.20M: `small`, embeddings of 32
    "s20m": dict(d_model=320, num_heads=8, mlp_dim=1280, num_encoder_layers=2,
                 num_decoder_layers=6, token_embed_dim=48),  # 19.21M
    "s90m": dict(),  # 91.45M
    "s300m": dict(d_model=1024, num_heads=16, mlp_dim=4096, num_encoder_layers=4,
                  num_decoder_layers=14, token_embed_dim=96),  # 310.56M
}


def model_config(size: str, **overrides) -> ModelConfig:
  """ModelConfig for a named size, with field overrides on top."""
  if size not in SIZES:
    raise ValueError(f"unknown model size {size!r}; choose from {sorted(SIZES)}")
  return ModelConfig(**{**SIZES[size], **overrides})


def count_params(model: nnx.Module) -> int:
  """Number of parameters; works on an abstract model from nnx.eval_shape too."""
  return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def count_non_embedding_params(model: nnx.Module) -> int:
  """Parameters outside the lookup tables (point and token embeddings, positions):
  the count scaling laws use (Kaplan et al. 2020)."""
  tables = {"point_embed", "token_embed", "position_embed"}
  return sum(math.prod(v.get_value().shape)
             for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
             if path[0] not in tables)


class _Params:
  """Creates a module's parameters, annotated with logical axis names and sharded at creation
  when a mesh is set. Keys are folded from one key: under a trace every `rngs.params()` draw
  costs time quadratic in the trace size (building the paper model took 10 s that way)."""

  def __init__(self, key: jax.Array, cfg: ModelConfig):
    self.key = key
    self.count = 0
    self.dtype = jnp.dtype(cfg.param_dtype)

  def next_key(self) -> jax.Array:
    self.count += 1
    return jax.random.fold_in(self.key, self.count)

  def __call__(self, init, shape, names) -> nnx.Param:
    sharding.logical_to_spec(names)  # raise now on a name the rules do not know
    return nnx.Param(init(self.next_key(), shape, self.dtype), out_sharding=names,
                     eager_sharding=not jax.sharding.get_abstract_mesh().empty)


def _torch_linear_init(in_axis=-2, out_axis=-1):
  """PyTorch's nn.Linear default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as E2E keeps it."""
  return nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis, out_axis)


class Dense(nnx.Module):
  """x @ W + b with logical names (in_name, out_name) on W."""

  def __init__(self, d_in: int, d_out: int, names: tuple[str | None, str | None],
               cfg: ModelConfig, *, key: jax.Array):
    self.dtype = jnp.dtype(cfg.dtype)
    param = _Params(key, cfg)
    self.kernel = param(_torch_linear_init(), (d_in, d_out), names)
    self.bias = param(nnx.initializers.zeros, (d_out,), names[1:])

  def __call__(self, x_BxSxI: jax.Array) -> jax.Array:
    y_BxSxO = mixed_precision.matmul(x_BxSxI, self.kernel[...], self.dtype)
    return (y_BxSxO + self.bias[...]).astype(self.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm with float32 statistics whatever the compute dtype."""

  def __init__(self, cfg: ModelConfig, *, key: jax.Array):
    self.eps = cfg.layer_norm_eps
    self.dtype = jnp.dtype(cfg.dtype)
    param = _Params(key, cfg)
    self.scale = param(nnx.initializers.ones, (cfg.d_model,), ("embed",))
    self.bias = param(nnx.initializers.zeros, (cfg.d_model,), ("embed",))

  def __call__(self, x_BxSxD: jax.Array) -> jax.Array:
    x = x_BxSxD.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


class Attention(nnx.Module):
  """Multi-head attention with biased Q/K/V/O projections (E2E), split into K/V projection
  and attention so that a decoding cache can store K/V."""

  def __init__(self, cfg: ModelConfig, *, key: jax.Array):
    D, H, K = cfg.d_model, cfg.num_heads, cfg.head_dim
    self.dtype = jnp.dtype(cfg.dtype)
    self.scale = 1.0 / math.sqrt(K)
    in_init = _torch_linear_init(in_axis=0, out_axis=(1, 2))
    zeros = nnx.initializers.zeros
    param = _Params(key, cfg)
    self.q_weight_dhk = param(in_init, (D, H, K), ("embed", "heads", "kv"))
    self.k_weight_dhk = param(in_init, (D, H, K), ("embed", "heads", "kv"))
    self.v_weight_dhk = param(in_init, (D, H, K), ("embed", "heads", "kv"))
    self.q_bias_hk = param(zeros, (H, K), ("heads", "kv"))
    self.k_bias_hk = param(zeros, (H, K), ("heads", "kv"))
    self.v_bias_hk = param(zeros, (H, K), ("heads", "kv"))
    self.o_weight_hkd = param(_torch_linear_init(in_axis=(0, 1), out_axis=2), (H, K, D),
                               ("heads", "kv", "embed"))
    self.o_bias_d = param(zeros, (D,), ("embed",))

  def _project(self, x_BxSxD, weight, bias, seq_name):
    y_BxSxHxK = (mixed_precision.einsum("bsd,dhk->bshk", x_BxSxD, weight[...], self.dtype)
                 + bias[...]).astype(self.dtype)
    return sharding.constrain(y_BxSxHxK, ("batch", seq_name, "heads", "kv"))

  def kv(self, x_BxSxD: jax.Array, seq_name: str) -> tuple[jax.Array, jax.Array]:
    """Keys and values, heads before positions (BxHxSxK): the layout the attention dots
    read, so a decoding cache in it is never transposed (that copy dominated a CPU step)."""
    def project(weight, bias):
      y_BxHxSxK = (mixed_precision.einsum("bsd,dhk->bhsk", x_BxSxD, weight[...], self.dtype)
                   + bias[...][:, None, :]).astype(self.dtype)
      return sharding.constrain(y_BxHxSxK, ("batch", "heads", seq_name, "kv"))
    return project(self.k_weight_dhk, self.k_bias_hk), project(self.v_weight_dhk, self.v_bias_hk)

  def attend(self, x_BxLxD, k_BxHxSxK, v_BxHxSxK, mask_BxLxS, q_name,
             current_kv=None) -> jax.Array:
    """Attention of queries from x over the given keys; mask_BxLxS is True where allowed.
    current_kv: one more (k, v) position (BxHx1xK), always allowed. Decoding passes the
    step's own K/V this way and the cache *before* it is written, so that the cache
    update is the cache's only use after the read and XLA does it in place (attending
    over the updated cache made XLA copy the whole cache several times a step)."""
    q_BxLxHxK = self._project(x_BxLxD, self.q_weight_dhk, self.q_bias_hk, q_name)
    scores_BxHxLxS = mixed_precision.einsum("blhk,bhsk->bhls", q_BxLxHxK, k_BxHxSxK,
                                            self.dtype) * self.scale
    scores_BxHxLxS = jnp.where(mask_BxLxS[:, None], scores_BxHxLxS, NEG_INF)
    if current_kv is not None:
      scores_BxHxLxS = jnp.concatenate([scores_BxHxLxS, mixed_precision.einsum(
          "blhk,bhsk->bhls", q_BxLxHxK, current_kv[0], self.dtype) * self.scale], axis=-1)
    probs_BxHxLxS = jax.nn.softmax(scores_BxHxLxS, axis=-1).astype(self.dtype)
    S = k_BxHxSxK.shape[2]
    # Heads stay before positions until the output projection: a "blhk" result made
    # XLA:CPU's dot 4x slower (cross-attention while decoding).
    out_BxHxLxK = mixed_precision.einsum("bhls,bhsk->bhlk", probs_BxHxLxS[..., :S], v_BxHxSxK,
                                         self.dtype)
    if current_kv is not None:
      out_BxHxLxK += mixed_precision.einsum("bhls,bhsk->bhlk", probs_BxHxLxS[..., S:],
                                            current_kv[1], self.dtype)
    y_BxLxD = (mixed_precision.einsum("bhlk,hkd->bld", out_BxHxLxK, self.o_weight_hkd[...],
                                      self.dtype)
               + self.o_bias_d[...]).astype(self.dtype)
    return sharding.constrain(y_BxLxD, ("batch", q_name, "activation_embed"))

  def __call__(self, x_BxLxD, kv_BxSxD, mask_BxLxS, q_name, kv_name) -> jax.Array:
    return self.attend(x_BxLxD, *self.kv(kv_BxSxD, kv_name), mask_BxLxS, q_name)


class MLP(nnx.Module):
  """Position-wise FFN with ReLU."""

  def __init__(self, cfg: ModelConfig, *, key: jax.Array):
    param = _Params(key, cfg)
    self.up = Dense(cfg.d_model, cfg.mlp_dim, ("embed", "mlp"), cfg, key=param.next_key())
    self.down = Dense(cfg.mlp_dim, cfg.d_model, ("mlp", "embed"), cfg, key=param.next_key())

  def __call__(self, x_BxSxD: jax.Array, seq_name: str) -> jax.Array:
    h_BxSxF = sharding.constrain(jax.nn.relu(self.up(x_BxSxD)), ("batch", seq_name, "mlp"))
    return sharding.constrain(self.down(h_BxSxF), ("batch", seq_name, "activation_embed"))


def _residual(x, sublayer, norm: LayerNorm, pre_layer_norm: bool):
  """Post-LN `norm(x + f(x))` as E2E, or pre-LN `x + f(norm(x))`."""
  if pre_layer_norm:
    return x + sublayer(norm(x))
  return norm(x + sublayer(x))


class EncoderLayer(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, key: jax.Array):
    param = _Params(key, cfg)
    self.pre_layer_norm = cfg.pre_layer_norm
    self.attn = Attention(cfg, key=param.next_key())
    self.ln_attn = LayerNorm(cfg, key=param.next_key())
    self.mlp = MLP(cfg, key=param.next_key())
    self.ln_mlp = LayerNorm(cfg, key=param.next_key())

  def __call__(self, x_BxNxD, mask_BxNxN):
    x_BxNxD = _residual(x_BxNxD, lambda h: self.attn(h, h, mask_BxNxN, "points", "points"),
                        self.ln_attn, self.pre_layer_norm)
    return _residual(x_BxNxD, lambda h: self.mlp(h, "points"), self.ln_mlp, self.pre_layer_norm)


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, key: jax.Array):
    param = _Params(key, cfg)
    self.pre_layer_norm = cfg.pre_layer_norm
    self.self_attn = Attention(cfg, key=param.next_key())
    self.ln_self = LayerNorm(cfg, key=param.next_key())
    self.cross_attn = Attention(cfg, key=param.next_key())
    self.ln_cross = LayerNorm(cfg, key=param.next_key())
    self.mlp = MLP(cfg, key=param.next_key())
    self.ln_mlp = LayerNorm(cfg, key=param.next_key())

  def __call__(self, x_BxLxD, self_kv, self_mask_BxLxS, cross_kv, cross_mask_ExLxN):
    """self_kv maps the sublayer input to the (k, v, current_kv) to attend over: its own
    projection when teacher forcing, the cache and the step's own K/V when decoding. cross_kv may
    hold E = B / G inputs, each shared by G consecutive rows (the candidates of one input
    when decoding): their queries then attend as one input's G * L queries, so the
    points' K/V are neither copied G times nor re-read per row."""
    def self_block(h):
      k_BxHxSxK, v_BxHxSxK, current_kv = self_kv(h)
      return self.self_attn.attend(h, k_BxHxSxK, v_BxHxSxK, self_mask_BxLxS, "length",
                                   current_kv)

    def cross_block(h_BxLxD):
      B, L, D = h_BxLxD.shape
      E, N = cross_mask_ExLxN.shape[0], cross_mask_ExLxN.shape[-1]
      h_ExGLxD = h_BxLxD.reshape(E, (B // E) * L, D)
      mask_ExGLxN = jnp.broadcast_to(
          cross_mask_ExLxN[:, None], (E, B // E, L, N)).reshape(E, (B // E) * L, N)
      return self.cross_attn.attend(h_ExGLxD, *cross_kv, mask_ExGLxN,
                                    "length").reshape(B, L, D)
    x_BxLxD = _residual(x_BxLxD, self_block, self.ln_self, self.pre_layer_norm)
    x_BxLxD = _residual(x_BxLxD, cross_block, self.ln_cross, self.pre_layer_norm)
    return _residual(x_BxLxD, lambda h: self.mlp(h, "length"), self.ln_mlp, self.pre_layer_norm)


class Transformer(nnx.Module):
  """E2E: point embedder + encoder + decoder with tied output projection."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    cfg = self.config = config
    self.dtype = jnp.dtype(cfg.dtype)
    param = _Params(rngs.params(), cfg)
    # Embedder (LinearPointEmbedder): token embeddings, then a 2-layer ReLU MLP per point.
    self.point_embed = param(nnx.initializers.normal(cfg.token_embed_dim ** -0.5),
                              (cfg.encoder_vocab_size, cfg.token_embed_dim), ("vocab", None))
    flat = cfg.point_tokens * cfg.token_embed_dim
    self.embed_hidden = Dense(flat, flat, ("point_tokens", "mlp"), cfg, key=param.next_key())
    self.embed_out = Dense(flat, cfg.d_model, ("mlp", "embed"), cfg, key=param.next_key())
    self.encoder_ln_emb = LayerNorm(cfg, key=param.next_key())
    self.encoder_layers = nnx.List([EncoderLayer(cfg, key=param.next_key())
                                    for _ in range(cfg.num_encoder_layers)])
    # Decoder.
    self.token_embed = param(nnx.initializers.normal(cfg.d_model ** -0.5),
                              (cfg.decoder_vocab_size, cfg.d_model), ("vocab", "embed"))
    self.position_embed = param(nnx.initializers.normal(cfg.d_model ** -0.5),
                                 (cfg.max_target_len, cfg.d_model), ("length", "embed"))
    self.decoder_ln_emb = LayerNorm(cfg, key=param.next_key())
    self.decoder_layers = nnx.List([DecoderLayer(cfg, key=param.next_key())
                                    for _ in range(cfg.num_decoder_layers)])
    self.output_bias = param(nnx.initializers.zeros, (cfg.decoder_vocab_size,),
                              ("vocab",))
    if cfg.pre_layer_norm:
      self.encoder_ln_final = LayerNorm(cfg, key=param.next_key())
      self.decoder_ln_final = LayerNorm(cfg, key=param.next_key())

  def __repr__(self) -> str:
    """One line. nnx's default lists every array (thousands of lines, seconds to build),
    and scikit-learn prints it inside every repr of a regressor holding the model."""
    cfg = self.config
    return (f"Transformer(d_model={cfg.d_model}, num_heads={cfg.num_heads}, "
            f"num_encoder_layers={cfg.num_encoder_layers}, "
            f"num_decoder_layers={cfg.num_decoder_layers}, dtype={cfg.dtype}, "
            f"parameters={count_params(self):,})")

  def encode(self, points_BxNxT: jax.Array, point_mask_BxN: jax.Array) -> jax.Array:
    """Encoder output per point; padded points are masked out of every attention."""
    cfg = self.config
    B, N, T = points_BxNxT.shape
    h_BxNxF = sharding.constrain(jax.nn.relu(self._embed_points(points_BxNxT)),
                                 ("batch", "points", "mlp"))
    x_BxNxD = self.encoder_ln_emb(self.embed_out(h_BxNxF))
    keep_BxNx1 = point_mask_BxN[..., None].astype(self.dtype)
    x_BxNxD = sharding.constrain(x_BxNxD * keep_BxNx1, ("batch", "points", "activation_embed"))
    mask_BxNxN = jnp.broadcast_to(point_mask_BxN[:, None, :], (B, N, N))
    for layer in self.encoder_layers:
      x_BxNxD = layer(x_BxNxD, mask_BxNxN) * keep_BxNx1
    if cfg.pre_layer_norm:
      x_BxNxD = self.encoder_ln_final(x_BxNxD) * keep_BxNx1
    return x_BxNxD

  def _embed_points(self, points_BxNxT: jax.Array) -> jax.Array:
    """E2E's first embedder layer, concat(token embeddings) @ W + b, before its ReLU.

    The layer is linear in each slot's embedding, and a sign slot (every third, from 0)
    only ever holds one of five words: PAD, INPUT_PAD, OUTPUT_PAD, + and -
    (`data.tokenize_points`). Their share, embedding @ W-rows for each sign slot, is a
    5-row table per slot, looked up instead of multiplied: the same function and
    parameters for well-formed points, a third fewer FLOPs (PAD and any other word in a
    sign slot contribute nothing)."""
    cfg = self.config
    B, N, T = points_BxNxT.shape
    E, F = cfg.token_embed_dim, self.embed_hidden.kernel.shape[1]
    sign_slots = np.arange(0, T, TOKENS_PER_FLOAT)
    value_slots = np.setdiff1d(np.arange(T), sign_slots)
    table_VxE = self.point_embed[...]
    kernel_TxExF = self.embed_hidden.kernel[...].reshape(T, E, F)
    values_BxNxS = points_BxNxT[..., value_slots]
    emb_BxNxSxE = jnp.where((values_BxNxS != cfg.encoder_pad_id)[..., None],
                            jnp.take(table_VxE, values_BxNxS, axis=0), 0)
    h_BxNxF = mixed_precision.matmul(emb_BxNxSxE.reshape(B, N, len(value_slots) * E),
                                     kernel_TxExF[value_slots].reshape(len(value_slots) * E, F),
                                     self.dtype)
    sign_words_W = np.array([ENCODER_VOCAB.ids[w] for w in _SIGN_SLOT_WORDS])
    share_TxWxF = mixed_precision.einsum("we,tef->twf", table_VxE[sign_words_W],
                                         kernel_TxExF[sign_slots], self.dtype)
    onehot_BxNxTxW = (points_BxNxT[..., sign_slots, None] == sign_words_W).astype(self.dtype)
    h_BxNxF += mixed_precision.einsum("bntw,twf->bnf", onehot_BxNxTxW, share_TxWxF, self.dtype)
    return (h_BxNxF + self.embed_hidden.bias[...]).astype(self.dtype)

  def _embed_targets(self, targets_BxL: jax.Array, positions_L: jax.Array) -> jax.Array:
    tok_BxLxD = jnp.take(self.token_embed[...], targets_BxL, axis=0)
    tok_BxLxD = jnp.where((targets_BxL != self.config.decoder_pad_id)[..., None], tok_BxLxD, 0)
    x_BxLxD = tok_BxLxD + jnp.take(self.position_embed[...], positions_L, axis=0)
    x_BxLxD = self.decoder_ln_emb(x_BxLxD.astype(self.dtype))
    return sharding.constrain(x_BxLxD, ("batch", "length", "activation_embed"))

  def _logits(self, x_BxLxD: jax.Array) -> jax.Array:
    return sharding.constrain(self.output_logits(x_BxLxD), ("batch", "length", "vocab"))

  def decode_hidden(self, targets_BxL: jax.Array, enc_BxNxD: jax.Array,
                    point_mask_BxN: jax.Array) -> jax.Array:
    """Teacher-forced decoder states (the input of output_logits) at every position."""
    B, L = targets_BxL.shape
    x_BxLxD = self._embed_targets(targets_BxL, jnp.arange(L))
    causal_BxLxL = jnp.broadcast_to(jnp.tril(jnp.ones((L, L), bool)), (B, L, L))
    cross_BxLxN = jnp.broadcast_to(point_mask_BxN[:, None, :], (B, L, point_mask_BxN.shape[1]))
    for layer in self.decoder_layers:
      x_BxLxD = layer(x_BxLxD, lambda h, a=layer.self_attn: (*a.kv(h, "length"), None),
                      causal_BxLxL,
                      layer.cross_attn.kv(enc_BxNxD, "points"), cross_BxLxN)
    return x_BxLxD

  def decode(self, targets_BxL: jax.Array, enc_BxNxD: jax.Array,
             point_mask_BxN: jax.Array) -> jax.Array:
    """Teacher-forced float32 logits over the whole vocabulary at every position."""
    return self._logits(self.decode_hidden(targets_BxL, enc_BxNxD, point_mask_BxN))

  def hidden(self, points_BxNxT: jax.Array, point_mask_BxN: jax.Array,
             targets_BxL: jax.Array) -> jax.Array:
    """Teacher forcing, decoder states only (losses.py computes the logits it needs)."""
    return self.decode_hidden(targets_BxL, self.encode(points_BxNxT, point_mask_BxN),
                              point_mask_BxN)

  def __call__(self, points_BxNxT: jax.Array, point_mask_BxN: jax.Array,
               targets_BxL: jax.Array) -> jax.Array:
    """Teacher forcing: pass targets[:, :-1] and score against targets[:, 1:]."""
    return self.decode(targets_BxL, self.encode(points_BxNxT, point_mask_BxN), point_mask_BxN)

  def init_cache(self, batch: int, max_len: int) -> dict[str, jax.Array]:
    """Empty self-attention K/V cache for decode_step, one slot per target position
    (Y: decoder layers, S: max_len)."""
    cfg = self.config
    if max_len > cfg.max_target_len:
      raise ValueError(f"max_len {max_len} exceeds max_target_len {cfg.max_target_len}")
    shape = (cfg.num_decoder_layers, batch, cfg.num_heads, max_len, cfg.head_dim)
    return {"k_YxBxHxSxK": jnp.zeros(shape, self.dtype),
            "v_YxBxHxSxK": jnp.zeros(shape, self.dtype)}

  def precompute_cross_kv(self, enc_BxNxD: jax.Array) -> dict[str, jax.Array]:
    """Cross-attention K/V of every decoder layer, once per input. Merged into the cache
    (`init_cache(rows, ...) | precompute_cross_kv(enc)`), they spare decode_step recomputing
    them from enc at every step and for every candidate row of the same input."""
    ks, vs = zip(*(layer.cross_attn.kv(enc_BxNxD, "points") for layer in self.decoder_layers))
    return {"cross_k_YxBxHxNxK": jnp.stack(ks), "cross_v_YxBxHxNxK": jnp.stack(vs)}

  def decode_step(self, tokens_Bx1: jax.Array, cache: dict[str, jax.Array], enc_ExNxD: jax.Array,
                  point_mask_ExN: jax.Array, position: jax.Array) -> tuple[jax.Array, dict]:
    """Decoder state (the input of output_logits, BxD) for the token at
    `position` (a scalar, shared by the batch), given the cache of the earlier positions;
    returns the cache with this position written. Rows may share inputs: with E inputs and
    B = E * G rows, rows g*G .. g*G+G-1 read input g (the candidates of one dataset).
    Cross-attention K/V come from the cache when it holds precompute_cross_kv's (computed
    once per input), else are recomputed from enc (as in flax's wmt example). Logits are
    `output_logits(hidden)`; decoding.py may compute only the vocabulary slice it needs."""
    B, S = cache["k_YxBxHxSxK"].shape[1], cache["k_YxBxHxSxK"].shape[3]
    x_Bx1xD = self._embed_targets(tokens_Bx1, jnp.reshape(position, (1,)))
    self_mask_Bx1xS = jnp.broadcast_to(jnp.arange(S) < position, (B, 1, S))
    cross_Ex1xN = point_mask_ExN[:, None, :]
    precomputed = "cross_k_YxBxHxNxK" in cache
    cache = dict(cache)
    for i, layer in enumerate(self.decoder_layers):
      def self_kv(h_Bx1xD, a=layer.self_attn, i=i):
        old = cache["k_YxBxHxSxK"][i], cache["v_YxBxHxSxK"][i]
        current = a.kv(h_Bx1xD, "length")
        for name, new_BxHx1xK in zip(("k_YxBxHxSxK", "v_YxBxHxSxK"), current):
          cache[name] = jax.lax.dynamic_update_slice(cache[name], new_BxHx1xK[None],
                                                     (i, 0, 0, position, 0))
        return *old, current
      cross_kv = ((cache["cross_k_YxBxHxNxK"][i], cache["cross_v_YxBxHxNxK"][i]) if precomputed
                  else layer.cross_attn.kv(enc_ExNxD, "points"))
      x_Bx1xD = layer(x_Bx1xD, self_kv, self_mask_Bx1xS, cross_kv, cross_Ex1xN)
    return x_Bx1xD[:, 0], cache

  def output_logits(self, hidden_xD: jax.Array, vocab_ids: np.ndarray | slice | None = None
                    ) -> jax.Array:
    """float32 logits of decoder states (any leading shape) over the whole vocabulary, or
    over `vocab_ids` only (an id array or a slice of ids), in their order (decoding needs
    234 words at most steps; a slice reads a contiguous block without a gather)."""
    if self.config.pre_layer_norm:
      hidden_xD = self.decoder_ln_final(hidden_xD)
    embed_VxD, bias_V = self.token_embed[...], self.output_bias[...]
    if vocab_ids is not None:
      embed_VxD, bias_V = embed_VxD[vocab_ids], bias_V[vocab_ids]
    logits_SxV = mixed_precision.einsum("sd,vd->sv", hidden_xD.reshape(-1, hidden_xD.shape[-1]),
                                        embed_VxD, self.dtype)
    return (logits_SxV + bias_V.astype(jnp.float32)).reshape(*hidden_xD.shape[:-1], -1)
