"""Does the weighting know which source helps? Usefulness against mixing weights.

A source's **usefulness** is measured by leave-one-source-out joint training:
the target accuracy joint training loses when that source is left out
(`config.data.drop_sources`), paired by seed (`benchmark.paired_gap`):

    usefulness(s) = acc(joint, all sources) - acc(joint, without s)

positive for a source that helps, negative for one that hurts. Next to it,
for each mixing rule, the **mean weight** the rule gives the source: the
mean over the recorded steps (`mixing_weights.npz` of every run) and over the
shared trunk's mixing layers (heads are left out: a source's own head is
trained by that source alone), then over seeds. A good rule ranks the sources
as the ablation does and gives a harmful source the least.

`merge_results` joins the `results.csv` files of several benchmark runs of one
task (for example seeds 0-4 and 5-9, run at different times), so that their
statistics are computed over all seeds. The command lines are
`python -m launch.summarize` and `python -m launch.source_study`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gradmix_tf.benchmark import paired_gap, read_results, run_dir
from gradmix_tf.callbacks.mixing_summaries import quiet_missing_glyphs
from gradmix_tf.errors import UserError

TRUNK_MARKER = "trunk/"  # mixing layers of the shared trunk: 'gradmix/trunk/conv1', ...


def merge_results(sources: Sequence[str]) -> list[dict]:
    """The rows of several results.csv files, one row per (method, seed).

    Args:
        sources: paths, each optionally followed by renames of its methods,
            `PATH@old=new[@old=new...]` (a method run under another name, e.g.
            with a command-line override).

    Raises:
        UserError: a (method, seed) given twice with different accuracies, or a
            missing file.
    """
    merged: dict[tuple[str, int], dict] = {}
    for source in sources:
        path, *renames = source.split("@")
        if not os.path.exists(path):
            raise UserError(f"no results file {path!r}: give the results.csv of a benchmark.")
        names = dict(r.split("=", 1) for r in renames)
        for row in read_results(path):
            row["method"] = names.get(row["method"], row["method"])
            key = (row["method"], row["seed"])
            old = merged.get(key)
            if old is not None and old["target_test_accuracy"] != row["target_test_accuracy"]:
                raise UserError(
                    f"{row['method']} seed {row['seed']} is in two results files with different "
                    f"accuracies ({old['target_test_accuracy']} and "
                    f"{row['target_test_accuracy']}): merge runs of one config only."
                )
            merged[key] = row
    return sorted(merged.values(), key=lambda r: (r["seed"], r["method"]))


def usefulness(full: Mapping[int, float], without: Mapping[str, Mapping[int, float]]) -> dict:
    """Per source: the paired gap acc(all) - acc(without it), on the seeds both ran.

    Args:
        full: seed -> accuracy of joint training with every source.
        without: source name -> (seed -> accuracy of joint training without it).

    Returns:
        source name -> `benchmark.paired_gap` of full minus without (its
        "gap" is the usefulness) plus "seeds".
    """
    result = {}
    for name, dropped in without.items():
        seeds = sorted(set(full) & set(dropped))
        gap = paired_gap([full[s] for s in seeds], [dropped[s] for s in seeds])
        result[name] = {**gap, "seeds": seeds}
    return result


def stream_weight_means(outs: Sequence[str], method: str) -> dict[str, dict]:
    """Per stream: the mean trunk weight of `method`'s runs in the benchmarks `outs`.

    Args:
        outs: output directories of `launch.benchmark` (their runs of `method`,
            `OUT/runs/<method>/seed_<n>/mixing_weights.npz`, on any seeds).
        method: the method whose runs are read.

    Returns:
        stream name -> {"mean": over seeds, "per_seed": {seed: mean}}, each seed's
        mean taken over its recorded steps and the trunk's mixing layers; a seed
        in two directories counts once (the first).

    Raises:
        UserError: no run of `method` with a `mixing_weights.npz` in any of `outs`.
    """
    per_seed: dict[str, dict[int, float]] = {}
    for out in outs:
        runs = os.path.join(out, "runs", method)
        names = sorted(os.listdir(runs)) if os.path.isdir(runs) else []
        for seed in sorted(int(n.split("_", 1)[1]) for n in names if n.startswith("seed_")):
            path = os.path.join(run_dir(out, method, seed), "mixing_weights.npz")
            if not os.path.exists(path):
                continue
            with np.load(path) as history:
                trunk = np.asarray([TRUNK_MARKER in str(n) for n in history["layer_names"]])
                if not trunk.any():
                    raise UserError(
                        f"{path} records no trunk layer (no layer name has "
                        f"{TRUNK_MARKER!r}): not a GradMix model's history."
                    )
                weights = history["weights"][:, :, trunk]  # [steps, streams, trunk layers]
                for name, mean in zip(history["stream_names"], weights.mean(axis=(0, 2))):
                    per_seed.setdefault(str(name), {}).setdefault(seed, float(mean))
    if not per_seed:
        raise UserError(
            f"no run of method {method!r} with a mixing_weights.npz under {list(outs)}: give "
            "the --out directories of the benchmarks that ran it."
        )
    return {
        n: {"mean": float(np.mean(list(v.values()))), "per_seed": dict(sorted(v.items()))}
        for n, v in per_seed.items()
    }


def rank_agreement(useful: Mapping[str, dict], weights: Mapping[str, dict]) -> dict:
    """Whether a rule's mean weights order the sources as their usefulness does.

    Returns:
        {"same_order": the two orders are equal, "least_useful_least_weight":
        the least useful source has the smallest weight}, over the sources in
        both (False when fewer than two).
    """
    names = [n for n in useful if n in weights]
    if len(names) < 2:
        return {"same_order": False, "least_useful_least_weight": False}
    by_use = sorted(names, key=lambda n: useful[n]["gap"])
    by_weight = sorted(names, key=lambda n: weights[n]["mean"])
    return {
        "same_order": by_use == by_weight,
        "least_useful_least_weight": by_use[0] == by_weight[0],
    }


def usefulness_markdown(useful: Mapping[str, dict], rules: Mapping[str, Mapping[str, dict]]) -> str:
    """A table: a row per source (usefulness with its 95% CI), a column per rule (mean weight)."""
    header = "| source | usefulness [95% CI] | " + " | ".join(rules) + " |"
    lines = [header, "|---" * (2 + len(rules)) + "|"]
    for name, u in sorted(useful.items(), key=lambda item: -item[1]["gap"]):
        interval = f"{u['gap']:+.4f} [{u['ci_low']:+.4f}, {u['ci_high']:+.4f}] ({len(u['seeds'])})"
        cells = [f"{rules[r][name]['mean']:.3f}" if name in rules[r] else "" for r in rules]
        lines.append(f"| {name} | {interval} | " + " | ".join(cells) + " |")
    orders = []
    for weights in rules.values():
        agreement = rank_agreement(useful, weights)
        orders.append(
            f"{'yes' if agreement['same_order'] else 'no'} / "
            f"{'yes' if agreement['least_useful_least_weight'] else 'no'}"
        )
    lines.append("| same order / least useful gets least | | " + " | ".join(orders) + " |")
    return "\n".join(lines) + "\n"


@quiet_missing_glyphs()
def plot_usefulness(
    useful: Mapping[str, dict], rules: Mapping[str, Mapping[str, dict]], path: str, title: str
):
    """Mean weight (y) against usefulness (x, with its CI), a marker per rule and source."""
    figure = Figure(figsize=(6.5, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    markers = "osD^v<>ph*"
    for index, (rule, weights) in enumerate(rules.items()):
        names = [n for n in useful if n in weights]
        x = [useful[n]["gap"] for n in names]
        y = [weights[n]["mean"] for n in names]
        errors = [
            [useful[n]["gap"] - useful[n]["ci_low"] for n in names],
            [useful[n]["ci_high"] - useful[n]["gap"] for n in names],
        ]
        axes.errorbar(
            x, y, xerr=errors, fmt=markers[index % len(markers)], label=rule, capsize=3, alpha=0.8
        )
        for name, xi, yi in zip(names, x, y):
            axes.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes.axvline(0.0, color="grey", linewidth=0.8)
    axes.set_xlabel("usefulness: accuracy joint training loses without the source")
    axes.set_ylabel("mean trunk mixing weight")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_study(
    useful: Mapping[str, dict], rules: Mapping[str, Mapping[str, dict]], out: str, title: str = ""
) -> dict:
    """OUT/usefulness.md (`usefulness_markdown`) and OUT/usefulness.png; their paths."""
    os.makedirs(out, exist_ok=True)
    paths = {
        "table": os.path.join(out, "usefulness.md"),
        "plot": os.path.join(out, "usefulness.png"),
    }
    with open(paths["table"], "w") as f:
        f.write(usefulness_markdown(useful, rules))
    plot_usefulness(useful, rules, paths["plot"], title or "source usefulness and mixing weights")
    return paths
