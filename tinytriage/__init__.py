"""tinytriage: route support-ticket photos with a CNN written from first principles in NumPy."""

__version__ = "0.1.0"
