"""Command lines: `sr-jax-train` (train.py), `sr-jax-eval` (eval.py) and `sr-jax fit`.

Each module defines its flags and a `main`; train.py and eval.py at the top of the
checkout are thin wrappers, and pyproject.toml installs the console commands.
"""
