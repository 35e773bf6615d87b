r"""Does the weighting know which source helps? Usefulness next to mixing weights.

Usefulness of a source: the accuracy joint training loses without it (leave-one-source-out
runs, `--config.data.drop_sources`), paired by seed. Next to it, per method, the mean trunk
weight the method's runs gave the source (`gradmix_tf/source_study.py`):

    python -m launch.benchmark --config=configs/digits_mnistm.py:noisy_source --methods=joint \
        --seeds=5 "--config.data.drop_sources=('usps_5_9',)" --reference=joint \
        --out=runs/T4_drop_usps_5_9
    # ... one such run per source, and the methods with every source in runs/T4
    python -m launch.source_study --joint=runs/T4/results.csv \
        --drop=usps_5_9=runs/T4_drop_usps_5_9/results.csv \
        --drop=mnist_0_4=runs/T4_drop_mnist_0_4/results.csv \
        --weights=gradmix=runs/T4 --weights=persistent_pseudo_labels=runs/T4 --out=runs/T4_study

`--joint` and each `--drop` take one or more results.csv files (comma-separated, merged);
`--weights=METHOD=DIR[,DIR]` the benchmark directories that hold METHOD's runs
(`METHOD@LABEL=...` names its column LABEL: runs made under an older name). Writes
OUT/usefulness.md (a row per source, a column per method) and OUT/usefulness.png.
"""

from absl import app, flags

from gradmix_tf import source_study
from launch import errors

_JOINT = flags.DEFINE_list(
    "joint", None, "results.csv file(s) holding method `joint` with every source."
)
_DROP = flags.DEFINE_multi_string(
    "drop", [], "SOURCE=CSV[,CSV]: joint training without SOURCE (repeat per source)."
)
_WEIGHTS = flags.DEFINE_multi_string(
    "weights", [], "METHOD=DIR[,DIR]: benchmark directories with METHOD's runs (repeat)."
)
_OUT = flags.DEFINE_string("out", None, "Output directory (usefulness.md, usefulness.png).")
_TITLE = flags.DEFINE_string("title", "", "A title for the plot.")
flags.mark_flags_as_required(["joint", "out"])


def _pairs(values, flag):
    pairs = {}
    for value in values:
        name, sep, paths = value.partition("=")
        if not sep or not name or not paths:
            raise app.UsageError(f"--{flag}={value!r}: write NAME=PATH[,PATH].")
        pairs[name] = paths.split(",")
    return pairs


def _accuracies(paths, method="joint"):
    rows = [r for r in source_study.merge_results(paths) if r["method"] == method]
    if not rows:
        raise app.UsageError(f"no runs of method {method!r} in {paths}.")
    return {r["seed"]: r["target_test_accuracy"] for r in rows}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    drops = _pairs(_DROP.value, "drop")
    if not drops:
        raise app.UsageError("give at least one --drop=SOURCE=CSV (joint training without it).")
    full = _accuracies(_JOINT.value)
    useful = source_study.usefulness(full, {n: _accuracies(p) for n, p in drops.items()})
    rules = {}
    for name, outs in _pairs(_WEIGHTS.value, "weights").items():
        method, _, label = name.partition("@")  # METHOD@LABEL: a column named LABEL
        rules[label or method] = source_study.stream_weight_means(outs, method)
    paths = source_study.write_study(useful, rules, _OUT.value, _TITLE.value)
    print(open(paths["table"]).read())
    print(f"plot: {paths['plot']}")


if __name__ == "__main__":
    errors.run(main)
