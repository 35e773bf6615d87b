"""What a launcher does with an error of the user's data: a message and exit code 2, no traceback."""

from __future__ import annotations

import contextlib
import sys

from gradmix_tf.data.streams import DataError
from gradmix_tf.datasets import DatasetNotReadyError


@contextlib.contextmanager
def user_errors():
    """Turns data errors (a dataset not prepared, bad arrays or labels) into a plain message.

    Work already done is kept: nothing is written after the error, and the
    checkpoints of a work directory stay as they are.
    """
    try:
        yield
    except (DatasetNotReadyError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
