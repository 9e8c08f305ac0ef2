"""tinytriage.data.datasets."""
