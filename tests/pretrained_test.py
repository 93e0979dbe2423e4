"""Model files: exact round trips, half-precision storage, parts, and a named error for
every way a file can be wrong."""

import io
import json
import os
import zipfile

import numpy as np
import pytest
from flax import nnx

from sr_jax import pretrained
from sr_jax.model import Transformer, model_config


@pytest.fixture(scope="module")
def model():
  return Transformer(model_config("debug", num_decoder_layers=2), rngs=nnx.Rngs(7))


def _same(a, b):
  return {k: np.array_equal(v, b[k]) for k, v in a.items()} == {k: True for k in a}


def test_float32_round_trip_is_exact(model, tmp_path):
  path = str(tmp_path / "m.srj")
  assert pretrained.write(path, model, {"steps": 3}) == [path]
  loaded = pretrained.load(path)
  assert loaded.config == model.config
  original, back = pretrained.param_arrays(model), pretrained.param_arrays(loaded)
  assert original.keys() == back.keys() and _same(original, back)
  assert pretrained.card(path) == {"steps": 3}


@pytest.mark.parametrize("dtype, numpy_type", [("float16", np.float16),
                                                ("bfloat16", "bfloat16")])
def test_half_precision_storage_rounds_once(model, tmp_path, dtype, numpy_type):
  import ml_dtypes
  numpy_type = ml_dtypes.bfloat16 if numpy_type == "bfloat16" else numpy_type
  path = str(tmp_path / "m.srj")
  pretrained.write(path, model, dtype=dtype)
  back = pretrained.param_arrays(pretrained.load(path))
  for name, value in pretrained.param_arrays(model).items():
    np.testing.assert_array_equal(back[name], value.astype(numpy_type).astype(np.float32))
  assert os.path.getsize(path) < 0.55 * model_bytes(model)


def model_bytes(model):
  return sum(v.nbytes for v in pretrained.param_arrays(model).values())


def test_parts_join_and_a_missing_part_is_named(model, tmp_path):
  path = str(tmp_path / "m.srj")
  paths = pretrained.write(path, model, dtype="float16", part_bytes=400_000)
  assert len(paths) > 3 and all(os.path.getsize(p) <= 400_000 for p in paths)
  assert paths[0].endswith(".000") and not os.path.exists(path)
  assert _same(pretrained.param_arrays(pretrained.load(path)),
               pretrained.param_arrays(pretrained.load(path)))
  os.remove(paths[-1])  # the last part: the archive's directory is gone
  with pytest.raises(pretrained.ModelFileError, match="truncated"):
    pretrained.load(path)
  os.remove(paths[1])
  with pytest.raises(pretrained.ModelFileError, match="numbered"):
    pretrained.load(path)


def test_truncated_and_foreign_files_are_refused(model, tmp_path):
  path = tmp_path / "m.srj"
  pretrained.write(str(path), model)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(pretrained.ModelFileError, match="truncated"):
    pretrained.load(str(path))
  path.write_bytes(b"not a zip file at all")
  with pytest.raises(pretrained.ModelFileError, match="not a readable"):
    pretrained.load(str(path))
  with pytest.raises(pretrained.ModelFileError, match="no model file"):
    pretrained.load(str(tmp_path / "absent.srj"))


def _rewrite(path, edit_header=None, edit_member=None):
  """Copies the archive at path with its header or one array member changed."""
  with zipfile.ZipFile(path) as archive:
    members = {name: archive.read(name) for name in archive.namelist()}
  header = json.loads(members["header.json"])
  if edit_header:
    edit_header(header)
  members["header.json"] = json.dumps(header).encode()
  if edit_member:
    edit_member(members)
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as archive:
    for name, value in members.items():
      archive.writestr(name, value)
  with open(path, "wb") as f:
    f.write(buffer.getvalue())


@pytest.mark.parametrize("edit, message", [
    (lambda h: h.update(version=99), "format version 99"),
    (lambda h: h.update(format="something-else"), "not an sr_jax model file"),
    (lambda h: h.update(token_format=0), "token format"),
    (lambda h: h["vocabulary"].update(decoder="0" * 16), "other vocabularies"),
    (lambda h: h["model_config"].update(d_model=32, num_heads=2), "shape"),
    (lambda h: h["model_config"].update(num_decoder_layers=3), "missing arrays"),
    (lambda h: h["model_config"].update(unknown_field=1), "does not fit"),
])
def test_wrong_headers_are_named(model, tmp_path, edit, message):
  path = str(tmp_path / "m.srj")
  pretrained.write(path, model)
  _rewrite(path, edit_header=edit)
  with pytest.raises(pretrained.ModelFileError, match=message):
    pretrained.load(path)


def test_corrupt_array_is_named(model, tmp_path):
  path = str(tmp_path / "m.srj")
  pretrained.write(path, model)

  def flip(members):
    name = "arrays/token_embed.npy"
    raw = bytearray(members[name])
    raw[-5] ^= 0xFF
    members[name] = bytes(raw)

  _rewrite(path, edit_member=flip)
  with pytest.raises(pretrained.ModelFileError, match="token_embed is corrupt"):
    pretrained.load(path)
  # The header alone (card, model config) does not decode the arrays, so it reads.
  assert pretrained.read_header(path)["model_config"]["d_model"] == model.config.d_model


def test_the_header_alone_is_checked_too(model, tmp_path):
  path = str(tmp_path / "m.srj")
  pretrained.write(path, model)
  _rewrite(path, edit_header=lambda h: h.update(version=99))
  with pytest.raises(pretrained.ModelFileError, match="format version 99"):
    pretrained.card(path)


def test_overflowing_half_precision_is_refused(tmp_path):
  model = Transformer(model_config("debug"), rngs=nnx.Rngs(0))
  model.output_bias[...] = model.output_bias[...].at[0].set(1e6)
  with pytest.raises(ValueError, match="overflows float16"):
    pretrained.write(str(tmp_path / "m.srj"), model, dtype="float16")
  assert not os.path.exists(tmp_path / "m.srj")
