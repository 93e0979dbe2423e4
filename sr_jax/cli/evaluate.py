"""Evaluate a trained sr_jax model on benchmark suites, SRBench's protocol.

    sr-jax-eval --suite strogatz,in_domain --in_domain_size 50 --outdir runs/eval
    python eval.py --pretrained runs/paper --suite feynman,strogatz --noise 0,0.001,0.01,0.1

--pretrained defaults to the model shipped in the package; it may also be a model file
or a training run's directory. Writes per-dataset rows (results.jsonl, results.csv),
summary.md next to the published numbers, and PNG plots into --outdir. Rerunning with
the same --outdir resumes: tasks already in results.jsonl are not redone. A suite is a
name (feynman, feynman_bonus, strogatz, in_domain) or a folder of CSV/TSV files (last
column = target).
"""

import json
import os

from absl import app, flags

from sr_jax import console, inference, pretrained, report, suite_runner, suites

_PRETRAINED = flags.DEFINE_string("pretrained", "default",
                                  "'default' (the shipped model), a model file, or a "
                                  "training run (train.py --workdir).")
_SUITE = flags.DEFINE_list("suite", ["strogatz", "in_domain"], "Suites or folders.")
_NOISE = flags.DEFINE_list("noise", ["0"], "Target noise levels (RMS-relative, train only).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Split / noise seeds.")
_OUTDIR = flags.DEFINE_string("outdir", "runs/eval", "Results, summary and plots.")
_MAX_DATASETS = flags.DEFINE_integer("max_datasets", 0, "Per suite; 0 = all.")
_FEYNMAN_ROWS = flags.DEFINE_integer("feynman_rows", 100_000, "Rows sampled per Feynman problem.")
_IN_DOMAIN_SIZE = flags.DEFINE_integer("in_domain_size", 1000, "In-domain problems.")
_STROGATZ_PATH = flags.DEFINE_string("strogatz_path", None, "Official Strogatz files, if any.")
_CANDIDATES = flags.DEFINE_integer("num_candidates", 10, "Samples per bag (C).")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature (> 0).")
flags.register_validator("temperature", lambda t: t > 0,
                         "--temperature must be > 0 (sampling divides the logits by it)")
_REFINE = flags.DEFINE_integer("num_refine", 10, "Skeletons refined per dataset (K).")
_BAGS = flags.DEFINE_integer("max_bags", 10, "Bags of 200 points per dataset.")
_VIEWS = flags.DEFINE_list("views", list(inference.InferenceConfig.views),
                           f"Views of the data every bag is decoded in, from {inference.VIEWS}.")
_DECODE_BATCH = flags.DEFINE_integer(
    "decode_batch", inference.InferenceConfig.decode_batch,
    "Bags per decoding call (0: 8 on a CPU, 64 on an accelerator): a call runs until "
    "its longest candidate ends.", lower_bound=0)
_SCREEN = flags.DEFINE_integer(
    "screen_points", inference.InferenceConfig.screen_points,
    "Candidates are screened on this many training points before the best are ranked "
    "on all (0: every candidate on all points, as E2E).")
_RESIDUAL_ROUNDS = flags.DEFINE_integer(
    "residual_rounds", inference.InferenceConfig.residual_rounds,
    "Rounds that decode formulas for the residual y - f(x) of a dataset's best formula f "
    "and add them to it (0: off).", lower_bound=0)
_SEARCH_TIME = flags.DEFINE_float("search_time", 2.0,
                                  "Seconds of evolutionary search per dataset (0: off).")
_SYMBOLIC = flags.DEFINE_list("symbolic_suites", ["feynman", "feynman_bonus", "strogatz"],
                              "Suites that get SRBench's symbolic-solution check (sympy).")


def _load(suite: str):
  options = {"feynman": {"num_rows": _FEYNMAN_ROWS.value},
             "feynman_bonus": {"num_rows": _FEYNMAN_ROWS.value},
             "in_domain": {"size": _IN_DOMAIN_SIZE.value},
             "strogatz": {"path": _STROGATZ_PATH.value}}.get(suite, {})
  problems = suites.load(suite, **options)
  return problems[:_MAX_DATASETS.value] if _MAX_DATASETS.value else problems


def describe_model(source: str) -> str:
  """One line on what the model is: its size and training, or a smoke-test warning."""
  if os.path.isdir(source):
    with open(os.path.join(source, "config.json")) as f:
      size, card = json.load(f)["model"]["size"], {}
  else:
    card = pretrained.card(pretrained.DEFAULT_MODEL if source == "default" else source)
    size = card.get("size", "?")
  if size == "debug":
    return ("NOTE: this model is the `debug` preset (1M parameters, minutes of CPU "
            "training): a smoke test of the pipeline, not a result.")
  if not card:
    return f"model: the `{size}` preset, training run {source}"
  return (f"model: `{size}`, {card.get('parameters', 0) / 1e6:.1f}M parameters, "
          f"{card.get('examples', 0):,.0f} training examples on {card.get('device', '?')} "
          f"({card.get('date', '?')})")


def main(argv):
  del argv
  console.setup(os.path.join(_OUTDIR.value, "eval.log"))
  model = inference.load_model(_PRETRAINED.value)
  print(describe_model(_PRETRAINED.value))
  problems = [p for suite in _SUITE.value for p in _load(suite)]
  config = suite_runner.SuiteConfig(
      noise_levels=tuple(map(float, _NOISE.value)), seeds=tuple(map(int, _SEEDS.value)),
      symbolic_suites=tuple(_SYMBOLIC.value),
      inference=inference.InferenceConfig(num_candidates=_CANDIDATES.value,
                                          temperature=_TEMPERATURE.value,
                                          num_refine=_REFINE.value, max_bags=_BAGS.value,
                                          views=tuple(_VIEWS.value),
                                          decode_batch=_DECODE_BATCH.value,
                                          screen_points=_SCREEN.value,
                                          residual_rounds=_RESIDUAL_ROUNDS.value,
                                          search_time=_SEARCH_TIME.value))
  rows = suite_runner.run(model, problems, _OUTDIR.value, config)
  paths = report.write(rows, _OUTDIR.value, f"sr_jax on {', '.join(_SUITE.value)}")
  with open(paths["summary"]) as f:
    print(f.read())
  print("\n".join(f"{what}: {path}" for what, path in paths.items()))


def run():
  """The console command."""
  app.run(main)
