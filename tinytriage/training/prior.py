"""What ImageNet already knows about ticket photos, written down without a photo.

EfficientNet-Lite0's ImageNet classifier names phones, laptops, cartons, envelopes and
menus, and a thousand things that are none of them. Summing its probabilities over a
hand-written group of its classes per ticket class gives a prior that has never seen a
generated photo: on real photos it knows devices and unrelated photos far better than a
head trained on generated photos alone (docs/EXPERIMENTS.md). The bundled model's
``PriorClassifier`` adds it to a new linear head (``models.efficientnet``), which learns
from generated photos only how the ticket classes differ from it, above all an intact
screen from a cracked one, which share a group.

    log p_prior(class k | photo) = log sum_{j in group k} softmax(imagenet logits)_j

A damaged screen is a device, so ``screen_damage`` shares ``intact_device``'s group;
``other`` is every ImageNet class in no other group.
"""

from __future__ import annotations

import numpy as np

from tinytriage.errors import TrainingError

#: ticket class -> ImageNet classes (their WordNet lemmas, as the model file names them
#: ``n02992529_cellular_telephone``) that are photos of it
TICKET_SYNSETS: dict[str, tuple[str, ...]] = {
    "intact_device": (
        "cellular_telephone",
        "iPod",
        "laptop",
        "notebook",
        "hand-held_computer",
        "desktop_computer",
        "monitor",
        "screen",
        "television",
        "remote_control",
        "computer_keyboard",
        "mouse",
        "modem",
        "dial_telephone",
        "printer",
        "hard_disc",
        "cassette_player",
        "CD_player",
    ),  # fmt: skip
    "screen_damage": (),  # the devices' group: a cracked screen is still a phone or a laptop
    "parcel": ("carton", "packet", "mailbag", "crate", "envelope", "plastic_bag"),
    "document": ("menu", "web_site", "book_jacket", "comic_book", "crossword_puzzle", "binder"),
    "other": (),  # every ImageNet class in no group above
}
SHARES_GROUP = {"screen_damage": "intact_device"}


def group_members(classes: list[str], pretrained_classes: list[str]) -> np.ndarray:
    """(K, J) 0/1: which of the pretrained classes (``n02992529_cellular_telephone``...)
    make each ticket class's group. Raises TrainingError for a class without a group."""
    lemma = {name.split("_", 1)[1] if "_" in name else name: j for j, name in enumerate(pretrained_classes)}
    unknown = [c for c in classes if c not in TICKET_SYNSETS]
    if unknown:
        raise TrainingError(
            f"no ImageNet group for class(es) {', '.join(unknown)} (known: {', '.join(TICKET_SYNSETS)})"
        )
    members = np.zeros((len(classes), len(pretrained_classes)), np.float32)
    for k, c in enumerate(classes):
        names = TICKET_SYNSETS[SHARES_GROUP.get(c, c)]
        missing = [n for n in names if n not in lemma]
        if missing:
            raise TrainingError(f"the pretrained classes have no {', '.join(missing)}")
        members[k, [lemma[n] for n in names]] = 1.0
    if "other" in classes:  # the rest of ImageNet
        members[classes.index("other")] = members.max(axis=0) == 0
    return members
