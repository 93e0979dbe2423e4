"""`sr-jax`: formulas for a data file, from the command line.

    sr-jax fit data.csv                     # last column is y
    sr-jax fit data.tsv --target pressure --json
    sr-jax train ... / sr-jax eval ...      # the same as sr-jax-train / sr-jax-eval

Reads CSV or TSV (a header row names the columns), fits the shipped model (or
--pretrained) with --search_time seconds of search, and prints the selected formula,
its R2 on the data, the Pareto front of complexity vs error and the ranked
candidates; --json prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import sys

import pandas as pd


def _read(path: str) -> pd.DataFrame:
  try:
    frame = pd.read_csv(path, sep="\t" if path.endswith((".tsv", ".tab")) else ",")
  except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
    raise SystemExit(f"sr-jax fit: cannot read {path!r}: {e}") from None
  if frame.shape[1] < 2:
    raise SystemExit(f"sr-jax fit: {path!r} has {frame.shape[1]} column(s); need features "
                     "and a target")
  return frame


def fit(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="sr-jax fit", description=__doc__.split("\n")[0])
  parser.add_argument("data", help="CSV or TSV file with a header row")
  parser.add_argument("--target", help="the y column (default: the last one)")
  parser.add_argument("--pretrained", default=None,
                      help="a model file or training run (default: the shipped model)")
  parser.add_argument("--max_time", type=float, default=None, help="seconds for the fit")
  parser.add_argument("--num_candidates", type=int, default=10, help="samples per bag")
  parser.add_argument("--max_bags", type=int, default=3,
                      help="bags of 200 points read (the regressor's default)")
  parser.add_argument("--views", default=None,
                      help="views of the data the model reads, comma-separated, e.g. "
                           "standardised,scaled,reversed (default: the regressor's)")
  parser.add_argument("--search_time", type=float, default=2.0,
                      help="seconds of evolutionary search (0: off)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--top", type=int, default=10, help="candidates shown")
  parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
  args = parser.parse_args(argv)
  frame = _read(args.data)
  target = args.target if args.target is not None else frame.columns[-1]
  if target not in frame.columns:
    raise SystemExit(f"sr-jax fit: no column {target!r} in {args.data!r} "
                     f"(columns: {list(frame.columns)})")
  X = frame.drop(columns=[target])
  non_numeric = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
  if non_numeric or not pd.api.types.is_numeric_dtype(frame[target]):
    raise SystemExit(f"sr-jax fit: non-numeric column(s) {non_numeric or [target]} in "
                     f"{args.data!r}")
  from sr_jax.regressor import SymbolicTransformerRegressor  # after argument errors
  views = {} if args.views is None else {"views": tuple(args.views.split(","))}
  est = SymbolicTransformerRegressor(args.pretrained, num_candidates=args.num_candidates,
                                     max_bags=args.max_bags, max_time=args.max_time,
                                     search_time=args.search_time,
                                     random_state=args.seed, **views)
  try:
    est.fit(X, frame[target])
  except ValueError as e:
    raise SystemExit(f"sr-jax fit: {e}") from None
  table = est.candidates_.head(args.top)
  front = est.equations_
  r2 = float(est.score(X, frame[target]))
  if args.json:
    json.dump({"target": str(target), "formula": est.model(), "r2": r2,
               "latex": est.latex(), "notes": list(est.result_.notes),
               "pareto_front": [{"expression": str(row.expression),
                                 "complexity": int(row.complexity), "r2": float(row.r2),
                                 "loss": float(row.loss), "selected": bool(row.selected)}
                                for row in front.itertuples()],
               "candidates": [{"expression": str(row.expression), "complexity": int(row.complexity),
                               "r2": float(row.r2), "loss": float(row.loss),
                               "refined": bool(row.refined)}
                              for row in table.itertuples()]}, sys.stdout, indent=1)
    print()
    return 0
  print(f"{target} = {est.model()}")
  print(f"R2 on the data: {r2:.6f}")
  for note in est.result_.notes:
    print(f"note: {note}")
  print("\nPareto front (complexity vs error; * = selected):")
  marks = ["*" if chosen else "" for chosen in front["selected"]]
  print(front.assign(selected=marks)[["selected", "complexity", "r2", "loss", "expression"]]
        .to_string(index=False))
  print(f"\nTop {len(table)} candidates:")
  print(table[["complexity", "r2", "loss", "source", "expression"]].to_string(index=False))
  return 0


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  commands = ("fit", "train", "eval")
  if not argv or argv[0] not in commands:
    print(f"usage: sr-jax {{{','.join(commands)}}} ...  (sr-jax fit --help)", file=sys.stderr)
    return 2
  if argv[0] == "fit":
    return fit(argv[1:])
  sys.argv = [f"sr-jax {argv[0]}"] + argv[1:]
  if argv[0] == "train":
    from sr_jax.cli import train
    train.run()
  else:
    from sr_jax.cli import evaluate
    evaluate.run()
  return 0


def run():
  """The console command."""
  sys.exit(main())
