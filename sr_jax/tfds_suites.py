"""Benchmark suites as TFDS datasets: prepared locally into array_record files and read
back by random access without TensorFlow.

    path = tfds_suites.prepare("strogatz", data_dir)      # or any suites.load options
    problems = tfds_suites.read(path)                      # == suites.load("strogatz")

Each suite (with its options) is one config of the `sr_suites` builder and one "test"
split with one example per problem, in `suites.load` order. Preparing and reading need
tensorflow-datasets and array_record only (checked with tensorflow-datasets 4.9.10 and
no TensorFlow installed); `tfds.load` / `as_dataset` would need TensorFlow, so read
with `read`, `tfds.builder_from_directory(path).as_data_source()` or `tfds.data_source`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np

from sr_jax import suites

try:
  import tensorflow_datasets as tfds
except ImportError as error:
  raise ImportError(
      "sr_jax.tfds_suites needs tensorflow-datasets and array_record "
      "(pip install tensorflow-datasets array-record); TensorFlow is not needed") from error

SPLIT = "test"


@dataclasses.dataclass(eq=False)
class SuiteConfig(tfds.core.BuilderConfig):
  """A suite name (or folder path) and the options `suites.load` gets for it."""

  suite: str = ""
  options: dict = dataclasses.field(default_factory=dict)


def _default_config_name(suite: str) -> str:
  if suite == "in_domain":  # its content changes with the version, so must its name
    return f"in_domain_v{suites.IN_DOMAIN_VERSION}"
  return suite


class SrSuites(tfds.core.GeneratorBasedBuilder):
  """Symbolic-regression benchmark suites, one example per problem."""

  VERSION = tfds.core.Version("1.0.0")
  # TFDS looks for download checksums next to the builder's code, in 4.9.10 through
  # importlib_resources, which it does not install. Nothing is downloaded here.
  code_path = None
  BUILDER_CONFIGS = [SuiteConfig(name=_default_config_name(suite), suite=suite)
                     for suite in suites.SUITES]

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo(builder=self, ...) directly: dataset_info_from_configs fails for a
    # builder outside the TFDS catalog.
    float_tensor = lambda rank: tfds.features.Tensor(
        shape=(None,) * rank, dtype=np.float64, encoding=tfds.features.Encoding.ZLIB)
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "name": tfds.features.Text(),
            "suite": tfds.features.Text(),
            "x": float_tensor(2),
            "y": float_tensor(1),
            "feature_names": tfds.features.Sequence(tfds.features.Text()),
            "formula": tfds.features.Text(),  # "" when there is none
            "metadata": tfds.features.Text(),  # JSON, all but "extrapolation"
            "extrapolation_sigmas": float_tensor(1),
            "extrapolation_x": float_tensor(3),
            "extrapolation_y": float_tensor(2),
        }),
        disable_shuffling=True,  # keep suites.load order
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is generated locally
    return {SPLIT: self._generate_examples()}

  def _generate_examples(self):
    for index, problem in enumerate(suites.load(self.builder_config.suite,
                                                **self.builder_config.options)):
      yield index, problem_to_example(problem)


def problem_to_example(problem: suites.Problem) -> dict:
  """A Problem as a TFDS example (arrays as tensors, other metadata as JSON)."""
  metadata = dict(problem.metadata)
  extrapolation = metadata.pop("extrapolation", {})
  dim = problem.x.shape[1]
  sigmas = sorted(extrapolation)
  return {
      "name": problem.name,
      "suite": problem.suite,
      "x": problem.x,
      "y": problem.y,
      "feature_names": list(problem.feature_names),
      "formula": problem.formula if problem.formula is not None else "",
      "metadata": json.dumps(metadata),
      "extrapolation_sigmas": np.array(sigmas, dtype=np.float64),
      "extrapolation_x": (np.stack([extrapolation[s][0] for s in sigmas]) if sigmas
                          else np.zeros((0, 0, dim))),
      "extrapolation_y": (np.stack([extrapolation[s][1] for s in sigmas]) if sigmas
                          else np.zeros((0, 0))),
  }


def problem_from_example(example: dict) -> suites.Problem:
  """The inverse of problem_to_example, on a decoded example (text comes as bytes)."""
  text = lambda value: value.decode() if isinstance(value, bytes) else str(value)
  metadata = json.loads(text(example["metadata"]))
  sigmas = example["extrapolation_sigmas"]
  if len(sigmas):
    metadata["extrapolation"] = {
        float(sigma): (example["extrapolation_x"][i], example["extrapolation_y"][i])
        for i, sigma in enumerate(sigmas)}
  return suites.Problem(
      name=text(example["name"]), suite=text(example["suite"]),
      x=np.asarray(example["x"], dtype=np.float64),
      y=np.asarray(example["y"], dtype=np.float64),
      feature_names=tuple(text(name) for name in example["feature_names"]),
      formula=text(example["formula"]) or None, metadata=metadata)


def prepare(suite: str, data_dir: str, config_name: str | None = None,
            **options) -> str:
  """Generates `suite` (a name in suites.SUITES or a folder) into array_record files
  under data_dir, unless already there; returns the dataset's directory for `read`.

  Different options need different config names: by default the suite name (the
  folder's base name for a path) followed by the options, e.g. feynman_num_rows_1000.
  """
  if config_name is None:
    base = os.path.basename(os.path.normpath(suite)) if os.path.isdir(suite) else suite
    parts = [_default_config_name(base)]
    parts += [f"{key}_{value}" for key, value in sorted(options.items())]
    config_name = re.sub(r"[^A-Za-z0-9_.]", "_", "_".join(parts))
  config = SuiteConfig(name=config_name, suite=suite, options=options)
  if any(c.name == config.name and c.suite == suite and not options
         for c in SrSuites.BUILDER_CONFIGS):
    config = config.name  # TFDS refuses a custom config named like a built-in one
  builder = SrSuites(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return os.fspath(builder.data_path)


def read(path: str) -> list[suites.Problem]:
  """The problems of a prepared suite directory, in suites.load order."""
  source = tfds.builder_from_directory(path).as_data_source(split=SPLIT)
  return [problem_from_example(source[i]) for i in range(len(source))]
