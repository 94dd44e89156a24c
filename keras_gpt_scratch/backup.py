"""Crash-safe training backups that every worker of a cluster resumes alike.

Keras' `BackupAndRestore` overwrites one file in place and knows nothing of
other workers. Killed at the wrong moment, a multi-worker run then resumes
with workers at different epochs, and the first collective that one of them
never reaches fails the run. Here each completed epoch is a generation
directory `epoch-<n>/` written to a temporary name and renamed into place,
the last two are kept, and before training the workers agree (with one
all-reduce) on the newest generation that all of them hold.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_gpt_scratch.io_utils import atomic_directory

WEIGHTS_FILE = "state.weights.h5"
_GENERATION = re.compile(r"^epoch-(\d+)$")


def backed_up_epochs(directory: str | os.PathLike) -> list[int]:
    """The completed epochs with a whole backup in `directory`, ascending."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = _GENERATION.match(child.name)
        if match and (child / WEIGHTS_FILE).is_file():
            found.append(int(match.group(1)))
    return sorted(found)


def agree_on_epoch(
    epochs: list[int], max_epoch: int, strategy: tf.distribute.Strategy
) -> int:
    """The newest epoch in every worker's `epochs` (0 when there is none).

    Without other workers this is `max(epochs)`. Under a multi-worker
    strategy each replica contributes a 0/1 vector over epochs 0..max_epoch
    and one SUM all-reduce counts the holders; all workers must call this at
    the same point, as they do for any collective.
    """
    epochs = [e for e in epochs if 0 < e <= max_epoch]
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return max(epochs, default=0)
    have = np.zeros(max_epoch + 1, "float32")
    have[epochs] = 1.0
    have[0] = 1.0  # starting afresh is always possible
    local = strategy.experimental_distribute_values_from_function(
        lambda _: tf.constant(have)
    )
    counts = strategy.reduce("SUM", local, axis=None).numpy()
    common = np.flatnonzero(counts >= strategy.num_replicas_in_sync - 0.5)
    return int(common.max())


class RunBackup(keras.callbacks.Callback):
    """Back up the training state after every epoch; restore a chosen one.

    Args:
        directory: where the generations `epoch-<n>/` live.
        restore_epoch: the completed epoch to restore when training begins
            (from `agree_on_epoch`); 0 starts afresh.
        keep: how many generations to keep. Two suffice for a cluster:
            workers can be at most one epoch apart, as each epoch ends in
            collectives that all of them join.
        delete_on_success: remove `directory` when training ends normally.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        restore_epoch: int = 0,
        keep: int = 2,
        delete_on_success: bool = True,
    ):
        super().__init__()
        self.directory = Path(directory)
        self.restore_epoch = restore_epoch
        self.keep = keep
        self.delete_on_success = delete_on_success

    def on_train_begin(self, logs=None):
        if not self.restore_epoch:
            return
        path = self.directory / f"epoch-{self.restore_epoch}" / WEIGHTS_FILE
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(path))
        self.model._initial_epoch = self.restore_epoch

    def on_epoch_end(self, epoch, logs=None):
        with atomic_directory(self.directory / f"epoch-{epoch + 1}") as tmp:
            self.model.save_weights(os.path.join(tmp, WEIGHTS_FILE))
            Path(tmp, "metadata.json").write_text(json.dumps({"epoch": epoch + 1}))
        for old in backed_up_epochs(self.directory)[: -self.keep]:
            shutil.rmtree(self.directory / f"epoch-{old}", ignore_errors=True)

    def on_train_end(self, logs=None):
        if self.delete_on_success:
            shutil.rmtree(self.directory, ignore_errors=True)
