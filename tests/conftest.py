"""Strict JAX settings for the whole suite: silent broadcasting fails loudly."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
