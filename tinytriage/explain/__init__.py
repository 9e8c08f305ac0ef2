"""Explain: how a network reaches its decision. The model summary, feature maps and one
cell by hand (``photo``), receptive fields, Grad-CAM and attention rollout, the pointing
game, the worked demo, the lesson (CNN against ViT) and the two engines compared.

``from tinytriage.explain import explain_photo`` (0.1, when this was one module) still
works: the names of ``photo`` (and ``pointing_game``) are looked up there on first use."""


def __getattr__(name: str):
    from importlib import import_module  # not `from tinytriage.explain import ...`: that asks this function again

    for module in ("tinytriage.explain.photo", "tinytriage.explain.pointing"):
        found = getattr(import_module(module), name, _MISSING)
        if found is not _MISSING:
            return found
    raise AttributeError(f"module 'tinytriage.explain' has no attribute {name!r}")


_MISSING = object()
