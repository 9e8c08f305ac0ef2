"""Errors a user can act on.

Library code raises these; only the CLI turns them into messages and exit codes.
Each message should say what is wrong and, where possible, what to do about it.
"""


class TinyTriageError(Exception):
    """Base class for every error tinytriage reports to a user (exit code 1)."""


class ShapeError(TinyTriageError, ValueError):
    """An array has a shape a layer cannot accept (e.g. kernel larger than the padded input)."""


class ImageError(TinyTriageError):
    """A photo could not be read: missing, unsupported format, corrupt, truncated, too large."""


class DatasetError(TinyTriageError):
    """A dataset folder is unusable: no images, an empty class, a single class."""


class ModelFileError(TinyTriageError):
    """A model file is missing, corrupt, unsafe, or does not match its architecture."""


class TrainingError(TinyTriageError):
    """Training cannot go on (e.g. the loss became NaN or Inf)."""


class ConfigError(TinyTriageError):
    """An option's value cannot work (e.g. --depths that do not match --widths). ``option``
    names it, so the CLI can point at it as a usage error (exit code 2)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class BackendUnavailable(TinyTriageError):
    """A backend was asked for but its dependency (PyTorch) is not installed."""


def listed(names, limit: int = 12) -> str:
    """Names for a message, comma-separated; past ``limit`` the first few and a count (an
    ImageNet model has 1000 classes: a message should still fit on a screen)."""
    names = [str(n) for n in names]
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])}, ... ({len(names)} in all)"
