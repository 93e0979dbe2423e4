"""Command lines: `sr-jax fit` on a CSV file (text and JSON), its named errors, the
console scripts, the default persistent compilation cache, and eval.py's temperature flag."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import sympy
from absl import flags
from absl.testing import flagsaver
from flax import nnx

from sr_jax import inference, pretrained, suite_runner
from sr_jax.cli import evaluate, fit
from sr_jax.model import Transformer, model_config


FAST = ["--num_candidates", "2", "--max_bags", "1", "--views", "standardised",
        "--search_time", "0.5"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("model") / "tiny.srj")
  pretrained.write(path, Transformer(model_config("debug"), rngs=nnx.Rngs(0)))
  return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
  rng = np.random.default_rng(0)
  frame = pd.DataFrame({"a": rng.uniform(1, 2, 50), "b": rng.uniform(1, 2, 50)})
  frame["y"] = 3 * frame["a"] + 1
  path = tmp_path_factory.mktemp("data") / "data.csv"
  frame.to_csv(path, index=False)
  return str(path)


def test_fit_prints_formula_r2_and_candidates(model_file, data_file, capsys):
  assert fit.main(["fit", data_file, "--pretrained", model_file] + FAST) == 0
  out = capsys.readouterr().out
  assert out.startswith("y = ") and "R2 on the data:" in out and "Pareto front" in out


def test_fit_json_is_machine_readable(model_file, data_file, capsys):
  fit.main(["fit", data_file, "--pretrained", model_file, "--target", "b", "--json"] + FAST)
  result = json.loads(capsys.readouterr().out)
  assert result["target"] == "b" and result["candidates"]
  assert result["r2"] == pytest.approx(result["candidates"][0]["r2"], abs=1e-9)
  assert set(result) >= {"formula", "latex", "notes", "pareto_front"}
  assert sum(f["selected"] for f in result["pareto_front"]) == 1
  # The target is not an input (a symbol, not a letter: the formula may read Abs).
  assert "b" not in {str(s) for s in sympy.sympify(result["formula"]).free_symbols}


@pytest.mark.parametrize("args, message", [
    (["--target", "nope"], "no column 'nope'"),
    (["--views", "standardised,whitened"], "views must be distinct names from"),
])
def test_fit_errors_are_named(model_file, data_file, args, message):
  with pytest.raises(SystemExit, match=message):
    fit.main(["fit", data_file, "--pretrained", model_file] + args)


def test_unreadable_and_non_numeric_files_are_named(model_file, tmp_path):
  text = tmp_path / "words.csv"
  text.write_text("a,y\nred,1\nblue,2\n")
  with pytest.raises(SystemExit, match="non-numeric column"):
    fit.main(["fit", str(text), "--pretrained", model_file])
  one = tmp_path / "one.csv"
  one.write_text("y\n1\n2\n")
  with pytest.raises(SystemExit, match="1 column"):
    fit.main(["fit", str(one), "--pretrained", model_file])
  with pytest.raises(SystemExit, match="cannot read"):
    fit.main(["fit", str(tmp_path / "absent.csv"), "--pretrained", model_file])


def test_console_scripts_are_installed():
  for name in ("sr-jax", "sr-jax-train", "sr-jax-eval"):
    assert shutil.which(name), f"{name} is not on PATH: pip install -e . installs it"
  done = subprocess.run(["sr-jax"], capture_output=True, text=True, timeout=120)
  assert done.returncode == 2 and "usage: sr-jax {fit,train,eval}" in done.stderr
  done = subprocess.run(["sr-jax-train", "--helpfull"], capture_output=True, text=True,
                        timeout=120)
  assert "--workdir" in done.stdout and "--config" in done.stdout  # absl's help exits 1


@pytest.mark.parametrize("setting, expected", [
    ({"SR_JAX_CACHE_DIR": "{tmp}/cache"}, "{tmp}/cache"),
    ({"SR_JAX_CACHE_DIR": "off"}, "None"),
    ({"JAX_COMPILATION_CACHE_DIR": "{tmp}/theirs", "SR_JAX_CACHE_DIR": "{tmp}/cache"},
     "{tmp}/theirs"),
    ({"XDG_CACHE_HOME": "{tmp}/xdg"}, "{tmp}/xdg/sr_jax/jax"),
])
def test_persistent_compilation_cache_is_on_by_default(tmp_path, setting, expected):
  env = {k: v for k, v in os.environ.items()
         if k not in ("SR_JAX_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")}
  env.update({k: v.format(tmp=tmp_path) for k, v in setting.items()})
  done = subprocess.run([sys.executable, "-c", "import sr_jax, jax; "
                         "print(jax.config.jax_compilation_cache_dir)"],
                        capture_output=True, text=True, env=env, timeout=120)
  assert done.stdout.strip() == expected.format(tmp=tmp_path), done.stderr


def test_training_console_is_quiet_and_the_log_file_complete(tmp_path):
  """train.py prints a progress line and its final metrics; the orbax/absl INFO lines
  (hundreds per run) go to workdir/train.log only."""
  workdir = tmp_path / "run"
  command = [sys.executable, os.path.join(ROOT, "train.py"), "--config",
             os.path.join(ROOT, "configs", "debug.py"), "--workdir", str(workdir),
             "--config.train.num_steps=2", "--config.train.eval_every=2",
             "--config.train.checkpoint_every=2", "--config.data.point_buckets=(200,)",
             "--config.data.length_groups=1"]
  done = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  console = (done.stdout + done.stderr).splitlines()
  assert len(console) <= 6, console
  assert any("final metrics" in line for line in console)
  log = (workdir / "train.log").read_text().splitlines()
  assert len(log) > 20 and any("checkpoint" in line.lower() for line in log)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_eval_passes_its_decoding_and_screening_flags_and_refuses_zero_temperature(
    tmp_path, monkeypatch):
  seen = []

  class Stop(Exception):
    pass

  def stop(model, problems, outdir, config):
    seen.append(config.inference)
    raise Stop  # enough: the configuration is what is checked

  monkeypatch.setattr(evaluate.inference, "load_model", lambda source: None)
  monkeypatch.setattr(suite_runner, "run", stop)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(temperature=1.3, suite=["strogatz"], outdir=str(tmp_path)):
    with pytest.raises(Stop):
      evaluate.main([])
  assert seen[0].temperature == 1.3
  # Views: the library's default unless named.
  assert seen[0].views == inference.InferenceConfig().views
  assert seen[0].screen_points == inference.InferenceConfig().screen_points > 0
  assert seen[0].decode_batch == inference.InferenceConfig().decode_batch
  assert seen[0].residual_rounds == inference.InferenceConfig().residual_rounds == 2
  with flagsaver.flagsaver(views=["scaled", "reversed"], screen_points=0, decode_batch=4,
                           residual_rounds=0, suite=["strogatz"], outdir=str(tmp_path)):
    with pytest.raises(Stop):
      evaluate.main([])
  assert seen[1].views == ("scaled", "reversed") and seen[1].screen_points == 0
  assert seen[1].decode_batch == 4 and seen[1].residual_rounds == 0
  done = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), "--temperature", "0"],
                        capture_output=True, text=True, timeout=120)
  assert done.returncode != 0 and "--temperature must be > 0" in done.stderr
