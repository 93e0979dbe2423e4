"""The base config of a training run: E2E's paper setting unless an option says otherwise.

    python train.py --config configs/default.py:size=paper --workdir runs/paper
    python train.py --config configs/default.py:size=s20m --config.train.num_steps=50000

Options after the colon (comma separated): size=<name in sr_jax.model.SIZES>. Every
field below can be overridden on the command line (--config.section.field=value);
unknown fields fail loudly (lock_config). Defaults come from the typed configs'
dataclass defaults, so there is one source of truth per knob.
"""

import dataclasses

import ml_collections

from sr_jax import data, generator, model, optim, sharding, training


def _fields(instance, skip=()) -> dict:
  return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)
          if f.name not in skip}


def get_config(options: str = "") -> ml_collections.ConfigDict:
  settings = dict(item.split("=", 1) for item in options.split(",") if item)
  size = settings.pop("size", "paper")
  if settings:
    raise ValueError(f"unknown config options {sorted(settings)}; known: size")
  config = ml_collections.ConfigDict()
  config.model = {"size": size, **_fields(model.model_config(size))}
  config.generator = _fields(generator.GeneratorConfig())
  config.data = _fields(data.DataConfig(), skip=("generator", "seed"))
  config.optim = _fields(optim.OptimConfig())
  config.mesh = _fields(sharding.MeshConfig())
  config.train = _fields(training.TrainConfig())
  config.rules = [list(rule) for rule in sharding.DEFAULT_RULES]
  return config
