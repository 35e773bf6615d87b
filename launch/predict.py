r"""Classifies image files (PNG or JPEG, any size) with an exported target model.

python -m launch.predict --model=runs/digits/export digit.png photo.jpg
"""

import sys

from absl import app, flags

from gradmix_tf.export.predict import predict_files

_MODEL = flags.DEFINE_string("model", None, "An export directory (WORKDIR/export).")
_TOP_K = flags.DEFINE_integer("top_k", 1, "How many classes to print for each file.")
flags.mark_flags_as_required(["model"])


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more image files after the flags.")
    try:
        predictions = predict_files(_MODEL.value, paths, top_k=_TOP_K.value)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    for path, classes in zip(paths, predictions):
        ranked = ", ".join(f"{name} ({probability:.3f})" for name, probability in classes)
        print(f"{path}: {ranked}")


if __name__ == "__main__":
    app.run(main)
