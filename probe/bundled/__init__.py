"""Weights and model cards of the bundled models (see probe.models.bundled)."""
