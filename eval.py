"""Evaluate a trained sr_jax model on benchmark suites, SRBench's protocol.

    python eval.py --pretrained runs/debug --suite strogatz,in_domain --outdir runs/eval
    python eval.py --pretrained runs/paper --suite feynman,strogatz --noise 0,0.001,0.01,0.1

Writes per-dataset rows (results.jsonl, results.csv), summary.md next to the published
numbers, and PNG plots into --outdir. Rerunning with the same --outdir resumes: tasks
already in results.jsonl are not redone. A suite is a name (feynman, feynman_bonus,
strogatz, in_domain) or a folder of CSV/TSV files (last column = target).
"""

import json
import os

from absl import app, flags

from sr_jax import benchmarking, inference, report, suites

_PRETRAINED = flags.DEFINE_string("pretrained", "runs/debug", "Training run (train.py --workdir).")
_SUITE = flags.DEFINE_list("suite", ["strogatz", "in_domain"], "Suites or folders.")
_NOISE = flags.DEFINE_list("noise", ["0"], "Target noise levels (RMS-relative, train only).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Split / noise seeds.")
_OUTDIR = flags.DEFINE_string("outdir", "runs/eval", "Results, summary and plots.")
_MAX_DATASETS = flags.DEFINE_integer("max_datasets", 0, "Per suite; 0 = all.")
_FEYNMAN_ROWS = flags.DEFINE_integer("feynman_rows", 100_000, "Rows sampled per Feynman problem.")
_IN_DOMAIN_SIZE = flags.DEFINE_integer("in_domain_size", 1000, "In-domain problems.")
_STROGATZ_PATH = flags.DEFINE_string("strogatz_path", None, "Official Strogatz files, if any.")
_CANDIDATES = flags.DEFINE_integer("num_candidates", 10, "Samples per bag (C).")
_REFINE = flags.DEFINE_integer("num_refine", 10, "Skeletons refined per dataset (K).")
_BAGS = flags.DEFINE_integer("max_bags", 10, "Bags of 200 points per dataset.")
_SYMBOLIC = flags.DEFINE_list("symbolic_suites", ["feynman", "feynman_bonus", "strogatz"],
                              "Suites that get SRBench's symbolic-solution check (sympy).")


def _load(suite: str):
  options = {"feynman": {"num_rows": _FEYNMAN_ROWS.value},
             "feynman_bonus": {"num_rows": _FEYNMAN_ROWS.value},
             "in_domain": {"size": _IN_DOMAIN_SIZE.value},
             "strogatz": {"path": _STROGATZ_PATH.value}}.get(suite, {})
  problems = suites.load(suite, **options)
  return problems[:_MAX_DATASETS.value] if _MAX_DATASETS.value else problems


def _smoke_test_banner(workdir: str) -> None:
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  if config["model"]["size"] == "debug":
    print("NOTE: this model is the `debug` preset (1M parameters, minutes of CPU "
          "training): a smoke test of the pipeline, not a result.")


def main(argv):
  del argv
  model = inference.load_model(_PRETRAINED.value)
  _smoke_test_banner(_PRETRAINED.value)
  problems = [p for suite in _SUITE.value for p in _load(suite)]
  config = benchmarking.BenchmarkConfig(
      noise_levels=tuple(map(float, _NOISE.value)), seeds=tuple(map(int, _SEEDS.value)),
      symbolic_suites=tuple(_SYMBOLIC.value),
      inference=inference.InferenceConfig(num_candidates=_CANDIDATES.value,
                                          num_refine=_REFINE.value, max_bags=_BAGS.value))
  rows = benchmarking.run(model, problems, _OUTDIR.value, config)
  paths = report.write(rows, _OUTDIR.value, f"sr_jax on {', '.join(_SUITE.value)}")
  with open(paths["summary"]) as f:
    print(f.read())
  print("\n".join(f"{what}: {path}" for what, path in paths.items()))


if __name__ == "__main__":
  app.run(main)
