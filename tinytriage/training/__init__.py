"""tinytriage.training."""
