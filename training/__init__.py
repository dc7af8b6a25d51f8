"""Training entry points and dataset converters (not needed by the deployed app)."""
