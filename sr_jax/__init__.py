"""sr_jax: end-to-end symbolic regression with transformers, in JAX/Flax."""

__version__ = "0.1.0"
