r"""Trains GradMix (or a baseline) from a config, evaluates it and exports the target model.

    python -m launch.train --config=configs/digits.py --workdir=runs/digits
    python -m launch.train --config=configs/digits.py:smoke --workdir=/tmp/smoke \
        --config.method=joint --config.seed=1
    python -m launch.train --config=configs/digits.py --workdir=runs/digits --distribute=mirrored
    python -m launch.train --config=configs/digits.py --workdir=runs/digits --audit=runs/audit
    TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker",
        "index": 0}}' python -m launch.train --config=configs/digits.py --workdir=/shared/run \
        --distribute=multi_worker          # the same on host2 with "index": 1

Rerunning the same command on an existing work directory resumes from its latest
checkpoint and ends with the same result as an uninterrupted run (checkpoints are written at
epoch ends, so `train.steps` and `train.checkpoint_every_steps` are whole epochs). A work
directory records one experiment: another config (`--config.seed=3`, ...) is refused before
anything is written, naming the fields that differ (`--overwrite` deletes the run and trains
afresh), and a finished run is reported, not trained again (`--force_eval` evaluates and
exports it again). One run at a time writes a work directory (WORKDIR/run.lock), and a
directory with files but no config.json is not trained in (gradmix_tf/workdir.py). A user's
mistake is one line `error: ...` and exit code 2 (launch/errors.py).
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

from gradmix_tf import audit, distribute, experiment
from gradmix_tf import workdir as workdirs
from launch import errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py[:arg]).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, logs, results and the export go."
)
_DISTRIBUTE = flags.DEFINE_enum(
    "distribute",
    None,
    list(distribute.STRATEGIES),
    "Overrides config.train.distribute: none, mirrored (this host's GPUs or logical CPUs) "
    "or multi_worker (the hosts in TF_CONFIG; run the same command on every host).",
)
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite",
    False,
    "Delete the run in --workdir (checkpoints, logs, results, export) and train afresh.",
)
_FORCE_EVAL = flags.DEFINE_boolean(
    "force_eval", False, "A finished run: evaluate and export it again (results.json rewritten)."
)
_AUDIT = flags.DEFINE_string(
    "audit",
    None,
    "A finished audit's directory (python -m launch.audit): train as it recommends, without "
    "the sources it found to hurt and with the label relations it found worth learning.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if _DISTRIBUTE.value is not None:
        config.train.distribute = _DISTRIBUTE.value
    if _AUDIT.value is not None:
        config = audit.with_recommendation(config, os.path.expanduser(_AUDIT.value))
        dropped = tuple(config.data.drop_sources)
        learned = tuple(config.step.adapter_sources) if config.step.label_adapter else ()
        print(
            f"audit {_AUDIT.value}: leaving out {', '.join(dropped) or 'no source'}"
            + (f"; label adapters for {', '.join(learned)}" if learned else "")
        )
    results = experiment.train_and_evaluate(
        config,
        os.path.expanduser(_WORKDIR.value),
        overwrite=_OVERWRITE.value,
        force_eval=_FORCE_EVAL.value,
    )
    print(json.dumps(workdirs.json_safe(results), indent=2))


if __name__ == "__main__":
    errors.run(main)
