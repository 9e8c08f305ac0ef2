"""What training tells whoever watches: one small dataclass per kind of progress event.

``train(cfg, progress)`` calls ``progress(event)`` with these as the run goes, in this
order: ``Scan`` (and a second one for ``--val-dir``), ``Plan``, ``Duplicates``, ``Cache``,
``Unreadable``, ``DamageBoxes``, ``Teacher``, ``Init`` or ``Resume``, then per epoch a ``Step`` per
batch and an ``Epoch``; ``Interrupted`` on Ctrl-C. The library prints nothing: the CLI's
``render.TrainProgress`` turns them into a progress bar and one line per epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tinytriage.training.run import EpochMetrics


@dataclass(frozen=True)
class Scan:
    """A photo folder was scanned (nothing decoded yet)."""

    summary: str  # '412 images in 3 classes (a 200, b 112, c 100), 3 unreadable'
    unreadable: list[tuple[Path, str]]  # (path, reason) of the files the scan skipped
    name: str = "dataset"  # which folder: "dataset" (DATA_DIR) or "validation" (--val-dir)


@dataclass(frozen=True)
class Plan:
    """What the run will do, chosen from the options and the data: said before it starts."""

    text: str  # 'fine-tuning efficientnet_lite0 from ...: a new head on frozen features, 8 views per photo'


@dataclass(frozen=True)
class Duplicates:
    """Validation photos whose bytes equal a training photo's: validation accuracy flatters."""

    pairs: list[tuple[str, str]]  # (training photo, validation photo)


@dataclass(frozen=True)
class Cache:
    """Every photo is about to be decoded once, into small uint8 squares."""

    n: int  # photos to decode, training and validation


@dataclass(frozen=True)
class Unreadable:
    """A photo the scan listed could not be decoded: it is left out."""

    path: str
    reason: str


@dataclass(frozen=True)
class DamageBoxes:
    """``--damage-weight``: how many training photos have a damage box to learn."""

    n: int  # photos with a box
    of: int  # training photos


@dataclass(frozen=True)
class Init:
    """``--init``: the weights come from this model file."""

    path: str


@dataclass(frozen=True)
class Teacher:
    """``--teacher``: each training photo's class by the teacher, for the distillation token."""

    path: str  # the teacher's model file
    arch: str
    agreement: float  # share of training photos where the teacher's class is the true one


@dataclass(frozen=True)
class Resume:
    """``--resume``: the checkpoint's weights, optimizer and history are back."""

    epoch: int  # epochs the checkpoint had completed


@dataclass(frozen=True)
class Step:
    """One optimizer step: the epoch's running means so far."""

    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based, within the epoch
    steps: int  # steps per epoch
    loss: float  # mean training loss of the epoch's batches so far
    acc: float  # ... and accuracy
    images_per_s: float
    eta_s: float  # seconds left in the run, at this epoch's pace


@dataclass(frozen=True)
class Epoch:
    """An epoch ended: it was validated and a checkpoint written."""

    metrics: EpochMetrics


@dataclass(frozen=True)
class Interrupted:
    """Ctrl-C: the loop stopped; the last complete epoch's checkpoint stays."""

    completed_epochs: int
    checkpoint: str | None  # where the checkpoint is (None: no epoch completed, none written)


Event = (
    Scan | Plan | Duplicates | Cache | Unreadable | DamageBoxes | Teacher | Init | Resume | Step | Epoch | Interrupted
)
ProgressFn = Callable[[Event], None]
