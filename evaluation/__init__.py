"""Held-out evaluation of the two-stage pipeline and its baselines (``python -m evaluation.evaluate``)."""
