"""A base for dataset builders whose files are placed by hand in `manual_dir`.

`ManualBuilder` is a `tfds.core.GeneratorBasedBuilder` that

- names, in `MANUAL_FILES`, the files each split needs (a split may have
  alternatives, e.g. USPS's `usps.h5` or LIBSVM's `usps.bz2`);
- generates only the splits whose files are present (a partial release, e.g.
  only the test files of MNIST-M, gives only those splits) and stops with an
  error naming the files and the directory when none is;
- checks the MD5 of files that are canonical (`CANONICAL_MD5`), unless built
  with `verify_checksums=False` (for files written from arrays by
  `gradmix_tf.datasets.manual_files`, which cannot match the released bytes).

`missing_manual_files_message` is what `prepared_builder` uses to fail fast,
before anything is generated.
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Mapping, Sequence

import tensorflow_datasets as tfds


class ManualFilesError(FileNotFoundError):
    """Raised when the files of a manual-download dataset are not in `manual_dir`."""


class ChecksumError(ValueError):
    """Raised when a canonical manual file does not have its released checksum."""


def md5_of(path: str, chunk_size: int = 1 << 20) -> str:
    """The hex MD5 digest of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder that reads hand-placed files; see the module docstring.

    Subclasses set `MANUAL_FILES` and `MANUAL_DOWNLOAD_INSTRUCTIONS`, and
    implement `_info` and `_generate_examples(split, files)`.

    Attributes:
        MANUAL_FILES: split -> alternatives, each a tuple of paths relative to
            `manual_dir` that together make the split. The first alternative
            whose files all exist is used.
        CANONICAL_MD5: file name -> MD5 of the released file, checked when the
            builder is made with `verify_checksums=True` (the default).
    """

    MANUAL_FILES: Mapping[str, Sequence[tuple[str, ...]]] = {}
    CANONICAL_MD5: Mapping[str, str] = {}

    def __init__(self, *, verify_checksums: bool = True, **kwargs):
        self._verify_checksums = verify_checksums
        super().__init__(**kwargs)

    @classmethod
    def split_files(cls, manual_dir) -> dict[str, tuple[str, ...]]:
        """The splits whose files are all in `manual_dir`, with their full paths."""
        found = {}
        if manual_dir is None or not os.path.isdir(manual_dir):
            return found
        for split, alternatives in cls.MANUAL_FILES.items():
            for files in alternatives:
                paths = tuple(os.path.join(manual_dir, f) for f in files)
                if all(os.path.exists(p) for p in paths):
                    found[split] = paths
                    break
        return found

    @classmethod
    def expected_files(cls) -> str:
        """The files each split needs, one line a split."""
        lines = []
        for split, alternatives in cls.MANUAL_FILES.items():
            options = " or ".join(" + ".join(files) for files in alternatives)
            lines.append(f"  {split}: {options}")
        return "\n".join(lines)

    @classmethod
    def missing_manual_files_message(cls, manual_dir) -> str | None:
        """None when at least one split's files are in `manual_dir`, else what to place where."""
        if cls.split_files(manual_dir):
            return None
        where = os.fspath(manual_dir) if manual_dir is not None else "<manual_dir>"
        state = "does not exist" if not os.path.isdir(where) else "holds none of them"
        return (
            f"dataset '{cls.name}' needs files placed by hand in {where} ({state}). "
            f"Place the files of at least one split there:\n{cls.expected_files()}\n"
            f"{tfds.core.utils.dedent(cls.MANUAL_DOWNLOAD_INSTRUCTIONS or '')}".rstrip()
        )

    def _check_md5(self, paths: Sequence[str]) -> None:
        if not self._verify_checksums:
            return
        for path in paths:
            expected = self.CANONICAL_MD5.get(os.path.basename(path))
            if expected is None:
                continue
            actual = md5_of(path)
            if actual != expected:
                raise ChecksumError(
                    f"{path} has MD5 {actual}, but the released file has {expected}: "
                    "download it again. Files written from arrays (manual_files) cannot "
                    "match; build them with verify_checksums=False "
                    "(launch.prepare --noverify_checksums)."
                )

    def _split_generators(self, dl_manager):
        try:
            manual_dir = os.fspath(dl_manager.manual_dir)
        except AssertionError:  # tfds: the directory does not exist or is empty
            raise ManualFilesError(
                self.missing_manual_files_message(getattr(dl_manager, "_manual_dir", None))
            ) from None
        found = self.split_files(manual_dir)
        if not found:
            raise ManualFilesError(self.missing_manual_files_message(manual_dir))
        for paths in found.values():
            self._check_md5(paths)
        return {split: self._generate_examples(split, paths) for split, paths in found.items()}

    @abc.abstractmethod
    def _generate_examples(self, split: str, files: tuple[str, ...]):
        """Yields `(key, example)` pairs of a split from its files."""


DIGIT_CLASS_NAMES = [str(d) for d in range(10)]

GANIN_2015_CITATION = (
    "@inproceedings{ganin2015unsupervised, title={Unsupervised Domain Adaptation by "
    "Backpropagation}, author={Ganin, Yaroslav and Lempitsky, Victor}, "
    "booktitle={ICML}, year={2015}}"
)


def digit_image_features() -> tfds.features.FeaturesDict:
    """32x32 RGB digit images, labels 0-9 and a text id (MNIST-M, Syn Digits)."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(32, 32, 3)),
            "label": tfds.features.ClassLabel(names=DIGIT_CLASS_NAMES),
            "id": tfds.features.Text(),
        }
    )
