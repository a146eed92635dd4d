"""Converters from external checkpoint formats into refusal_jax parameter pytrees."""
