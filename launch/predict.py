r"""Classifies image files (PNG or JPEG, any size), or video files for a video model.

python -m launch.predict --model=runs/digits/export digit.png photo.jpg
python -m launch.predict --model=runs/actions/export --top_k=3 clip.avi clip.mp4

A video export's files are decoded with ffmpeg at the model's frame size and
the probabilities averaged over --num_clips evenly spaced clips.
"""

import sys

from absl import app, flags

from gradmix_tf.export.predict import predict_files

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
    try:
        predictions = predict_files(
            _MODEL.value, paths, top_k=_TOP_K.value, num_clips=_NUM_CLIPS.value, fps=_FPS.value
        )
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    for path, classes in zip(paths, predictions):
        ranked = ", ".join(f"{name} ({probability:.3f})" for name, probability in classes)
        print(f"{path}: {ranked}")


if __name__ == "__main__":
    app.run(main)
