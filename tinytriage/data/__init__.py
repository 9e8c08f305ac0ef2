"""Data: safe image decoding and preprocessing (``preprocess``), labelled folders, splits
and caches (``datasets``), augmentation (``augment``), the ticket classes and their
queues (``routes``), and the photo generator (``synth``).

``from tinytriage.data import scan_folder`` (0.1, when this was one module) still works:
the names of ``datasets`` are looked up there on first use."""


def __getattr__(name: str):
    from importlib import import_module  # not `from tinytriage.data import ...`: that asks this function again

    for module in ("tinytriage.data.datasets",):
        found = getattr(import_module(module), name, _MISSING)
        if found is not _MISSING:
            return found
    raise AttributeError(f"module 'tinytriage.data' has no attribute {name!r}")


_MISSING = object()
