"""Reading files for `launch.predict`: bit depths, conversions, unreadable files, small images.

The export is the session's shared smoke run's (`smoke_workdir`, tests/conftest.py), read
only. `classify_files` and the launcher's `main` run in process; one subprocess run of
`python -m launch.predict` checks the whole command on a mixed batch.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf
from absl import app, flags
from absl.testing import flagsaver
from PIL import Image

from gradmix_tf.export.predict import (
    FileError,
    MissingFileError,
    classify_files,
    predict_files,
    read_image,
)
from gradmix_tf.tasks import digits
from launch import predict as predict_launcher
from tests.workdir_testing import file_hashes


def _load_image(path, input_shape):
    """The pixels of an image file as the predictor reads them."""
    return read_image(path, input_shape)[0]


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (44, 36)  # (width, height) of the test files: the model's 32x32 input is resized to


@pytest.fixture(scope="module")
def export(smoke_workdir) -> str:
    return os.path.join(smoke_workdir, "export")


@pytest.fixture(scope="module")
def digit_pixels() -> np.ndarray:
    """Two target test digits as uint8 RGB `[2, H, W, 3]` of `SIZE`."""
    test = digits.digits_task(shots_per_class=None, max_per_class=1).test_dataset(2)
    x = next(test.as_numpy_iterator())[0][:2]
    pixels = (x * 255).round().astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(p).resize(SIZE)) for p in pixels])


def save_png(path, pixels: np.ndarray) -> str:
    """A PNG of uint8 or uint16 pixels `[H, W, C]` (C in 1..4) through TensorFlow's encoder."""
    tf.io.write_file(str(path), tf.io.encode_png(pixels))
    return str(path)


def sixteen_bit(pixels: np.ndarray) -> np.ndarray:
    """8-bit values v as the 16-bit v * 257: the same value in [0, 1] (v / 255)."""
    return pixels.astype(np.uint16) * 257


def top_class(export: str, path: str) -> tuple[str, float]:
    return predict_files(export, [path])[0][0]


# ------------------------------------------------------------- bit depths
def test_16_bit_grey_png_is_divided_by_65535_not_clipped(tmp_path):
    values = np.array([[0, 0x4000, 0x8000, 0xFFFF]], np.uint16)[..., None]  # [1, 4, 1]
    path = save_png(tmp_path / "grey16.png", np.repeat(values, 4, axis=0))
    assert Image.open(path).mode.startswith("I")  # how PIL opens it
    pixels = _load_image(path, (4, 4, 1))
    np.testing.assert_allclose(pixels[0, :, 0], [0, 0x4000 / 65535, 0x8000 / 65535, 1], atol=1e-6)
    np.testing.assert_allclose(_load_image(path, (4, 4, 3)), np.repeat(pixels, 3, -1), atol=1e-6)


def test_16_bit_grey_png_gives_the_class_and_probability_of_its_8_bit_version(
    export, digit_pixels, tmp_path
):
    grey = digit_pixels[0].mean(axis=-1, keepdims=True).round().astype(np.uint8)
    eight = save_png(tmp_path / "grey8.png", grey)
    sixteen = save_png(tmp_path / "grey16.png", sixteen_bit(grey))
    name, probability = top_class(export, eight)
    name16, probability16 = top_class(export, sixteen)
    assert name16 == name
    assert probability16 == pytest.approx(probability, abs=1e-3)


@pytest.mark.parametrize("channels", [3, 4], ids=["rgb", "rgba"])
def test_16_bit_colour_png_gives_the_class_and_probability_of_its_8_bit_version(
    export, digit_pixels, tmp_path, channels
):
    pixels = digit_pixels[1]
    if channels == 4:
        pixels = np.concatenate([pixels, np.full((*pixels.shape[:2], 1), 255, np.uint8)], -1)
    eight = save_png(tmp_path / "colour8.png", pixels)
    sixteen = save_png(tmp_path / "colour16.png", sixteen_bit(pixels))
    np.testing.assert_allclose(
        _load_image(sixteen, (32, 32, 3)), _load_image(eight, (32, 32, 3)), atol=1e-6
    )
    name, probability = top_class(export, eight)
    assert top_class(export, sixteen) == (name, pytest.approx(probability, abs=1e-3))


def test_palette_and_alpha_images_read_as_their_colours(digit_pixels, tmp_path):
    rgb = Image.fromarray(digit_pixels[1])
    palette = rgb.quantize(colors=256)
    palette.save(tmp_path / "palette.png")
    rgb.convert("RGBA").save(tmp_path / "rgba.png")
    rgb.convert("L").convert("LA").save(tmp_path / "la.png")
    shape = (32, 32, 3)
    expected = _load_image(save_png(tmp_path / "rgb.png", digit_pixels[1]), shape)
    np.testing.assert_allclose(_load_image(str(tmp_path / "rgba.png"), shape), expected, atol=1e-6)
    quantized = _load_image(save_png(tmp_path / "q.png", np.asarray(palette.convert("RGB"))), shape)
    np.testing.assert_allclose(_load_image(str(tmp_path / "palette.png"), shape), quantized)
    grey = _load_image(str(tmp_path / "la.png"), (32, 32, 1))
    np.testing.assert_allclose(grey, _load_image(str(tmp_path / "rgb.png"), (32, 32, 1)), atol=1e-6)


# ------------------------------------------------------- unreadable files
@pytest.fixture
def mixed_batch(digit_pixels, tmp_path) -> dict[str, str]:
    """Two good images, a directory, a missing file and a corrupt one."""
    (tmp_path / "folder.png").mkdir()
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(np.random.default_rng(0).bytes(256))
    return {
        "good": save_png(tmp_path / "good.png", digit_pixels[0]),
        "folder": str(tmp_path / "folder.png"),
        "missing": str(tmp_path / "missing.png"),
        "corrupt": str(corrupt),
        "good16": save_png(tmp_path / "good16.png", sixteen_bit(digit_pixels[1])),
    }


def test_classify_files_classifies_the_readable_files_and_keeps_why_the_others_failed(
    export, mixed_batch
):
    results = classify_files(export, list(mixed_batch.values()), top_k=2)
    assert [r.path for r in results] == list(mixed_batch.values())
    by_name = dict(zip(mixed_batch, results))
    for name in ("good", "good16"):
        assert by_name[name].error is None
        assert [n in digits.TARGET_CLASS_NAMES for n, _ in by_name[name].classes] == [True] * 2
    assert by_name["folder"].report_line() == f"error: {mixed_batch['folder']}: is a directory"
    assert by_name["missing"].report_line() == f"error: {mixed_batch['missing']}: no such file"
    assert (
        by_name["corrupt"]
        .report_line()
        .startswith(f"error: {mixed_batch['corrupt']}: not a readable image (PNG or JPEG): ")
    )
    for name in ("folder", "missing", "corrupt"):
        assert by_name[name].classes == []
    # The good files' classes are those of a batch of just them.
    good = predict_files(export, [mixed_batch["good"], mixed_batch["good16"]], top_k=2)
    assert [by_name["good"].classes, by_name["good16"].classes] == good


def test_predict_files_raises_the_first_unreadable_file(export, mixed_batch):
    with pytest.raises(FileError, match="is a directory, not an image file"):
        predict_files(export, [mixed_batch["good"], mixed_batch["folder"]])
    with pytest.raises(MissingFileError, match="image file not found: .*missing.png"):
        predict_files(export, [mixed_batch["missing"], mixed_batch["folder"]])


@pytest.fixture
def parsed_flags():
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def run_main(capsys, model: str, paths, top_k: int = 1) -> tuple[int, str, str]:
    """`launch.predict`'s main in process: (exit code, stdout, stderr)."""
    code = 0
    with flagsaver.flagsaver(model=model, top_k=top_k):
        try:
            predict_launcher.main(["predict", *paths])
        except SystemExit as exit_:
            code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_main_prints_the_good_files_and_lists_the_bad_ones(
    export, mixed_batch, capsys, parsed_flags
):
    code, out, err = run_main(capsys, export, mixed_batch.values())
    assert code == 2
    printed = [line.partition(": ")[0] for line in out.splitlines()]
    assert printed == [mixed_batch["good"], mixed_batch["good16"]]
    errors = err.splitlines()
    assert errors[:2] == [
        f"error: {mixed_batch['folder']}: is a directory",
        f"error: {mixed_batch['missing']}: no such file",
    ]
    assert errors[2].startswith(f"error: {mixed_batch['corrupt']}: not a readable image")
    assert len(errors) == 3
    code, out, err = run_main(capsys, export, [mixed_batch["good"]])
    assert (code, len(out.splitlines()), err) == (0, 1, "")


def test_export_load_errors_are_one_line_and_exit_code_2(
    export, mixed_batch, tmp_path, capsys, parsed_flags
):
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    expected = {
        str(tmp_path / "nowhere"): "error: export directory not found: ",
        str(tmp_path): "error: ",  # a directory, but not an export
        str(broken): f"error: cannot load the export {broken}: ",
    }
    for model, start in expected.items():
        code, out, err = run_main(capsys, model, [mixed_batch["good"]])
        assert (code, out) == (2, ""), err
        assert len(err.splitlines()) == 1 and err.startswith(start), err
    assert "is not a gradmix-tf export" in run_main(capsys, str(tmp_path), ["x.png"])[2]


def test_a_damaged_export_cannot_be_loaded(export, mixed_batch, tmp_path, capsys, parsed_flags):
    damaged = tmp_path / "damaged"
    shutil.copytree(export, damaged)
    (data,) = (damaged / "variables").glob("variables.data-*")
    os.truncate(data, 100)
    before = file_hashes(str(damaged))
    code, out, err = run_main(capsys, str(damaged), [mixed_batch["good"]])
    assert (code, out) == (2, ""), err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: cannot load the export {damaged}: "), err
    assert err.endswith(
        "A damaged export: rerun `python -m launch.train --force_eval` on its work directory "
        "to write it again.\n"
    )
    assert file_hashes(str(damaged)) == before


def png_of_size(width: int, height: int) -> bytes:
    """A PNG file that says it is `width` x `height` 8-bit grey pixels (what PIL reads to
    open it), with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_an_image_of_too_many_pixels_is_one_more_unreadable_file(
    export, mixed_batch, tmp_path, capsys, parsed_flags
):
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_of_size(14000, 14000))
    code, out, err = run_main(capsys, export, [str(huge), mixed_batch["good"]])
    assert code == 2
    assert [line.partition(": ")[0] for line in out.splitlines()] == [mixed_batch["good"]]
    (line,) = err.splitlines()
    assert line.startswith(f"error: {huge}: too large to read: Image size (196000000 pixels)")


@pytest.mark.parametrize("top_k", [0, -1])
def test_top_k_must_be_at_least_1(export, mixed_batch, capsys, parsed_flags, top_k):
    with pytest.raises(app.UsageError, match=f"--top_k must be at least 1, got {top_k}"):
        run_main(capsys, export, [mixed_batch["good"]], top_k=top_k)
    with pytest.raises(ValueError, match=f"top_k must be >= 1, got {top_k}"):
        classify_files(export, [mixed_batch["good"]], top_k=top_k)


# ----------------------------------------------------------- small images
@pytest.mark.parametrize(
    ("size", "warned"),
    [((1, 1), True), ((15, 40), True), ((40, 15), True), ((16, 16), False), ((64, 64), False)],
)
def test_much_smaller_images_than_the_model_input_are_warned_about(export, tmp_path, size, warned):
    path = str(tmp_path / "small.png")
    Image.new("L", size, 128).save(path)
    (result,) = classify_files(export, [path])
    assert result.error is None and len(result.classes) == 1
    if warned:
        assert result.warning == (
            f"the image is {size[0]}x{size[1]} pixels, much smaller than the model's input of "
            "32x32: it is upscaled, so its prediction may mean little."
        )
    else:
        assert result.warning is None


def test_the_command_on_a_mixed_batch(export, mixed_batch, tmp_path):
    """One run as a user runs it: classes on stdout, warnings and errors on stderr, exit 2."""
    tiny = str(tmp_path / "tiny.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tiny)
    paths = [*mixed_batch.values(), tiny]
    completed = subprocess.run(
        [sys.executable, "-m", "launch.predict", f"--model={export}", *paths],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = f"exit {completed.returncode}\n{completed.stdout}\n{completed.stderr}"
    assert completed.returncode == 2, log
    lines = completed.stdout.splitlines()
    assert [line.partition(": ")[0] for line in lines] == [
        mixed_batch["good"],
        mixed_batch["good16"],
        tiny,
    ], log
    for line in lines:
        name, _, probability = line.partition(": ")[2].partition(" (")
        assert name in digits.TARGET_CLASS_NAMES and 0 <= float(probability[:-1]) <= 1, log
    stderr = completed.stderr.splitlines()
    assert f"error: {mixed_batch['folder']}: is a directory" in stderr, log
    assert f"error: {mixed_batch['missing']}: no such file" in stderr, log
    assert any(line.startswith(f"error: {mixed_batch['corrupt']}: ") for line in stderr), log
    assert any(line.startswith(f"warning: {tiny}: the image is 1x1 pixels") for line in stderr)
    assert "Traceback" not in completed.stderr, log
