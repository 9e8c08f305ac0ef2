"""tinytriage.engines."""
