"""One versioned file per trained model: parameters, model config, vocabulary and a card.

A training checkpoint (orbax) holds the optimizer and the data position too and needs
orbax, the run's config and its mesh to read back. A model file holds only what
inference and warm starts need, and is read with the standard library and numpy:

    a zip archive (stored, not compressed) of
      header.json          format name and version, token format, vocabulary
                           fingerprints, the ModelConfig, the card, and per array its
                           shape, stored dtype and SHA-256
      arrays/<path>.npy    one array per nnx.Param, path = its state path joined by '/'

Arrays may be stored as float16 or bfloat16 (half the bytes; read back as the model's
float32 parameters). A large file can be written as numbered parts (`name.000`,
`name.001`, ...) of bounded size, which `load` joins. Every way a file can be wrong gets
a `ModelFileError` that names the file and the problem: not a model file, another
format version, another vocabulary, truncated or corrupt bytes, or arrays that do not
fit the config they came with.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import json
import os
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from sr_jax import tokens
from sr_jax.model import ModelConfig, Transformer

FORMAT = "sr_jax-model"
VERSION = 1
# Bumped whenever the meaning of token ids changes (float token layout, vocabularies).
TOKEN_FORMAT = 1
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16,
                  "bfloat16": ml_dtypes.bfloat16}
DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "assets", "default_model.srj")


class ModelFileError(ValueError):
  """A model file that cannot be used; the message names the file and the reason."""


def vocabulary_fingerprint(vocab: tokens.Vocabulary) -> str:
  return hashlib.sha256("\n".join(vocab.words).encode()).hexdigest()[:16]


def param_arrays(model: nnx.Module) -> dict[str, np.ndarray]:
  """'/'-joined state path -> host array, for every nnx.Param. With several processes,
  every process must call it (parameters sharded across processes are gathered)."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  values = [variable.get_value() for _, variable in flat]
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    values = multihost_utils.process_allgather(values, tiled=True)
  return {"/".join(map(str, path)): np.asarray(jax.device_get(value))
          for (path, _), value in zip(flat, values)}


def write(path: str, model: Transformer, card: dict[str, Any] | None = None,
          dtype: str = "float32", part_bytes: int | None = None) -> list[str]:
  """Writes the model's parameters, config and `card` (JSON-serialisable facts about
  its training) to `path`, or to parts `path.000`, ... of at most part_bytes each when
  the file is larger. Returns the paths written. Each file is written under a
  temporary name and renamed, so a crash never leaves a half-written model file."""
  return write_arrays(path, model.config, param_arrays(model), card, dtype, part_bytes)


def write_arrays(path: str, config: ModelConfig, params: dict[str, np.ndarray],
                 card: dict[str, Any] | None = None, dtype: str = "float32",
                 part_bytes: int | None = None) -> list[str]:
  """`write` for parameters already on the host (`param_arrays`' names)."""
  if dtype not in STORAGE_DTYPES:
    raise ValueError(f"unknown storage dtype {dtype!r}; choose from {sorted(STORAGE_DTYPES)}")
  arrays, index = {}, {}
  for name, value in params.items():
    with np.errstate(over="ignore"):  # overflow is checked, and named, below
      stored = value.astype(STORAGE_DTYPES[dtype])
    if not np.all(np.isfinite(stored.astype(np.float32)) | ~np.isfinite(value)):
      raise ValueError(f"parameter {name} overflows {dtype}; store as float32")
    raw = stored.view(np.uint16) if dtype == "bfloat16" else stored
    buffer = io.BytesIO()
    np.save(buffer, raw, allow_pickle=False)
    arrays[name] = buffer.getvalue()
    index[name] = {"shape": list(value.shape), "dtype": dtype,
                   "sha256": hashlib.sha256(arrays[name]).hexdigest()}
  header = {
      "format": FORMAT, "version": VERSION, "token_format": TOKEN_FORMAT,
      "vocabulary": {"encoder": vocabulary_fingerprint(tokens.ENCODER_VOCAB),
                     "decoder": vocabulary_fingerprint(tokens.DECODER_VOCAB)},
      "model_config": dataclasses.asdict(architecture(config)),
      "card": card or {},
      "arrays": index,
  }
  blob = io.BytesIO()
  with zipfile.ZipFile(blob, "w", zipfile.ZIP_STORED) as archive:
    archive.writestr("header.json", json.dumps(header, indent=1, sort_keys=True))
    for name, data in arrays.items():
      archive.writestr(f"arrays/{name}.npy", data)
  data = blob.getvalue()
  for stale in [path] + _part_paths(path):
    if os.path.exists(stale):
      os.remove(stale)
  if part_bytes is None or len(data) <= part_bytes:
    chunks = {path: data}
  else:
    chunks = {f"{path}.{i:03d}": data[start:start + part_bytes]
              for i, start in enumerate(range(0, len(data), part_bytes))}
  for target, chunk in chunks.items():
    with open(target + ".tmp", "wb") as f:
      f.write(chunk)
    os.replace(target + ".tmp", target)
  return list(chunks)


def _part_paths(path: str) -> list[str]:
  return sorted(p for p in glob.glob(glob.escape(path) + ".*")
                if p[len(path) + 1:].isdigit())


def _read_bytes(path: str) -> bytes:
  if os.path.isfile(path):
    with open(path, "rb") as f:
      return f.read()
  parts = _part_paths(path)
  if not parts:
    raise ModelFileError(f"no model file at {path!r} (nor parts {path}.000, ...)")
  expected = [f"{path}.{i:03d}" for i in range(len(parts))]
  if parts != expected:
    raise ModelFileError(f"model file {path!r}: parts are not numbered 000..{len(parts) - 1:03d} "
                         f"(found {[os.path.basename(p) for p in parts]})")
  return b"".join(open(p, "rb").read() for p in parts)


def _open(path: str) -> tuple[zipfile.ZipFile, dict]:
  """The file's archive and its checked header (format, version, token format,
  vocabularies)."""
  data = _read_bytes(path)
  try:
    archive = zipfile.ZipFile(io.BytesIO(data))
    header = json.loads(archive.read("header.json"))
  except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, EOFError) as e:
    raise ModelFileError(f"{path!r} is not a readable sr_jax model file (truncated, "
                         f"corrupt or another kind of file): {e}") from None
  if header.get("format") != FORMAT:
    raise ModelFileError(f"{path!r} is not an sr_jax model file (format {header.get('format')!r})")
  if header.get("version") != VERSION:
    raise ModelFileError(f"{path!r} has model file format version {header.get('version')}; "
                         f"this sr_jax reads version {VERSION}")
  if header.get("token_format") != TOKEN_FORMAT:
    raise ModelFileError(f"{path!r} was trained with token format {header.get('token_format')}; "
                         f"this sr_jax uses token format {TOKEN_FORMAT}")
  expected_vocab = {"encoder": vocabulary_fingerprint(tokens.ENCODER_VOCAB),
                    "decoder": vocabulary_fingerprint(tokens.DECODER_VOCAB)}
  if header.get("vocabulary") != expected_vocab:
    raise ModelFileError(f"{path!r} was trained with other vocabularies "
                         f"({header.get('vocabulary')} vs this sr_jax's {expected_vocab})")
  return archive, header


def read_header(path: str) -> dict:
  """The checked header of a model file (model config, card), its arrays not decoded."""
  return _open(path)[1]


def read(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(header, float32 arrays by name) of a model file, every check done."""
  archive, header = _open(path)
  arrays = {}
  for name, spec in header["arrays"].items():
    try:
      raw = archive.read(f"arrays/{name}.npy")
    except (KeyError, zipfile.BadZipFile, EOFError) as e:
      raise ModelFileError(f"{path!r}: array {name} is missing or unreadable: {e}") from None
    if hashlib.sha256(raw).hexdigest() != spec["sha256"]:
      raise ModelFileError(f"{path!r}: array {name} is corrupt (checksum mismatch)")
    value = np.load(io.BytesIO(raw), allow_pickle=False)
    if spec["dtype"] == "bfloat16":
      value = value.view(ml_dtypes.bfloat16)
    if list(value.shape) != spec["shape"]:
      raise ModelFileError(f"{path!r}: array {name} has shape {value.shape}, header says "
                           f"{spec['shape']}")
    arrays[name] = value.astype(np.float32)
  return header, arrays


def architecture(config: ModelConfig) -> ModelConfig:
  """The config a model file stores: float32 compute. The compute dtype is how a run
  computes, not what the model is: a model trained in mixed precision (bf16 products)
  is used in float32 unless its user asks otherwise, and warm-starts a run of either
  dtype."""
  return dataclasses.replace(config, dtype="float32")


def model_config(header: dict, path: str = "") -> ModelConfig:
  try:
    return ModelConfig(**header["model_config"])
  except (TypeError, ValueError) as e:
    raise ModelFileError(f"{path!r}: its model config does not fit this sr_jax: {e}") from None


def load(path: str = DEFAULT_MODEL) -> Transformer:
  """The model stored at `path` (default: the model shipped in the package), with its
  parameters in the config's param_dtype (float32) on the default device."""
  header, arrays = read(path)
  abstract = nnx.eval_shape(lambda: Transformer(model_config(header, path), rngs=nnx.Rngs(0)))
  return with_params(abstract, arrays, path)


def with_params(model: Transformer, arrays: dict[str, np.ndarray], path: str = "") -> Transformer:
  """A copy of `model` (abstract or concrete) whose nnx.Params are `arrays`; raises
  ModelFileError when names or shapes disagree."""
  graphdef, state = nnx.split(model)
  flat = nnx.to_flat_state(state)
  names = {"/".join(map(str, p)) for p, v in flat if isinstance(v, nnx.Param)}
  missing, extra = sorted(names - set(arrays)), sorted(set(arrays) - names)
  if missing or extra:
    raise ModelFileError(f"{path!r} does not match its model config: missing arrays "
                         f"{missing[:5]}, unexpected arrays {extra[:5]}")
  pairs = []
  for key, variable in flat:
    name = "/".join(map(str, key))
    if name in arrays:
      shape = tuple(variable.get_value().shape)
      if tuple(arrays[name].shape) != shape:
        raise ModelFileError(f"{path!r}: array {name} has shape {arrays[name].shape}, the "
                             f"config needs {shape}")
      variable = variable.replace(jnp.asarray(arrays[name], jnp.dtype(model.config.param_dtype)))
    pairs.append((key, variable))
  return nnx.merge(graphdef, nnx.from_flat_state(pairs))


def card(path: str = DEFAULT_MODEL) -> dict:
  """The card of a model file (its training facts), without building the model."""
  return read_header(path)["card"]
