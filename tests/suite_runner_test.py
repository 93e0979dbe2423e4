"""Suite evaluation: rows, summary, plots, SRBench checks, and resume after a crash.

The model is replaced by a proposer that returns each problem's true skeleton with
wrong constants; the formulas are chosen so standardising X keeps their skeleton
(every variable sits in an affine map), so refinement through the real pipeline can
recover them."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import sympy
from sklearn.metrics import r2_score

from sr_jax import inference, metrics, report, suite_runner, suites

# (formula in x0, x1, skeleton proposed in every view: its constants absorb the scaling)
_FORMULAS = [
    ("2.5 + 1.5*sin(0.8 + 1.2*x0) - 0.7*x1",
     ["add", 1.0, "add", "mul", 1.0, "sin", "add", 0.5, "mul", 1.0, "x_0", "mul", 1.0, "x_1"]),
    ("0.3 - 2*x0 + 4*x1",
     ["add", 1.0, "add", "mul", 1.0, "x_0", "mul", 1.0, "x_1"]),
    # Not 0.5*x1: the model string writes halves exactly (x1/2), which SRBench's check
    # cannot match with a truth's 0.5 inside a function (expressions._sympy_number).
    ("1 + exp(0.4*x1 - 0.2)",
     ["add", 0.5, "mul", 1.0, "exp", "add", 0.1, "mul", 0.4, "x_1"]),
]


def _problems():
  rng = np.random.default_rng(0)
  problems = []
  for k, (formula, _) in enumerate(_FORMULAS):
    x = rng.uniform(-2, 2, size=(120, 2))
    y = eval(formula, {"sin": np.sin, "exp": np.exp, "x0": x[:, 0], "x1": x[:, 1]})
    problems.append(suites.Problem(f"toy_{k}", "toy", x, np.asarray(y, float), ("x0", "x1"),
                                   formula, {"dimension": 2, "num_rows": 120,
                                             "srbench_excluded": False, "num_operators": k}))
  return problems


def _proposer(problems, tasks_per_problem=None):
  """Bag -> its problem's skeleton. Problems are told apart by the bag's dataset index
  (tasks_per_problem tasks each, all in one chunk), or else by their exact y values."""
  values = {float(v): k for k, p in enumerate(problems) for v in p.y}

  def which(i, y):
    return i // tasks_per_problem if tasks_per_problem else values[float(y[0])]

  def propose(bags):
    return [[_FORMULAS[which(i, y)][1], None] for i, _, y, _ in bags]
  return propose


def _without_timing(rows):
  return [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]


def test_rows_summary_and_plots(tmp_path):
  problems = _problems()
  config = suite_runner.SuiteConfig(noise_levels=(0.0, 0.01), seeds=(0,),
                                    symbolic_suites=("toy",))
  rows = suite_runner.run(None, problems, str(tmp_path), config,
                          propose=_proposer(problems, tasks_per_problem=2))
  assert len(rows) == 6 and len({r["key"] for r in rows}) == 6
  clean = [r for r in rows if r["noise"] == 0]
  assert all(r["test_r2"] > 0.999999 for r in clean)
  assert all(r["test_acc_0.001"] for r in clean)
  assert all(r["symbolic_solution"] for r in clean), [r["symbolic_reason"] for r in clean]
  assert all(0.9 < r["test_r2"] < 1 for r in rows if r["noise"] == 0.01)
  assert all(r["num_invalid"] == r["num_decoded"] // 2 for r in rows)
  paths = report.write(rows, str(tmp_path), "toy")
  for name in ("csv", "summary", "r2_by_suite", "accuracy_vs_difficulty",
               "predicted_vs_true"):
    assert os.path.getsize(paths[name]) > 0
  table = report.summary(rows)
  assert list(table["datasets"]) == [3, 3]
  assert table.loc[table["noise"] == 0, "R2>0.999"].item() == 1.0
  # E2E's Table 2 is keyed by the summary's columns (benchmarks/projection.py reads them).
  assert table.loc[table["noise"] == 0, list(report.E2E_IN_DOMAIN)].to_numpy().tolist() == [
      [1.0, 1.0, 1.0, 1.0]]
  text = open(paths["summary"]).read()
  assert "| toy | 0.000 | 3 | 0 | 1.000 | 1.000 |" in text
  assert "Pipeline seconds by stage over 6 tasks: prepare" in text and "refine" in text
  assert len(pd.read_csv(paths["csv"])) == 6
  assert not os.path.exists(tmp_path / (suite_runner.RESULTS_FILE + ".tmp"))


def test_resume_after_a_crash_gives_the_same_table(tmp_path):
  problems = _problems()
  config = suite_runner.SuiteConfig(chunk_size=1, symbolic_suites=("toy",))
  straight = suite_runner.run(None, problems, str(tmp_path / "a"), config,
                              propose=_proposer(problems))
  # A crash after two tasks, in the middle of writing the third line.
  crashed = tmp_path / "b"
  suite_runner.run(None, problems[:2], str(crashed), config, propose=_proposer(problems))
  with open(crashed / suite_runner.RESULTS_FILE, "a") as f:
    f.write(json.dumps(straight[2])[:40])
  calls = []

  def counting(bags):
    calls.append(len(bags))
    return _proposer(problems)(bags)
  resumed = suite_runner.run(None, problems, str(crashed), config, propose=counting)
  assert len(calls) == 1  # only the unfinished task ran again
  assert _without_timing(resumed) == _without_timing(straight)


def test_in_domain_rows_have_extrapolation(tmp_path):
  """Each extrapolation R2 is the returned formula's R2 on that sigma's points (sklearn
  and sympy as the oracle), or null where it is not finite."""
  problem = suites.in_domain(size=1, seed=0)[0]

  def propose(bags):
    return [[["add", 1.0, "mul", 1.0, "x_0"]] for _ in bags]
  rows = suite_runner.run(None, [problem], str(tmp_path),
                          suite_runner.SuiteConfig(), propose=propose)
  names = problem.feature_names
  formula = sympy.lambdify(sympy.symbols(names), sympy.sympify(rows[0]["model"]), "numpy")
  for sigma, (x, y) in problem.metadata["extrapolation"].items():
    with np.errstate(all="ignore"):
      expected = r2_score(y, np.broadcast_to(formula(*x.T), y.shape))
    stored = rows[0][f"extrapolation_r2_sigma{sigma:g}"]
    assert (stored is None) if not np.isfinite(expected) else (
        stored == pytest.approx(expected, rel=1e-6, abs=1e-9))
  assert "symbolic_solution" not in rows[0]


def test_non_finite_metrics_are_null_and_count_as_failures(tmp_path):
  assert suite_runner._plain(float("nan")) is None
  assert suite_runner._plain(-np.inf) is None and suite_runner._plain(2.0) == 2.0
  ok = {"suite": "toy", "noise": 0.0, "test_r2": 0.995, "test_r2_zero": 0.995,
        "test_acc_0.1": 1.0, "test_acc_0.01": 1.0, "test_acc_0.001": 0.0,
        "model_size": 5, "seconds": 1.0}
  failed = {**ok, "test_r2": None, "test_r2_zero": None, "test_acc_0.1": None,
            "test_acc_0.01": None, "test_acc_0.001": None}
  path = tmp_path / suite_runner.RESULTS_FILE
  path.write_text(json.dumps(ok) + "\n" + json.dumps(failed) + "\n")
  rows = suite_runner.read_results(str(tmp_path))
  table = report.summary(rows)
  assert table["failed"].item() == 1 and table["datasets"].item() == 2
  assert table["R2>0.99"].item() == 0.5
  assert table["mean R2 (clip 0)"].item() == pytest.approx(0.995 / 2)
  assert table["Acc0.1"].item() == 0.5 and table["median R2"].item() == -np.inf


def test_symbolic_check_that_runs_over_its_time_is_cut_not_waited_for():
  with suite_runner._SymbolicChecker(timeout=0.05) as checker:
    # The worker cannot even start in 50 ms, so this check runs over.
    check = checker.check("2*x0", "2*x0", ("x0",), 1.0, 100)
    assert not check.solved and "took over" in check.reason
  with suite_runner._SymbolicChecker(timeout=60) as checker:
    assert checker.check("2.0001*x0", "2*x0", ("x0",), 1.0, 100).solved


def test_progress_is_reported_within_a_chunk(tmp_path, monkeypatch, capsys):
  """Long runs show progress as groups of datasets finish, not only per chunk."""
  from sr_jax import inference
  monkeypatch.setattr(inference, "_GROUP", 1)
  problems = _problems()
  suite_runner.run(None, problems, str(tmp_path), suite_runner.SuiteConfig(),
                   propose=_proposer(problems))
  lines = [l for l in capsys.readouterr().err.splitlines() if "tasks" in l]
  assert [l.split("]")[1].split()[0] for l in lines] == ["1/3", "2/3", "3/3"]


def test_test_r2_scores_each_problem_on_its_test_split():
  """The quick probe: the true skeleton refines to R2 ~ 1 on the held-out rows; a
  constant proposal scores what sklearn gives the training mean on those rows."""
  problems = _problems()
  config = inference.InferenceConfig(search_time=0.0)
  r2 = suite_runner.test_r2(None, problems, config, propose=_proposer(problems))
  assert r2.shape == (3,) and np.all(r2 > 0.999999)
  constant = suite_runner.test_r2(None, problems, config,
                                  propose=lambda bags: [[[1.0]] for _ in bags])
  for problem, value in zip(problems, constant):
    _, y_train, _, y_test = metrics.srbench_split(problem.x, problem.y, 0)
    assert value == pytest.approx(r2_score(y_test, np.full_like(y_test, y_train.mean())),
                                  abs=1e-9)
