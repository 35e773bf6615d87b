r"""Builds a dataset into a TFDS data dir, with progress bars, and prints its splits and sizes.

    python -m launch.prepare --dataset=usps --manual_dir=~/manual/usps --data_dir=~/tfds
    python -m launch.prepare --dataset=mnist --download              # needs network
    python -m launch.prepare --dataset=hmdb51/split1 --manual_dir=...  # any TFDS builder name

From arrays (an npz of uint8 `x_<split>`/`y_<split>`, or `x`/`y` for `--npz_split`): the
files are first written in the dataset's manual format to `<manual_dir>/<dataset>/`, so one
manual dir can hold several datasets (as task digits_mnistm expects):

    python -m launch.prepare --dataset=usps --from_npz=../shared/data/digits/usps_uint8.npz \
        --manual_dir=/tmp/manual --data_dir=/tmp/tfds
    python -m launch.prepare --dataset=mnist_m --npz_split=test \
        --from_npz=../shared/data/digits/mnistm_test1000_uint8.npz --manual_dir=/tmp/manual

A dataset that cannot be built now (manual files missing, or not prepared and no network)
stops within seconds with a message naming the files to place and where.
"""

import os

from absl import app, flags

from gradmix_tf.datasets import manual_files, preparation
from launch import errors

_DATASET = flags.DEFINE_string("dataset", None, "A TFDS name, e.g. usps, mnist_m, hmdb51/split1.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "The hand-placed files (or a dir of <name>/)."
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "The TFDS data dir (default: TFDS's default).")
_DOWNLOAD = flags.DEFINE_boolean("download", False, "Let TFDS download a downloadable dataset.")
_FROM_NPZ = flags.DEFINE_string("from_npz", None, "Write the manual files from this npz first.")
_NPZ_SPLIT = flags.DEFINE_string("npz_split", "test", "The split of an npz holding only x / y.")
_USPS_FORMAT = flags.DEFINE_enum("usps_format", "h5", ["h5", "libsvm"], "USPS files to write.")
_VERIFY = flags.DEFINE_boolean(
    "verify_checksums", True, "Check canonical manual files (off with --from_npz)."
)
flags.mark_flags_as_required(["dataset"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    name, manual_dir = _DATASET.value, _MANUAL_DIR.value
    builder_kwargs = {} if _VERIFY.value else {"verify_checksums": False}
    if _FROM_NPZ.value:
        if not manual_dir:
            raise app.UsageError("--from_npz needs --manual_dir (where to write the files).")
        manual_dir = os.path.join(os.path.expanduser(manual_dir), name.split("/")[0])
        written = manual_files.write_from_npz(
            name, _FROM_NPZ.value, manual_dir, _NPZ_SPLIT.value, _USPS_FORMAT.value
        )
        print(f"wrote {len(written)} manual file(s)/folder(s) to {manual_dir}")
        builder_kwargs = {"verify_checksums": False}
    sizes = preparation.prepare(
        name, _DATA_DIR.value, manual_dir, download=_DOWNLOAD.value, **builder_kwargs
    )
    print(f"{name}: " + ", ".join(f"{split} {size}" for split, size in sorted(sizes.items())))


if __name__ == "__main__":
    errors.run(main)
