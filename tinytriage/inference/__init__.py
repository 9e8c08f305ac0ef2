"""tinytriage.inference."""
