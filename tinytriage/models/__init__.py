"""tinytriage.models."""
