r"""Re-evaluates the latest checkpoint of a work directory on the target test set.

python -m launch.evaluate --workdir=runs/digits

Prints the results (JSON) and saves them as WORKDIR/evaluation.json; a directory that
cannot be written gets the results printed all the same, then one `warning:` line.
"""

import json
import os
import sys

from absl import app, flags

from gradmix_tf import experiment
from gradmix_tf import workdir as workdirs
from launch import errors

_WORKDIR = flags.DEFINE_string("workdir", None, "A work directory of launch.train.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    not_saved = []
    results = experiment.evaluate_workdir(
        os.path.expanduser(_WORKDIR.value), on_save_error=not_saved.append
    )
    print(json.dumps(workdirs.json_safe(results), indent=2), flush=True)
    for error in not_saved:
        print(f"warning: the results are not saved: {errors.message_of(error)}", file=sys.stderr)


if __name__ == "__main__":
    errors.run(main)
