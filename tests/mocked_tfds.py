"""Runs a launcher with TensorFlow Datasets mocked (`tfds.testing.mock_data`), for the tests.

    python -m tests.mocked_tfds DATA_DIR NUM_EXAMPLES launch.train --config=... --workdir=...

Every dataset prepared in DATA_DIR (its metadata written, or built for real) then serves
NUM_EXAMPLES random examples of its real features, with no network.
"""

from __future__ import annotations

import runpy
import sys


def main() -> None:
    data_dir, num_examples, module, *args = sys.argv[1:]
    import tensorflow_datasets as tfds

    sys.argv = [module, *args]
    with tfds.testing.mock_data(
        num_examples=int(num_examples),
        data_dir=data_dir,
        policy=tfds.testing.MockPolicy.USE_FILES,
    ):
        runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
