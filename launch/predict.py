r"""Classifies image files (PNG or JPEG, 8 or 16 bits, any size), or video files for a video model.

python -m launch.predict --model=runs/digits/export digit.png photo.jpg
python -m launch.predict --model=runs/actions/export --top_k=3 clip.avi clip.mp4

A video export's files are decoded with ffmpeg at the model's frame size and
the probabilities averaged over --num_clips evenly spaced clips.

Every readable file's classes go to stdout (`PATH: class (p), ...`); each file
that cannot be read gets `error: PATH: reason` on stderr, and the exit code is
then 2. An image much smaller than the model's input gets a `warning:` line on
stderr. An export that cannot be loaded is one `error:` line, exit code 2.
"""

import os
import sys

from absl import app, flags

from gradmix_tf.export.predict import classify_files
from launch import errors

_MODEL = flags.DEFINE_string("model", None, "An export directory (WORKDIR/export).")
_TOP_K = flags.DEFINE_integer("top_k", 1, "How many classes to print for each file.")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 3, "Video models: clips averaged a video.")
_FPS = flags.DEFINE_float(
    "fps", None, "Video models: decode at this frame rate (default: the file's)."
)
flags.mark_flags_as_required(["model"])


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more image (or video) files after the flags.")
    if _TOP_K.value < 1:
        raise app.UsageError(f"--top_k must be at least 1, got {_TOP_K.value}.")
    try:
        results = classify_files(
            os.path.expanduser(_MODEL.value),
            paths,
            top_k=_TOP_K.value,
            num_clips=_NUM_CLIPS.value,
            fps=_FPS.value,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    for result in results:
        if result.warning:
            print(f"warning: {result.path}: {result.warning}", file=sys.stderr)
    for result in results:
        if result.error is None:
            print(result.report_line())
    sys.stdout.flush()
    failed = [result for result in results if result.error is not None]
    for result in failed:
        print(result.report_line(), file=sys.stderr)
    if failed:
        sys.exit(2)


if __name__ == "__main__":
    errors.run(main)
