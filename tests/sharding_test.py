"""Mesh construction, logical rules, and a model built sharded on a 2x2x2 mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sr_jax.model import Transformer, model_config
from sr_jax.sharding import (DEFAULT_RULES, MeshConfig, batch_sharding, constrain,
                             logical_to_spec, make_mesh)


def test_make_mesh_fills_the_minus_one_axis():
  mesh = make_mesh(MeshConfig(data=-1, fsdp=2, tensor=2))
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert tuple(mesh.shape.values()) == (2, 2, 2)
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert tuple(make_mesh(MeshConfig()).shape.values()) == (8, 1, 1)
  four = make_mesh(MeshConfig(data=1, fsdp=-1), jax.devices()[:4])
  assert tuple(four.shape.values()) == (1, 4, 1)


@pytest.mark.parametrize("cfg", [MeshConfig(data=-1, fsdp=-1), MeshConfig(data=-1, fsdp=3),
                                 MeshConfig(data=2, fsdp=2, tensor=1)])
def test_make_mesh_rejects_bad_shapes(cfg):
  with pytest.raises(ValueError):
    make_mesh(cfg)


def test_logical_to_spec():
  assert logical_to_spec(("batch", "length", "mlp")) == P(("data", "fsdp"), None, "tensor")
  assert logical_to_spec(("batch", "length", "activation_embed")) == P(("data", "fsdp"), None, None)
  assert logical_to_spec(("vocab", None), DEFAULT_RULES) == P("tensor", None)
  with pytest.raises(ValueError, match="not_a_name"):
    logical_to_spec(("batch", "not_a_name"))
  with pytest.raises(ValueError):
    constrain(jnp.zeros((2, 2)), ("batch", "model"))


def test_constrain_without_mesh_is_identity():
  x = jnp.arange(4.0)
  assert constrain(x, ("batch",)) is x


def test_batch_sharding():
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  assert batch_sharding(mesh, DEFAULT_RULES, 3).spec == P(("data", "fsdp"), None, None)


def test_model_built_under_mesh_is_sharded_by_the_rules():
  cfg = model_config("debug", encoder_vocab_size=64, decoder_vocab_size=64,
                     output_layer="full")
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(DEFAULT_RULES):
    model = jax.jit(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))()
  expected = [
      (model.token_embed, P("tensor", "fsdp")),
      (model.point_embed, P("tensor", None)),
      (model.output_bias, P("tensor")),
      (model.embed_hidden.kernel, P(None, "tensor")),
      (model.position_embed, P(None, "fsdp")),
      (model.encoder_layers[0].mlp.up.kernel, P("fsdp", "tensor")),
      (model.encoder_layers[0].mlp.down.kernel, P("tensor", "fsdp")),
      (model.decoder_layers[0].self_attn.q_weight_dhk, P("fsdp", "tensor", None)),
      (model.decoder_layers[0].cross_attn.o_weight_hkd, P("tensor", None, "fsdp")),
      (model.decoder_layers[0].ln_mlp.scale, P("fsdp")),
  ]
  def sharded_as(value, spec):
    return value.sharding.is_equivalent_to(NamedSharding(mesh, spec), value.ndim)

  for param, spec in expected:
    assert sharded_as(param[...], spec), (param[...].sharding, spec)
  # Every parameter: its sharding is what the rules make of its logical names.
  for path, param in nnx.iter_graph(model):
    if isinstance(param, nnx.Param):
      want = logical_to_spec(param.get_metadata()["out_sharding"])
      assert sharded_as(param[...], want), path

  # Sharded forward equals the same weights replicated on one device.
  rng = np.random.default_rng(0)
  points = rng.integers(1, cfg.encoder_vocab_size, (8, 4, cfg.point_tokens), dtype=np.int32)
  mask = np.ones((8, 4), bool)
  targets = rng.integers(1, cfg.decoder_vocab_size, (8, 5), dtype=np.int32)
  forward = jax.jit(lambda m, p, k, t: m(p, k, t))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(DEFAULT_RULES):
    data = [jax.device_put(a, batch_sharding(mesh, DEFAULT_RULES, a.ndim))
            for a in (points, mask, targets)]
    sharded = forward(model, *data)
  assert sharded.sharding.spec[0] == ("data", "fsdp")
  local = jax.device_put(model, jax.devices()[0])
  np.testing.assert_allclose(sharded, forward(local, points, mask, targets), atol=1e-4)
