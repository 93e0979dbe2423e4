"""Evaluate a trained sr_jax model on benchmark suites (the command `sr-jax-eval`;
sr_jax/cli/evaluate.py has the flags).

    python eval.py --suite strogatz,in_domain --in_domain_size 50 --outdir runs/eval
    python eval.py --pretrained runs/paper --suite feynman,strogatz --noise 0,0.001,0.01,0.1
"""

from sr_jax.cli import evaluate

if __name__ == "__main__":
  evaluate.run()
