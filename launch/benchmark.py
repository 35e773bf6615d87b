r"""Runs methods x seeds of a config in one harness and writes the tables and plots.

    python -m launch.benchmark --config=configs/digits.py --seeds=5 --out=runs/bench_digits
    python -m launch.benchmark --config=configs/digits.py:smoke --methods=gradmix,joint \
        --seeds=2 --out=/tmp/bench_smoke
    python -m launch.benchmark --config=configs/digits.py --seeds=10 --reference=joint \
        --methods=gradmix,joint,target_only --out=runs/bench_vs_joint
    python -m launch.benchmark --config=configs/digits.py --seeds=5 --first_seed=10 \
        --reference=joint --methods=gradmix,joint,target_only --out=runs/bench_vs_joint

Every run trains in OUT/runs/<method>/seed_<n> with the same data, network,
optimizer, step budget and seed as the others (a method fixes only a few config
fields; see gradmix_tf/experiment.py). Rerunning the command skips finished runs and
resumes interrupted ones. Writes OUT/results.csv, OUT/summary.md, OUT/summary.png and
OUT/mixing_weights_over_time.png (gradmix). `--config.<field>=...` overrides apply to
every run. Without --methods/--seeds, the config's `benchmark.methods` and
`benchmark.seeds` are used (all methods, 5 seeds by default).
"""

import os

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from gradmix_tf import benchmark, experiment
from launch import errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py[:arg]).")
_METHODS = flags.DEFINE_list(
    "methods", None, f"Comma-separated methods; known: {','.join(experiment.METHODS)}."
)
_SEEDS = flags.DEFINE_integer(
    "seeds", None, "Number of seeds: runs seeds FIRST_SEED .. FIRST_SEED + N - 1."
)
_FIRST_SEED = flags.DEFINE_integer(
    "first_seed",
    0,
    "The first seed: extends an earlier benchmark by more seeds in the same --out (its "
    "finished runs are kept; the summary covers this command's seeds, launch.summarize "
    "merges results.csv files).",
)
_OUT = flags.DEFINE_string("out", None, "Output directory (runs, results.csv, summary.*).")
_REFERENCE = flags.DEFINE_string(
    "reference",
    None,
    "The method every other is compared with, seed by seed (paired gap, 95% CI, wins); "
    "default gradmix.",
)
flags.mark_flags_as_required(["config", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    defaults = config.get("benchmark") or {}
    methods = _METHODS.value or list(defaults.get("methods") or experiment.METHODS)
    seeds = _SEEDS.value if _SEEDS.value is not None else int(defaults.get("seeds", 5))
    if seeds <= 0:
        raise app.UsageError(f"--seeds must be positive, got {seeds}.")
    if _FIRST_SEED.value < 0:
        raise app.UsageError(f"--first_seed must be >= 0, got {_FIRST_SEED.value}.")
    logging.set_verbosity(logging.WARNING)  # one progress line per run
    config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy
    if "benchmark" in config:
        del config["benchmark"]
    out = os.path.expanduser(_OUT.value)
    benchmark.run_benchmark(
        config,
        methods,
        list(range(_FIRST_SEED.value, _FIRST_SEED.value + seeds)),
        out,
        reference=_REFERENCE.value,
    )
    print(open(f"{out}/summary.md").read())
    print(f"results: {out}/results.csv, plots: {out}/summary.png")


if __name__ == "__main__":
    errors.run(main)
