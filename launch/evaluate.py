r"""Re-evaluates the latest checkpoint of a work directory on the target test set.

python -m launch.evaluate --workdir=runs/digits
"""

import json

from absl import app, flags

from gradmix_tf import experiment
from launch import errors

_WORKDIR = flags.DEFINE_string("workdir", None, "A work directory of launch.train.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    results = experiment.evaluate_workdir(_WORKDIR.value)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    errors.run(main)
