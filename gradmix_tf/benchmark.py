"""Methods x seeds in one harness, and the reports a person reads: a CSV, a table and plots.

`run_benchmark` trains every (method, seed) of a config with
`experiment.train_and_evaluate`, each in its own work directory
`OUT/runs/<method>/seed_<n>`, so the same data, network, optimizer, step
budget and seeds hold for all methods (a method only fixes a few config
fields, `experiment.METHODS`). It is resumable: a run with `results.json`
is finished and skipped, a run with checkpoints continues from them, and a run
directory holding a run of another config is refused before any run starts
(`workdir.check_same_config`, the comparison `launch.train` makes). Then
`write_reports` writes

    OUT/results.csv                  one row per run
    OUT/summary.md                   mean +- std per method (best in bold), paired gaps to a
                                     reference method with 95% intervals and win counts
    OUT/summary.png                  bar chart with error bars
    OUT/mixing_weights_over_time.png streams x layers heat maps of one GradMix run

The command line is `python -m launch.benchmark`.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Sequence

import keras
import ml_collections
import numpy as np
import scipy.stats
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gradmix_tf import config_renames, experiment
from gradmix_tf import workdir as workdirs
from gradmix_tf.callbacks.mixing_summaries import quiet_missing_glyphs, short_layer_names
from gradmix_tf.errors import ConfigError, UserError

COLUMNS = (
    "method",
    "seed",
    "target_test_accuracy",
    "wall_seconds",
    "steps",
    "pseudo_label_acceptance",
    "pseudo_label_precision",
)
REFERENCE_METHODS = ("oracle",)  # upper references, not competitors
NEW_RUN = "use another --out, or delete that run directory to train it again"
"""How out of a changed config for a run directory (`workdir.check_same_config`)."""


def run_dir(out: str, method: str, seed: int) -> str:
    """The work directory of one run (a run kept under a method's name before a rename,
    `config_renames`, is that run)."""
    path = os.path.join(out, "runs", method, f"seed_{seed}")
    for old in config_renames.old_method_names(method):
        old_path = os.path.join(out, "runs", old, f"seed_{seed}")
        if not os.path.exists(path) and os.path.isdir(old_path):
            return old_path
    return path


def run_config(
    config: ml_collections.ConfigDict, method: str, seed: int
) -> ml_collections.ConfigDict:
    """The resolved config of one run: `config` with its method and seed set."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.method = method
    config.seed = seed
    config.train.verbose = 0
    return experiment.resolve_config(config)


def _row(method: str, seed: int, results: dict, wall_seconds: float) -> dict:
    return {
        "method": method,
        "seed": seed,
        "target_test_accuracy": results["target_test_accuracy"],
        "wall_seconds": round(wall_seconds, 1),
        "steps": results["steps"],
        "pseudo_label_acceptance": results.get("pseudo_label_acceptance", ""),
        "pseudo_label_precision": results.get("pseudo_label_precision", ""),
    }


def run_benchmark(
    config: ml_collections.ConfigDict,
    methods: Sequence[str],
    seeds: Sequence[int],
    out: str,
    log: Callable[[str], None] = print,
    reference: str | None = None,
) -> list[dict]:
    """Trains and evaluates every (method, seed); returns the rows of results.csv.

    summary.md gives each method's paired gap to `reference` (one of `methods`;
    None: "gradmix", with no gaps when it is not run).

    Finished runs (with `results.json`) are read, not retrained. A progress
    line per run gives its accuracy, its time and the estimated time left.
    """
    unknown = [m for m in methods if m not in experiment.METHODS]
    if unknown:
        raise ConfigError(
            f"unknown method(s) {unknown}; known methods: {', '.join(experiment.METHODS)}."
        )
    if not methods or not seeds:
        raise ConfigError("need at least one method and one seed.")
    if reference is not None and reference not in methods:
        raise ConfigError(
            f"the reference method {reference!r} is not among the methods run: {list(methods)}."
        )
    runs = [(m, s) for s in seeds for m in methods]  # seed-major: early rows compare methods
    configs = {(m, s): run_config(config, m, s) for m, s in runs}
    for (m, s), run in configs.items():  # before any run starts
        workdirs.check_same_config(run_dir(out, m, s), run, ways_out=NEW_RUN)

    rows, durations = [], []
    for index, (method, seed) in enumerate(runs, 1):
        workdir = run_dir(out, method, seed)
        results_path = os.path.join(workdir, "results.json")
        timing_path = os.path.join(workdir, "wall_seconds.json")
        prefix = f"[{index}/{len(runs)}] {method} seed {seed}:"
        if os.path.exists(results_path) and os.path.exists(timing_path):
            with open(results_path) as f:
                results = json.load(f)
            with open(timing_path) as f:
                wall = json.load(f)["wall_seconds"]
            log(f"{prefix} finished before, accuracy {results['target_test_accuracy']:.4f}")
        else:
            keras.backend.clear_session()
            started = time.time()
            results = experiment.train_and_evaluate(configs[(method, seed)], workdir)
            wall = time.time() - started
            with open(timing_path, "w") as f:
                json.dump({"wall_seconds": wall}, f)
            durations.append(wall)
            left = len(runs) - index
            eta = np.mean(durations) * left
            log(
                f"{prefix} accuracy {results['target_test_accuracy']:.4f} in {wall:.0f} s; "
                f"{left} run(s) left, ETA {_duration(eta)}"
            )
        rows.append(_row(method, seed, results, wall))
    write_reports(rows, out, config, methods, reference or "gradmix")
    return rows


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


_NUMBERS = {"seed": int, "target_test_accuracy": float, "wall_seconds": float, "steps": int}
"""The columns of results.csv read as numbers, and how."""


def read_results(path: str) -> list[dict]:
    """The rows of a results.csv, their numbers read (`UserError` naming a cell that is
    not one) and their methods in today's names (`config_renames`)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for line, row in enumerate(rows, 2):
        if "method" in row:
            row["method"] = config_renames.method_name(row["method"])
        for column, number in _NUMBERS.items():
            try:
                row[column] = number(row[column])
            except (KeyError, TypeError, ValueError):
                raise UserError(
                    f"{path}, line {line}: {column} is {row.get(column)!r}, not a number; "
                    "give the results.csv of launch.benchmark (or correct that cell)."
                ) from None
    return rows


def paired_gap(values, reference_values, confidence: float = 0.95) -> dict:
    """The paired difference `values - reference_values` over seeds, with a t interval.

    Args:
        values, reference_values: accuracies of two methods on the same seeds.
        confidence: the level of the two-sided interval for the mean difference.

    Returns:
        {"gap": mean, "gap_std": sample std (0 for one seed), "ci_low", "ci_high":
        mean -+ t_{n-1} * std / sqrt(n) (NaN below two seeds), "wins", "ties",
        "losses": seeds where the method is above, equal to, below the reference}.
    """
    gaps = np.asarray(values, dtype=float) - np.asarray(reference_values, dtype=float)
    n = len(gaps)
    result = {
        "gap": float(gaps.mean()) if n else float("nan"),
        "gap_std": float(gaps.std(ddof=1)) if n > 1 else 0.0,
        "ci_low": float("nan"),
        "ci_high": float("nan"),
        "wins": int((gaps > 0).sum()),
        "ties": int((gaps == 0).sum()),
        "losses": int((gaps < 0).sum()),
    }
    if n > 1:
        half = scipy.stats.t.ppf(0.5 + confidence / 2, n - 1) * result["gap_std"] / np.sqrt(n)
        result["ci_low"], result["ci_high"] = result["gap"] - half, result["gap"] + half
    return result


def summarize(
    rows: Sequence[dict], methods: Sequence[str] | None = None, reference: str = "gradmix"
) -> list[dict]:
    """Per method: n, mean, std (ddof=1; 0 for one seed), per-seed values, and the
    paired gap to the `reference` method (`paired_gap`, on the seeds both ran)."""
    methods = list(methods or dict.fromkeys(r["method"] for r in rows))
    by_method = {m: {r["seed"]: r for r in rows if r["method"] == m} for m in methods}
    baseline = {r["seed"]: r for r in rows if r["method"] == reference}
    summary = []
    for method in methods:
        runs = by_method[method]
        seeds = sorted(runs)
        accuracies = np.array([runs[s]["target_test_accuracy"] for s in seeds], dtype=float)
        paired = [s for s in seeds if s in baseline]
        gap = paired_gap(
            [runs[s]["target_test_accuracy"] for s in paired],
            [baseline[s]["target_test_accuracy"] for s in paired],
        )
        summary.append(
            {
                "method": method,
                "n": len(seeds),
                "seeds": seeds,
                "accuracies": accuracies.tolist(),
                "mean": float(accuracies.mean()) if len(seeds) else float("nan"),
                "std": float(accuracies.std(ddof=1)) if len(seeds) > 1 else 0.0,
                "reference": reference,
                "paired_seeds": len(paired),
                **gap,
                "wall_seconds": float(np.mean([runs[s]["wall_seconds"] for s in seeds])),
            }
        )
    return summary


def best_method(summary: Sequence[dict]) -> str | None:
    """The method with the best mean accuracy, upper references (oracle) excluded."""
    competitors = [s for s in summary if s["method"] not in REFERENCE_METHODS and s["n"]]
    return max(competitors, key=lambda s: s["mean"])["method"] if competitors else None


def _gap_cells(s: dict) -> tuple[str, str]:
    """The markdown cells of a method's paired gap: 'mean [low, high]' and 'wins/ties/losses'."""
    if s["method"] == s["reference"] or not s["paired_seeds"] or np.isnan(s["gap"]):
        return "", ""
    interval = "" if np.isnan(s["ci_low"]) else f" [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}]"
    return f"{s['gap']:+.4f}{interval}", f"{s['wins']}/{s['ties']}/{s['losses']}"


def summary_markdown(summary: Sequence[dict], title: str) -> str:
    best = best_method(summary)
    reference = summary[0]["reference"] if summary else "gradmix"
    lines = [
        f"# {title}",
        "",
        "Target test accuracy, mean ± std over seeds (sample std). The best mean of the",
        "non-reference methods is in bold; the oracle (every target label) is an upper",
        f"reference. 'Gap to {reference}' is the mean per-seed difference (same seed, so",
        "same labelled examples) with its 95% confidence interval (t over seeds);",
        f"'w/t/l' counts the seeds where the method is above / equal to / below {reference}.",
        "",
        f"| method | accuracy (mean ± std) | n | per seed | gap to {reference} [95% CI] | w/t/l "
        "| wall s / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        cell = f"{s['mean']:.4f} ± {s['std']:.4f}"
        if s["method"] == best:
            cell = f"**{cell}**"
        gap, record = _gap_cells(s)
        per_seed = ", ".join(f"{a:.3f}" for a in s["accuracies"])
        name = f"{s['method']} (reference)" if s["method"] in REFERENCE_METHODS else s["method"]
        lines.append(
            f"| {name} | {cell} | {s['n']} | {per_seed} | {gap} | {record} "
            f"| {s['wall_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


@quiet_missing_glyphs()
def plot_summary(summary: Sequence[dict], path: str, title: str):
    """Bar chart of mean target accuracy with ±std error bars and the seeds as dots."""
    figure = Figure(figsize=(max(5.0, 1.2 + 0.9 * len(summary)), 4.4), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    best = best_method(summary)
    positions = np.arange(len(summary))
    colours = [
        "#bbbbbb"
        if s["method"] in REFERENCE_METHODS
        else "#d62728"
        if s["method"] == best
        else "#1f77b4"
        if s["method"] not in experiment.BASELINES
        else "#7f7f7f"
        for s in summary
    ]
    axes.bar(
        positions,
        [s["mean"] for s in summary],
        yerr=[s["std"] for s in summary],
        color=colours,
        capsize=4,
    )
    for x, s in zip(positions, summary):
        axes.plot([x] * s["n"], s["accuracies"], "k.", markersize=4)
        axes.annotate(
            f"{s['mean']:.3f}",
            (x, s["mean"] + s["std"]),
            ha="center",
            va="bottom",
            fontsize=7,
            xytext=(0, 2),
            textcoords="offset points",
        )
    axes.set_xticks(positions, [s["method"] for s in summary], rotation=35, ha="right", fontsize=8)
    low = min(min(s["accuracies"]) for s in summary if s["n"])
    axes.set_ylim(max(0.0, low - 0.1), 1.0)
    axes.set_ylabel("target test accuracy")
    axes.set_title(title, fontsize=9, wrap=True)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


@quiet_missing_glyphs()
def plot_mixing_weights_over_time(history_path: str, path: str, num_points: int = 4):
    """Heat maps of w [S, L] at `num_points` times of one run, and the per-stream means."""
    with np.load(history_path) as history:
        steps = history["steps"]
        weights = history["weights"]
        streams = [str(s) for s in history["stream_names"]]
        layers = short_layer_names(history["layer_names"])
    if not len(steps):
        raise ValueError(f"{history_path} holds no mixing weights.")
    picks = sorted(set(np.linspace(0, len(steps) - 1, num_points).round().astype(int)))
    vmax = max(1.0, float(weights.max()))
    figure = Figure(figsize=(3.2 * len(picks) + 1.0, 2.2 + 0.45 * len(streams) + 2.6), dpi=100)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(
        2, len(picks), height_ratios=[0.8 + 0.45 * len(streams), 2.6], hspace=1.0
    )
    image = None
    for column, index in enumerate(picks):
        axes = figure.add_subplot(grid[0, column])
        image = axes.imshow(weights[index], vmin=0.0, vmax=vmax, cmap="viridis", aspect="auto")
        axes.set_title(f"step {int(steps[index])}", fontsize=9)
        axes.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=6)
        axes.set_yticks(range(len(streams)), streams if column == 0 else [], fontsize=7)
    figure.colorbar(image, ax=figure.axes, fraction=0.02, label="w")
    axes = figure.add_subplot(grid[1, :])
    for s, stream in enumerate(streams):
        axes.plot(steps, weights[:, s, :].mean(axis=1), label=stream)
    axes.set_xlabel("training step")
    axes.set_ylabel("mean w over layers")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.savefig(path, bbox_inches="tight")


def write_reports(
    rows: Sequence[dict],
    out: str,
    config: ml_collections.ConfigDict | None = None,
    methods: Sequence[str] | None = None,
    reference: str = "gradmix",
) -> dict:
    """results.csv, summary.md, summary.png (+ the mixing-weight plot of a GradMix run)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows, methods, reference)
    seeds = sorted({r["seed"] for r in rows})
    task = f"task {config.data.task}, " if config is not None else ""
    steps = f", {rows[0]['steps']} steps" if rows else ""
    title = f"GradMix benchmark: {task}{len(seeds)} seed(s){steps}"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary_markdown(summary, title))
    plot_summary(summary, os.path.join(out, "summary.png"), title)
    paths = {"summary": os.path.join(out, "summary.md")}
    for row in rows:
        history = os.path.join(run_dir(out, row["method"], row["seed"]), "mixing_weights.npz")
        if row["method"] == "gradmix" and os.path.exists(history):
            paths["mixing_weights"] = os.path.join(out, "mixing_weights_over_time.png")
            plot_mixing_weights_over_time(history, paths["mixing_weights"])
            break
    return paths
