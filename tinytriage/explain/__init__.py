"""tinytriage.explain.photo."""
