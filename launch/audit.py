r"""Which of my sources help? Audits a config's sources from its labelled target alone.

    python -m launch.audit --config=configs/digits.py --workdir=runs/digits_audit
    python -m launch.audit --config=configs/digits_mnistm.py:noisy_source --workdir=W \
        --folds=5 --budget=0.25 --repeats=2
    python -m launch.train --config=configs/digits.py --workdir=runs/digits --audit=runs/digits_audit

k-fold cross-fitting on the labelled target (`gradmix_tf/audit.py`): for each fold, short
runs with every source and with each source left out, trained on the other folds' labels
and scored on the held-out fold. Writes WORKDIR/audit.md (a row per source: the held-out
accuracy change without it, its 95% interval and a verdict: hurts / helps / cannot tell),
audit.json and audit.png, and prints the report. Progress and an ETA are printed as runs
finish; a killed audit resumes its finished runs when rerun. `launch.train --audit=W`
then trains without the sources the audit found to hurt (never without being asked).
"""

import os

from absl import app, flags
from ml_collections import config_flags

from gradmix_tf import audit
from launch import errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the audit's runs and report go.")
_FOLDS = flags.DEFINE_integer(
    "folds", audit.DEFAULT_FOLDS, "Cross-fitting folds of the labelled target."
)
_BUDGET = flags.DEFINE_float(
    "budget", audit.DEFAULT_BUDGET, "Fraction of the config's train.steps an audit run trains."
)
_REPEATS = flags.DEFINE_integer(
    "repeats", 1, "Audits on new folds and training seeds, pooled (narrower intervals)."
)
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Delete an audit of other settings in --workdir and start afresh."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = os.path.expanduser(_WORKDIR.value)
    audit.run_audit(
        _CONFIG.value,
        workdir,
        folds=_FOLDS.value,
        budget=_BUDGET.value,
        repeats=_REPEATS.value,
        overwrite=_OVERWRITE.value,
        progress=lambda line: print(line, flush=True),
    )
    print(open(os.path.join(workdir, "audit.md")).read())
    print(f"plot: {os.path.join(workdir, 'audit.png')}")


if __name__ == "__main__":
    errors.run(main)
