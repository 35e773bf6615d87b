"""The per-epoch log of a run, `train_log.csv`, one header whatever a resumed run logs.

Keras's `CSVLogger` appends a resumed run's rows under the header the file already has.
A run resumed with other logs (`train.on_nonfinite` switched to "skip" adds
`nonfinite_skipped`) would then write rows whose cells sit under the wrong names.
`TrainLogCSV` widens the header first: the file is rewritten in place with the old columns,
then the new ones, the old rows holding "NA" in the new columns.
"""

from __future__ import annotations

import csv

import keras


class TrainLogCSV(keras.callbacks.CSVLogger):
    """`keras.callbacks.CSVLogger` (append mode) whose header grows with new logs."""

    def __init__(self, filename: str):
        super().__init__(filename, append=True)

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None and not self.append_header:
            self.keys = self._widened_header(sorted(logs or {}))
        super().on_epoch_end(epoch, logs)

    def _widened_header(self, keys: list[str]) -> list[str]:
        """The existing file's columns (but "epoch"), then `keys` it lacks (and their
        "val_" twins, as Keras adds them); the file is rewritten when that adds any."""
        if not any(k.startswith("val_") for k in keys):
            keys = keys + [f"val_{k}" for k in keys]
        with open(self.filename, newline="") as f:
            rows = list(csv.reader(f, delimiter=self.sep))
        old = rows[0][1:] if rows else []
        new = [k for k in keys if k not in old]
        if new:
            with open(self.filename, "r+", newline="") as f:  # in place: our handle appends
                writer = csv.writer(f, delimiter=self.sep)
                writer.writerow(["epoch", *old, *new])
                writer.writerows(row + ["NA"] * len(new) for row in rows[1:] if row)
                f.truncate()
        return old + new
