"""Getting a prepared TFDS builder quickly, or a clear error in seconds.

`prepared_builder(name, data_dir, manual_dir, download)` works for any
registered TFDS builder name, with or without a config (`ucf101/ucf101_1`,
`hmdb51/split1`), TFDS's own or this package's (`BUILDER_MODULES`, imported
on demand). In order:

1. prepared in `data_dir` (TFDS's default data dir when None): returned;
2. a manual-download builder: its files are looked for in `manual_dir`
   (or `manual_dir/<name>/` when that folder exists); missing files stop with
   `DatasetNotReadyError` naming them and the directory; present files are
   built into `data_dir`;
3. a downloadable builder: without `download=True`, or when the network
   does not answer within `probe_timeout` seconds, `DatasetNotReadyError`
   says how to prepare it; otherwise TFDS downloads and prepares it.

A plain `tfds.load` with no network retries its downloads for minutes; the
checks above run before any download attempt.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import socket
import threading

from gradmix_tf.errors import UserError

BUILDER_MODULES = {
    "mnist_m": "gradmix_tf.datasets.mnist_m",
    "usps": "gradmix_tf.datasets.usps",
    "syn_digits": "gradmix_tf.datasets.syn_digits",
    "hmdb51": "gradmix_tf.datasets.hmdb51",
    "kinetics": "gradmix_tf.datasets.kinetics",
}
"""Builders of this package: TFDS name -> the module that registers it when imported."""

NETWORK_PROBE_HOST = ("storage.googleapis.com", 443)
"""Where TFDS's prepared copies and many dataset files live; probed before a download."""


class DatasetNotReadyError(UserError, RuntimeError):
    """A dataset is neither prepared nor buildable now; the message says what to do."""


def _base_name(name: str) -> str:
    return name.split("/")[0].split(":")[0]


def import_builder_module(name: str) -> None:
    """Registers this package's builder `name` with TFDS by importing its module.

    Names not in `BUILDER_MODULES` are looked up as `gradmix_tf.datasets.<name>`;
    TFDS's own names need nothing.
    """
    base = _base_name(name)
    module = BUILDER_MODULES.get(base)
    if module is None and importlib.util.find_spec(f"{__package__}.{base}") is not None:
        module = f"{__package__}.{base}"
    if module is not None:
        importlib.import_module(module)


def builder(name: str, data_dir=None, **builder_kwargs):
    """`tfds.builder(name)` with this package's builders registered and a short error."""
    import tensorflow_datasets as tfds

    import_builder_module(name)
    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
    try:
        return tfds.builder(name, data_dir=data_dir, **builder_kwargs)
    except tfds.core.registered.DatasetNotFoundError:
        known = tfds.list_builders(with_community_datasets=False)
        close = difflib.get_close_matches(_base_name(name), known, n=5)
        raise DatasetNotReadyError(
            f"unknown dataset {name!r}. Close names: {close or 'none'}. This package adds "
            f"{sorted(BUILDER_MODULES)}; any TFDS name works (`tfds.list_builders()`)."
        ) from None
    except ValueError as err:  # e.g. an unknown builder config
        raise DatasetNotReadyError(f"dataset {name!r}: {err}") from None


def resolve_manual_dir(name: str, manual_dir) -> str | None:
    """`manual_dir/<name>` when that folder exists (a folder of several datasets), else `manual_dir`."""
    if manual_dir is None:
        return None
    manual_dir = os.path.expanduser(os.fspath(manual_dir))
    nested = os.path.join(manual_dir, _base_name(name))
    return nested if os.path.isdir(nested) else manual_dir


def network_reachable(host: tuple[str, int] = NETWORK_PROBE_HOST, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to `host` opens within `timeout` seconds (DNS included)."""
    result = []

    def connect():
        try:
            with socket.create_connection(host, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(result and result[0])


def _missing_manual_message(dataset_builder, manual_dir) -> str | None:
    """What to place where, or None when the manual files look present."""
    if hasattr(dataset_builder, "missing_manual_files_message"):
        return dataset_builder.missing_manual_files_message(manual_dir)
    if manual_dir is not None and os.path.isdir(manual_dir) and os.listdir(manual_dir):
        return None  # another builder: TFDS's own rule, a non-empty directory
    import tensorflow_datasets as tfds

    instructions = tfds.core.utils.dedent(dataset_builder.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return (
        f"dataset '{dataset_builder.name}' needs files placed by hand in "
        f"{manual_dir or '<manual_dir>'} (missing or empty):\n{instructions}"
    )


def prepared_builder(
    name: str,
    data_dir=None,
    manual_dir=None,
    download: bool = False,
    *,
    probe_timeout: float = 5.0,
    **builder_kwargs,
):
    """A TFDS builder of `name` that is prepared in `data_dir`, or a fast, clear error.

    Args:
        name: a TFDS name, optionally with config and version (`hmdb51/split1`).
        data_dir: where prepared datasets live; None: TFDS's default
            (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
        manual_dir: the hand-placed files of a manual-download dataset, or a
            folder holding `<name>/` folders of several datasets. None: TFDS's
            default, `<data_dir>/downloads/manual`.
        download: let TFDS download a downloadable dataset that is not prepared.
        probe_timeout: seconds to wait for the network before a download.
        **builder_kwargs: passed to the builder (e.g. `verify_checksums=False`).

    Returns:
        A prepared `tfds.core.DatasetBuilder`.

    Raises:
        DatasetNotReadyError: the dataset is unknown, its manual files are
            missing, or it is not prepared and cannot be downloaded now.
    """
    import tensorflow_datasets as tfds

    dataset_builder = builder(name, data_dir=data_dir, **builder_kwargs)
    if dataset_builder.is_prepared():
        return dataset_builder
    where = os.fspath(dataset_builder.data_dir)
    if dataset_builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        if manual_dir is None:
            manual_dir = os.path.join(
                os.fspath(dataset_builder.data_dir_root), "downloads", "manual"
            )
        manual_dir = resolve_manual_dir(name, manual_dir)
        message = _missing_manual_message(dataset_builder, manual_dir)
        if message:
            raise DatasetNotReadyError(
                f"{message}\nThen rerun, or build it once with: python -m launch.prepare "
                f"--dataset={name} --manual_dir={manual_dir}"
                + (f" --data_dir={data_dir}" if data_dir else "")
            )
        config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
        dataset_builder.download_and_prepare(download_config=config)
        return dataset_builder
    how = (
        f"Prepare it on a machine with network (python -m launch.prepare --dataset={name} "
        f"--download --data_dir=DIR) and copy DIR/{os.path.relpath(where, dataset_builder.data_dir_root)} "
        f"to {where}"
    )
    if not download:
        raise DatasetNotReadyError(
            f"dataset '{name}' is not prepared in {where} and download=False. {how}, or allow "
            "downloading (download=True)."
        )
    if not network_reachable(timeout=probe_timeout):
        raise DatasetNotReadyError(
            f"dataset '{name}' is not prepared in {where} and the network does not answer "
            f"({NETWORK_PROBE_HOST[0]}:{NETWORK_PROBE_HOST[1]}, {probe_timeout:g} s). {how}."
        )
    dataset_builder.download_and_prepare()
    return dataset_builder


def prepare(name: str, data_dir=None, manual_dir=None, download: bool = False, **builder_kwargs):
    """Builds a dataset (with TFDS's progress bars) and returns `{split: size}`."""
    import tensorflow_datasets as tfds

    tfds.display_progress_bar(True)
    dataset_builder = prepared_builder(
        name, data_dir=data_dir, manual_dir=manual_dir, download=download, **builder_kwargs
    )
    return {split: info.num_examples for split, info in dataset_builder.info.splits.items()}
