"""`train_log.csv` keeps one header when a resumed run logs more (`callbacks/train_log.py`)."""

from __future__ import annotations

import csv

from gradmix_tf.callbacks.train_log import TrainLogCSV


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _log(path, epochs, logs):
    logger = TrainLogCSV(str(path))
    logger.on_train_begin()
    for epoch in epochs:
        logger.on_epoch_end(epoch, logs)
    logger.on_train_end()


def test_a_resumed_run_with_a_new_log_widens_the_header(tmp_path):
    path = tmp_path / "train_log.csv"
    _log(path, [0, 1], {"loss": 1.5, "rho": 0.25})
    _log(path, [2], {"loss": 0.5, "nonfinite_skipped": 3, "rho": 0.75})
    rows = _rows(path)
    assert list(rows[0]) == [
        "epoch", "loss", "rho", "val_loss", "val_rho", "nonfinite_skipped",
        "val_nonfinite_skipped",
    ]  # fmt: skip
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert [r["nonfinite_skipped"] for r in rows] == ["NA", "NA", "3"]
    assert [r["rho"] for r in rows] == ["0.25", "0.25", "0.75"]


def test_the_same_logs_append_under_the_same_header(tmp_path):
    path = tmp_path / "train_log.csv"
    _log(path, [0], {"loss": 1.5})
    _log(path, [1], {"loss": 0.5})
    with open(path) as f:
        assert f.read().splitlines()[0] == "epoch,loss,val_loss"
    _log(path, [2], {})  # a log that lost a column keeps the column
    assert [r["loss"] for r in _rows(path)] == ["1.5", "0.5", "NA"]
