"""Datasets: TFDS builders for the transfer benchmarks and the streams made from them.

Public API (see docs/datasets.md):

- `prepared_builder(name, data_dir=None, manual_dir=None, download=False)`: a
  prepared TFDS builder, or `DatasetNotReadyError` in seconds saying which
  files to place where;
- `prepare(name, ...)`: builds a dataset and returns `{split: size}`;
- `load_examples`, `labelled_stream`, `unlabelled_stream`, `target_split`:
  dataset name + split spec -> arrays or the streams of `gradmix_tf.data.streams`;
- builders `mnist_m`, `usps`, `syn_digits` (registered with TFDS on first use,
  `BUILDER_MODULES`), writers of their manual files in `manual_files`.

Importing this package does not import TensorFlow Datasets; the builders'
modules are imported when a dataset is first asked for.
"""

from gradmix_tf.datasets.loading import (
    Examples,
    convert_images,
    labelled_stream,
    load_examples,
    select_classes,
    target_split,
    unlabelled_stream,
)
from gradmix_tf.datasets.preparation import (
    BUILDER_MODULES,
    DatasetNotReadyError,
    builder,
    import_builder_module,
    prepare,
    prepared_builder,
)

__all__ = [
    "BUILDER_MODULES",
    "DatasetNotReadyError",
    "Examples",
    "builder",
    "convert_images",
    "import_builder_module",
    "labelled_stream",
    "load_examples",
    "prepare",
    "prepared_builder",
    "select_classes",
    "target_split",
    "unlabelled_stream",
]
