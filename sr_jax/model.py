"""The E2E encoder-decoder (reference.md section 3) in Flax NNX.

Points -> per-point token embeddings -> 2-layer MLP -> encoder without positions (so the
encoder is invariant to the order of the points) -> decoder with learned positions,
causal self-attention and cross-attention -> logits tied to the decoder embedding.
Post-LayerNorm blocks as in E2E (XLM), pre-LN as an option.

Every parameter carries logical axis names (sharding.DEFAULT_RULES); parameters stay
in `param_dtype` and are cast to the compute `dtype` at use. Attention scores,
softmax, LayerNorm statistics and logits are float32.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from sr_jax import sharding
from sr_jax.tokens import DECODER_VOCAB, ENCODER_VOCAB, TOKENS_PER_FLOAT

MAX_INPUT_DIM = 10
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

  def __post_init__(self):
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
    if self.dropout != 0.0:
      raise ValueError("dropout is not implemented: E2E trains with dropout=0")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads


# Overrides of ModelConfig per size, with count_params in the comments. 'paper' is E2E's
# 4/16 model: 91.45M, where reference.md counts 93.45M for 4096 decoder positions (we keep
# 256: -1.97M) and its vocabularies (ours are 70 words smaller: -0.03M). The s* family is the
# scaling sweep; s90m is the paper model.
SIZES: dict[str, dict] = {
    "debug": dict(d_model=64, num_heads=2, mlp_dim=128, num_encoder_layers=1,
                  num_decoder_layers=1, token_embed_dim=16),  # 1.24M, 1.3M of it embeddings
    "small": dict(d_model=256, num_heads=8, mlp_dim=1024, num_encoder_layers=2,
                  num_decoder_layers=4),  # 14.15M
    "paper": dict(),  # 91.45M
    "s3m": dict(d_model=128, num_heads=4, mlp_dim=512, num_encoder_layers=2,
                num_decoder_layers=2, token_embed_dim=16),  # 2.79M
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
    return (x_BxSxI.astype(self.dtype) @ self.kernel[...].astype(self.dtype)
            + self.bias[...].astype(self.dtype))


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
    y_BxSxHxK = (jnp.einsum("bsd,dhk->bshk", x_BxSxD.astype(self.dtype),
                            weight[...].astype(self.dtype))
                 + bias[...].astype(self.dtype))
    return sharding.constrain(y_BxSxHxK, ("batch", seq_name, "heads", "kv"))

  def kv(self, x_BxSxD: jax.Array, seq_name: str) -> tuple[jax.Array, jax.Array]:
    return (self._project(x_BxSxD, self.k_weight_dhk, self.k_bias_hk, seq_name),
            self._project(x_BxSxD, self.v_weight_dhk, self.v_bias_hk, seq_name))

  def attend(self, x_BxLxD, k_BxSxHxK, v_BxSxHxK, mask_BxLxS, q_name) -> jax.Array:
    """Attention of queries from x over the given keys; mask_BxLxS is True where allowed."""
    q_BxLxHxK = self._project(x_BxLxD, self.q_weight_dhk, self.q_bias_hk, q_name)
    scores_BxHxLxS = jnp.einsum("blhk,bshk->bhls", q_BxLxHxK, k_BxSxHxK,
                                preferred_element_type=jnp.float32) * self.scale
    scores_BxHxLxS = jnp.where(mask_BxLxS[:, None], scores_BxHxLxS, NEG_INF)
    probs_BxHxLxS = jax.nn.softmax(scores_BxHxLxS, axis=-1).astype(self.dtype)
    out_BxLxHxK = jnp.einsum("bhls,bshk->blhk", probs_BxHxLxS, v_BxSxHxK)
    y_BxLxD = (jnp.einsum("blhk,hkd->bld", out_BxLxHxK, self.o_weight_hkd[...].astype(self.dtype))
               + self.o_bias_d[...].astype(self.dtype))
    return sharding.constrain(y_BxLxD, ("batch", q_name, "activation_embed"))

  def __call__(self, x_BxLxD, kv_BxSxD, mask_BxLxS, q_name, kv_name) -> jax.Array:
    k_BxSxHxK, v_BxSxHxK = self.kv(kv_BxSxD, kv_name)
    return self.attend(x_BxLxD, k_BxSxHxK, v_BxSxHxK, mask_BxLxS, q_name)


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

  def __call__(self, x_BxLxD, self_kv, self_mask_BxLxS, cross_kv, cross_mask_BxLxN):
    """self_kv maps the sublayer input to the (k, v) to attend over: its own projection when
    teacher forcing, the cache updated with it when decoding step by step."""
    def self_block(h):
      return self.self_attn.attend(h, *self_kv(h), self_mask_BxLxS, "length")
    x_BxLxD = _residual(x_BxLxD, self_block, self.ln_self, self.pre_layer_norm)
    x_BxLxD = _residual(
        x_BxLxD, lambda h: self.cross_attn.attend(h, *cross_kv, cross_mask_BxLxN, "length"),
        self.ln_cross, self.pre_layer_norm)
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

  def encode(self, points_BxNxT: jax.Array, point_mask_BxN: jax.Array) -> jax.Array:
    """Encoder output per point; padded points are masked out of every attention."""
    cfg = self.config
    B, N, T = points_BxNxT.shape
    emb_BxNxTxE = jnp.take(self.point_embed[...], points_BxNxT, axis=0).astype(self.dtype)
    emb_BxNxTxE = jnp.where((points_BxNxT != cfg.encoder_pad_id)[..., None], emb_BxNxTxE, 0)
    flat_BxNxF = emb_BxNxTxE.reshape(B, N, T * cfg.token_embed_dim)
    h_BxNxF = sharding.constrain(jax.nn.relu(self.embed_hidden(flat_BxNxF)),
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

  def _embed_targets(self, targets_BxL: jax.Array, positions_L: jax.Array) -> jax.Array:
    tok_BxLxD = jnp.take(self.token_embed[...], targets_BxL, axis=0)
    tok_BxLxD = jnp.where((targets_BxL != self.config.decoder_pad_id)[..., None], tok_BxLxD, 0)
    x_BxLxD = tok_BxLxD + jnp.take(self.position_embed[...], positions_L, axis=0)
    x_BxLxD = self.decoder_ln_emb(x_BxLxD.astype(self.dtype))
    return sharding.constrain(x_BxLxD, ("batch", "length", "activation_embed"))

  def _logits(self, x_BxLxD: jax.Array) -> jax.Array:
    if self.config.pre_layer_norm:
      x_BxLxD = self.decoder_ln_final(x_BxLxD)
    logits_BxLxV = jnp.einsum("bld,vd->blv", x_BxLxD, self.token_embed[...].astype(self.dtype),
                              preferred_element_type=jnp.float32)
    logits_BxLxV = logits_BxLxV + self.output_bias[...].astype(jnp.float32)
    return sharding.constrain(logits_BxLxV, ("batch", "length", "vocab"))

  def decode(self, targets_BxL: jax.Array, enc_BxNxD: jax.Array,
             point_mask_BxN: jax.Array) -> jax.Array:
    """Teacher-forced float32 logits for every target position."""
    B, L = targets_BxL.shape
    x_BxLxD = self._embed_targets(targets_BxL, jnp.arange(L))
    causal_BxLxL = jnp.broadcast_to(jnp.tril(jnp.ones((L, L), bool)), (B, L, L))
    cross_BxLxN = jnp.broadcast_to(point_mask_BxN[:, None, :], (B, L, point_mask_BxN.shape[1]))
    for layer in self.decoder_layers:
      x_BxLxD = layer(x_BxLxD, lambda h, a=layer.self_attn: a.kv(h, "length"), causal_BxLxL,
                      layer.cross_attn.kv(enc_BxNxD, "points"), cross_BxLxN)
    return self._logits(x_BxLxD)

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
    shape = (cfg.num_decoder_layers, batch, max_len, cfg.num_heads, cfg.head_dim)
    return {"k_YxBxSxHxK": jnp.zeros(shape, self.dtype),
            "v_YxBxSxHxK": jnp.zeros(shape, self.dtype)}

  def precompute_cross_kv(self, enc_BxNxD: jax.Array) -> dict[str, jax.Array]:
    """Cross-attention K/V of every decoder layer. Merged into the cache (`init_cache(...) |
    precompute_cross_kv(enc)`), they spare decode_step recomputing them from enc every step."""
    ks, vs = zip(*(layer.cross_attn.kv(enc_BxNxD, "points") for layer in self.decoder_layers))
    return {"cross_k_YxBxNxHxK": jnp.stack(ks), "cross_v_YxBxNxHxK": jnp.stack(vs)}

  def decode_step(self, tokens_Bx1: jax.Array, cache: dict[str, jax.Array], enc_BxNxD: jax.Array,
                  point_mask_BxN: jax.Array, position: jax.Array) -> tuple[jax.Array, dict]:
    """Logits_BxV for the token at `position` (a scalar, shared by the batch), given the cache
    of the earlier positions; returns the cache with this position written. Cross-attention
    K/V come from the cache when it holds precompute_cross_kv's, else are recomputed from enc
    (as in flax's wmt example)."""
    B, S = cache["k_YxBxSxHxK"].shape[1:3]
    x_Bx1xD = self._embed_targets(tokens_Bx1, jnp.reshape(position, (1,)))
    self_mask_Bx1xS = jnp.broadcast_to(jnp.arange(S) <= position, (B, 1, S))
    cross_Bx1xN = point_mask_BxN[:, None, :]
    precomputed = "cross_k_YxBxNxHxK" in cache
    ks, vs = [], []
    for i, layer in enumerate(self.decoder_layers):
      def self_kv(h_Bx1xD, a=layer.self_attn, i=i):
        k_Bx1xHxK, v_Bx1xHxK = a.kv(h_Bx1xD, "length")
        at = (0, position, 0, 0)
        ks.append(jax.lax.dynamic_update_slice(cache["k_YxBxSxHxK"][i], k_Bx1xHxK, at))
        vs.append(jax.lax.dynamic_update_slice(cache["v_YxBxSxHxK"][i], v_Bx1xHxK, at))
        return ks[-1], vs[-1]
      cross_kv = ((cache["cross_k_YxBxNxHxK"][i], cache["cross_v_YxBxNxHxK"][i]) if precomputed
                  else layer.cross_attn.kv(enc_BxNxD, "points"))
      x_Bx1xD = layer(x_Bx1xD, self_kv, self_mask_Bx1xS, cross_kv, cross_Bx1xN)
    cache = {**cache, "k_YxBxSxHxK": jnp.stack(ks), "v_YxBxSxHxK": jnp.stack(vs)}
    return self._logits(x_Bx1xD)[:, 0], cache
