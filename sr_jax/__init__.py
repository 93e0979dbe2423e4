"""sr_jax: end-to-end symbolic regression with transformers, in JAX/Flax."""

from sr_jax import compile_cache

__version__ = "0.1.0"

compile_cache.enable()
