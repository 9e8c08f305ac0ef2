"""The photo folders of a training run: scanned, split into training and validation
(``--val-fraction``, or ``--val-dir``), duplicates between the two reported. Nothing is
decoded here; both the training loop and fine-tuning start from this."""

from __future__ import annotations

from dataclasses import dataclass

from tinytriage.data.datasets import Dataset, find_duplicates, scan_folder, stratified_split
from tinytriage.data.routes import DEFAULT_ROUTES, HUMAN_REVIEW
from tinytriage.errors import DatasetError, TrainingError
from tinytriage.training import events
from tinytriage.training.events import ProgressFn
from tinytriage.training.run import TrainConfig


@dataclass
class Folders:
    """The photo folders scanned and split into training and validation; nothing decoded yet."""

    train: Dataset
    val: Dataset
    classes: list[str]  # in label order
    summary: str  # DATA_DIR's scan, for a person
    duplicates: list[tuple[str, str]]  # (training photo, validation photo) pairs with the same bytes


def scan_folders(cfg: TrainConfig, emit: ProgressFn) -> Folders:
    """DATA_DIR scanned, then split (``--val-fraction``) or checked against ``--val-dir``."""
    dataset = scan_folder(cfg.data_dir)
    emit(events.Scan(summary=dataset.summary(), unreadable=dataset.unreadable))
    if cfg.val_dir is None:
        train_set, val_set = stratified_split(dataset, val_fraction=cfg.val_fraction, seed=cfg.seed)
    else:  # a separate validation folder: every photo of data_dir trains
        try:
            val_set = scan_folder(cfg.val_dir)
        except DatasetError as err:
            raise DatasetError(f"--val-dir: {err}") from None
        train_set = dataset
        emit(events.Scan(summary=val_set.summary(), unreadable=val_set.unreadable, name="validation"))
        if val_set.classes != dataset.classes:
            raise TrainingError(
                f"--val-dir {cfg.val_dir}: its classes ({', '.join(val_set.classes)}) are not the training "
                f"data's ({', '.join(dataset.classes)})"
            )
    duplicates = [(str(a), str(b)) for a, b in find_duplicates(train_set, val_set)]
    if duplicates:
        emit(events.Duplicates(pairs=duplicates))
    return Folders(
        train=train_set, val=val_set, classes=list(dataset.classes), summary=dataset.summary(), duplicates=duplicates
    )


def default_routes(classes: list[str]) -> dict[str, str]:
    """class -> queue stored in a new model file."""
    return {c: DEFAULT_ROUTES.get(c, HUMAN_REVIEW) for c in classes}
