"""Reports of a benchmark run (suite_runner.py rows): CSV, a markdown summary next to
the published numbers, and PNG plots."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

# E2E's in-domain Table 2 (E2E + BFGS, model init; reference.md 6.2), keyed by
# summary()'s columns: its "R2" is the mean R2 clipped at 0.
E2E_IN_DOMAIN = {"mean R2 (clip 0)": 0.68, "Acc0.1": 0.61, "Acc0.01": 0.44, "Acc0.001": 0.29}
# Published numbers to compare against (shared spec benchmarks.md): suite -> (system, text).
PUBLISHED = {
    "feynman": [("TPSR (MCTS on E2E)", "R2>0.99 95.0%, R2>0.999 71.4%"),
                ("SNIP", "R2>0.99 88.2%"), ("Operon (SRBench)", "R2>0.999 ~86%"),
                ("AI Feynman", "symbolic solution 55.8% (noise 0)")],
    "strogatz": [("TPSR", "R2>0.99 78.6%"), ("SNIP", "R2>0.99 92.9%")],
    "in_domain": [("E2E + BFGS (paper Table 2)", ", ".join(
                      f"{name.replace('mean R2 (clip 0)', 'R2')} {value}"
                      for name, value in E2E_IN_DOMAIN.items())),
                  ("E2E without refinement", "R2 0.62, Acc0.1 0.51, Acc0.01 0.27, "
                   "Acc0.001 0.09")],
}


def summary(rows: list[dict]) -> pd.DataFrame:
  """One line per (suite, noise): the SRBench and E2E aggregate metrics. A task whose
  test metrics are not finite (stored as null) counts as a failure: R2 -inf, clipped R2
  and accuracies 0."""
  frame = pd.DataFrame(rows)
  if "symbolic_solution" not in frame:
    frame["symbolic_solution"] = np.nan
  failed = frame["test_r2"].isna()
  frame["test_r2"] = frame["test_r2"].astype(float).fillna(-np.inf)
  for column in ("test_r2_zero", "test_acc_0.1", "test_acc_0.01", "test_acc_0.001"):
    frame[column] = frame[column].astype(float).fillna(0.0)
  frame["failed"] = failed
  groups = frame.groupby(["suite", "noise"], sort=True)
  return pd.DataFrame({
      "datasets": groups.size(),
      "failed": groups["failed"].sum(),
      "R2>0.99": groups["test_r2"].apply(lambda r: np.mean(r > 0.99)),
      "R2>0.999": groups["test_r2"].apply(lambda r: np.mean(r > 0.999)),
      "mean R2 (clip 0)": groups["test_r2_zero"].mean(),
      "median R2": groups["test_r2"].median(),
      "Acc0.1": groups["test_acc_0.1"].mean(),
      "Acc0.01": groups["test_acc_0.01"].mean(),
      "Acc0.001": groups["test_acc_0.001"].mean(),
      "symbolic": groups["symbolic_solution"].apply(
          lambda s: s.dropna().astype(float).mean() if s.notna().any() else np.nan),
      "median size": groups["model_size"].median(),
      "s/dataset": groups["seconds"].mean(),
  }).reset_index()


def stage_seconds(rows: list[dict]) -> dict[str, float]:
  """The pipeline's seconds per stage, summed over the rows' shares."""
  stages = pd.DataFrame([row.get("stage_seconds", {}) for row in rows]).sum()
  return {stage: float(seconds) for stage, seconds in stages.items()}


def markdown(rows: list[dict], title: str) -> str:
  table = summary(rows)
  timing = ", ".join(f"{stage} {seconds:.1f}"
                     for stage, seconds in stage_seconds(rows).items())
  lines = [f"# {title}", "", _markdown_table(table), "",
           f"Pipeline seconds by stage over {len(rows)} tasks: {timing} "
           "(SRBench checks and metrics not included).", "", "## Published numbers", "",
           "| suite | system | number |", "|---|---|---|"]
  for suite in sorted(set(table["suite"])):
    for system, text in PUBLISHED.get(suite, []):
      lines.append(f"| {suite} | {system} | {text} |")
  return "\n".join(lines) + "\n"


def _markdown_table(frame: pd.DataFrame) -> str:
  def cell(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)
  head = "| " + " | ".join(frame.columns) + " |"
  rule = "|" + "---|" * len(frame.columns)
  body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
  return "\n".join([head, rule, *body])


def write(rows: list[dict], outdir: str, title: str = "sr_jax evaluation") -> dict[str, str]:
  """Writes results.csv, summary.md and the plots; returns {what: path}."""
  paths = {"csv": os.path.join(outdir, "results.csv"),
           "summary": os.path.join(outdir, "summary.md")}
  pd.DataFrame(rows).drop(columns=["curve_true", "curve_pred"], errors="ignore").to_csv(
      paths["csv"], index=False)
  with open(paths["summary"], "w") as f:
    f.write(markdown(rows, title))
  paths.update(plots(rows, outdir))
  return paths


def plots(rows: list[dict], outdir: str) -> dict[str, str]:
  frame = pd.DataFrame(rows)
  paths = {}
  fig, ax = plt.subplots(figsize=(6, 4))
  suites = sorted(frame["suite"].unique())
  ax.boxplot([frame.loc[frame["suite"] == s, "test_r2_zero"] for s in suites],
             tick_labels=suites)
  ax.set_ylabel("test R2 (clipped at 0)")
  ax.set_title("R2 per suite")
  paths["r2_by_suite"] = _save(fig, outdir, "r2_by_suite.png")

  fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
  for ax, column in zip(axes, ("num_operators", "dimension", "noise")):
    known = frame.dropna(subset=[column])
    for suite in suites:
      part = known[known["suite"] == suite]
      if len(part):
        rate = part.groupby(column)["test_r2"].apply(lambda r: np.mean(r > 0.99))
        ax.plot(rate.index, rate.values, marker="o", label=suite)
    ax.set_xlabel(column.replace("_", " "))
    ax.set_ylabel("share with test R2 > 0.99")
    ax.set_ylim(-0.05, 1.05)
  axes[0].legend()
  paths["accuracy_vs_difficulty"] = _save(fig, outdir, "accuracy_vs_difficulty.png")

  examples = frame.head(4)
  fig, axes = plt.subplots(1, max(len(examples), 1), figsize=(3.2 * max(len(examples), 1), 3.2),
                           squeeze=False)
  for ax, (_, row) in zip(axes[0], examples.iterrows()):
    true = np.array(row["curve_true"], float)
    pred = np.array([np.nan if v is None else v for v in row["curve_pred"]], float)
    ax.scatter(true, pred, s=8)
    finite = np.isfinite(pred)
    span = [np.min(true), np.max(true)]
    ax.plot(span, span, color="gray", linewidth=1)
    ax.set_title(f"{row['name'][:24]}\nR2 {row['test_r2']:.3f}", fontsize=8)
    ax.set_xlabel("true")
    if not finite.all():
      ax.text(0.02, 0.92, f"{(~finite).sum()} non-finite", transform=ax.transAxes, fontsize=7)
  axes[0][0].set_ylabel("predicted")
  paths["predicted_vs_true"] = _save(fig, outdir, "predicted_vs_true.png")
  return paths


def _save(fig, outdir: str, name: str) -> str:
  path = os.path.join(outdir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
