"""What a command prints: a quiet console by default, every log line in a file.

orbax and absl log hundreds of INFO lines per training run, which drowned the progress
line. `setup` keeps warnings and errors on the console (everything with
--verbosity=0, absl's INFO, or higher) and writes every INFO line to a log file.
"""

from __future__ import annotations

import logging
import os

from absl import flags
from absl import logging as absl_logging


def setup(log_file: str | None = None) -> None:
  """Console at WARNING unless --verbosity was given; log_file (if any) gets INFO up."""
  verbosity_flag = flags.FLAGS["verbosity"] if "verbosity" in flags.FLAGS else None
  explicit = verbosity_flag is not None and verbosity_flag.present
  absl_logging.set_verbosity(absl_logging.INFO)  # records reach the handlers below
  console_level = _python_level(verbosity_flag.value) if explicit else logging.WARNING
  handler = absl_logging.get_absl_handler()
  handler.setLevel(console_level)
  logging.getLogger().setLevel(logging.INFO)
  if log_file:
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    file_handler = logging.FileHandler(log_file)
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d] %(message)s"))
    logging.getLogger().addHandler(file_handler)


def _python_level(absl_verbosity: int) -> int:
  """absl's --verbosity (-1 WARNING, 0 INFO, 1+ DEBUG) as a Python logging level."""
  return absl_logging.converter.absl_to_standard(absl_verbosity)
