"""Classes and the queue each one goes to.

The defaults below are what the generator makes and the bundled model is trained on;
a model file stores its own class names and routes, and `--routes routes.toml` maps
classes to a team's own queues. A class of a team's own goes to the queue of its own
name unless a routes file says otherwise (``route_of``).
"""

from __future__ import annotations

#: Where a photo goes when the model is unsure, or the photo is none of the classes.
HUMAN_REVIEW = "human_review"

#: class name -> queue, in the generator's order. ``other`` holds non-ticket photos
#: (selfies, pets, landscapes, random objects): the open set, always sent to a human.
DEFAULT_ROUTES: dict[str, str] = {
    "screen_damage": "refurbishment",
    "intact_device": "general_returns",
    "parcel": "general_returns",
    "document": "order_support",
    "other": HUMAN_REVIEW,
}

#: The open-set class: photos that are none of the ticket classes ("not a ticket photo").
OPEN_SET = "other"


def route_of(class_name: str, routes: dict[str, str]) -> str:
    """The queue of a class: the model's routes, else the ticket classes' defaults, else
    the queue named after the class."""
    return routes.get(class_name, DEFAULT_ROUTES.get(class_name, class_name))
