"""optical_jax: OPTICAL cross-lingual retrieval distillation (optimal-transport token alignment) in JAX/Flax."""

__version__ = "0.1.0"
