"""Which of my sources help? A source audit from the labelled target alone.

Before the long run, a user wants to know which sources to train with, and has no
labelled test set to spare: only the labelled target (10 images a class, say).
The audit answers from those labels by k-fold cross-fitting:

- the labelled target is split into `folds` stratified folds (drawn from the
  seed; every class has at least `MIN_PER_CLASS_PER_FOLD` images in every fold);
- for each fold, every **candidate** trains a short run (`budget` x the
  config's `train.steps`, the config's method, network and optimizer) on the
  other folds' labels, the sources and the unlabelled target, and predicts the
  held-out fold. The candidates are all sources (`"all"`), each source left
  out (`"without:<source>"`) and, for each source with classes of the
  target's that the config shares as labelled (no label adapter), the same
  source with its label relation learned (`"learned:<source>"`); every
  candidate of a fold has the same training seed, so their predictions are
  paired;
- per source, the **change** from leaving it out, without it minus with every
  source, of the held-out accuracy and of the held-out images' predicted
  probability of their true class: a mean over the folds (and the `repeats`:
  new folds and training seeds, the same labels). The probability change gets
  a 95% t interval over the (repeat, fold) pairs (`DEFAULT_STATISTIC`, chosen
  on development seeds: docs/RESULTS.md). A fold's runs see another training
  seed and other held-out images, so the interval holds both sources of
  noise. The **verdict**: "hurts" (leaving it out helps: the interval is
  above 0), "helps" (below 0) or "cannot tell at this many labels" (the
  interval holds 0).

The recommendation leaves out the sources that hurt and learns the label relation of
those that gain from it (per source the larger gain of the two, each with its interval
above 0); `launch.train --audit=W` trains on it, only when asked.

An audit directory holds `audit_settings.json` (the config and the audit's
settings), one JSON file per finished run (`runs/repeat_<r>/fold_<f>/<candidate>.json`,
the held-out predictions), and `audit.json`, `audit.md` and `audit.png` once it
ends. A killed audit resumes: a rerun skips the runs it finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence

import keras
import ml_collections
import numpy as np
import scipy.stats
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gradmix_tf import config_renames, distribute, experiment
from gradmix_tf import workdir as workdirs
from gradmix_tf.callbacks.mixing_summaries import quiet_missing_glyphs
from gradmix_tf.data.streams import LabelledStream, MultiStreamData, TargetSplit
from gradmix_tf.errors import UserError, WorkdirError
from gradmix_tf.networks.label_adapter import matched_classes

DEFAULT_FOLDS = 5
# The fraction of the config's train.steps each audit run trains: the audit of the README's
# default task then stays within 6 training runs (docs/RESULTS.md, "Source audit").
DEFAULT_BUDGET = 0.25
MIN_PER_CLASS_PER_FOLD = 2
# What the verdict's interval is of (`paired_change`), chosen on development seeds only
# (docs/RESULTS.md, "Source audit: the protocol").
STATISTICS = (
    "probability_by_fold",
    "accuracy_by_fold",
    "accuracy_by_image",
    "probability_by_image",
)
DEFAULT_STATISTIC = "probability_by_fold"
ALL = "all"
HURTS, HELPS, CANNOT_TELL = "hurts", "helps", "cannot tell at this many labels"
SETTINGS_FILE = "audit_settings.json"
REPORT_FILES = ("audit.json", "audit.md", "audit.png")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One way the audit trains: `name` ("all", "without:<source>", "learned:<source>"),
    the sources it leaves out and the label adapters' options it sets (`gradmix.<field>`)."""

    name: str
    drop: tuple[str, ...] = ()
    adapters: tuple[tuple[str, object], ...] = ()

    @property
    def file_name(self) -> str:
        return self.name.replace(":", "_") + ".json"

    def configured(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """A copy of `config` with this candidate's label adapter options."""
        config = ml_collections.ConfigDict(config.to_dict())
        for field, value in self.adapters:
            config.step[field] = value
        return config


def shared_label_sources(config: ml_collections.ConfigDict, data: MultiStreamData) -> list[str]:
    """The sources with classes of the target's that the config gives no label adapter:
    they predict through h_T as their labels stand (or on a head of their own)."""
    adapted = config.step.get("label_adapter", False)
    only = tuple(config.step.get("adapter_sources") or ())
    shared = []
    for source in data.sources:
        matches = matched_classes(
            data.target_class_names, source.class_names, source.label_relation
        )
        if (matches >= 0).any() and not (adapted and (not only or source.name in only)):
            shared.append(source.name)
    return shared


def candidates(config: ml_collections.ConfigDict, data: MultiStreamData) -> list[Candidate]:
    """Every source; each source left out; each source with classes of the target's that
    the config shares as labelled, with its label relation learned instead."""
    names = [s.name for s in data.sources]
    found = [Candidate(ALL)] + [Candidate(f"without:{s}", (s,)) for s in names]
    adapted = config.step.get("label_adapter", False)
    only = tuple(config.step.get("adapter_sources") or ())
    for name in shared_label_sources(config, data):
        sources = (*only, name) if adapted else (name,)
        found.append(
            Candidate(
                f"learned:{name}",
                adapters=(("label_adapter", True), ("adapter_sources", sources)),
            )
        )
    return found


def check_folds(labels: np.ndarray, class_names: Sequence[str], folds: int):
    """Refuses fold counts that leave a class fewer than `MIN_PER_CLASS_PER_FOLD` images
    in a fold, saying how many folds would work."""
    counts = np.bincount(labels, minlength=len(class_names))
    smallest = int(counts.min())
    fewest = str(class_names[int(counts.argmin())])
    workable = smallest // MIN_PER_CLASS_PER_FOLD
    if folds >= 2 and smallest >= folds * MIN_PER_CLASS_PER_FOLD:
        return
    advice = (
        f"use --folds={workable} (or fewer, at least 2)"
        if workable >= 2
        else f"label at least {2 * MIN_PER_CLASS_PER_FOLD} images of every class"
    )
    raise UserError(
        f"an audit of {folds} folds needs at least {MIN_PER_CLASS_PER_FOLD} labelled images a "
        f"class in each fold ({folds * MIN_PER_CLASS_PER_FOLD} a class), but class {fewest!r} "
        f"has {smallest}: {advice}."
    )


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """[N] the fold of each labelled example: each class dealt round the folds in a
    random order (from `seed`), starting at a random fold."""
    rng = np.random.default_rng(seed)
    assignment = np.zeros(len(labels), np.int64)
    offset = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        assignment[members] = (offset + np.arange(len(members))) % folds
        offset += len(members)  # the next class goes on where this one stopped
    return assignment


def labelled_arrays(stream: LabelledStream) -> tuple[np.ndarray, np.ndarray]:
    """A labelled stream's examples and labels as numpy arrays."""
    examples, labels = [], []
    for x, y in stream.dataset.as_numpy_iterator():
        examples.append(x)
        labels.append(y)
    return np.stack(examples), np.asarray(labels, np.int64)


def audit_steps(config: ml_collections.ConfigDict, budget: float) -> int:
    """The steps of an audit run: `budget` x `train.steps`, in whole epochs (at least one)."""
    per_epoch = config.train.steps_per_epoch
    epochs = max(1, round(budget * config.train.steps / per_epoch))
    return epochs * per_epoch


def fold_data(
    data: MultiStreamData,
    examples: np.ndarray,
    labels: np.ndarray,
    held_out: np.ndarray,
    drop: Sequence[str],
) -> MultiStreamData:
    """The data of one audit run: the labelled target without the held-out fold (`held_out`,
    a mask), which becomes the test set; the sources but `drop`; the same unlabelled set."""
    labelled = data.target.labelled
    kind = "clips" if examples.ndim == 5 else "images"

    def part(name, mask):
        return LabelledStream.from_arrays(
            name, examples[mask], labels[mask], labelled.class_names, kind=kind
        )

    target = TargetSplit(
        part(labelled.name, ~held_out),
        data.target.unlabelled,
        part(f"{labelled.name}_held_out", held_out),
    )
    return MultiStreamData([s for s in data.sources if s.name not in drop], target)


def run_candidate(
    config: ml_collections.ConfigDict, data: MultiStreamData, steps: int, seed: int
) -> np.ndarray:
    """Trains one audit run (`steps` steps, training seed `seed`) and returns its class
    probabilities `[N, C]` on the data's test set (the held-out fold)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.seed = seed
    config.train.steps = steps
    config.train.checkpoint_every_steps = steps
    config.train.verbose = 0
    experiment.seed_everything(config)
    with distribute.precision_policy(config.train.get("precision", "float32")):
        model = experiment.build_model(config, data)
    experiment.fit(model, data, config, experiment.algorithm_callbacks(config, data, model))
    held_out = data.target.test.dataset.batch(config.train.eval_batch_size)
    probabilities = model.predict(held_out.map(lambda x, y: x), verbose=0)
    keras.backend.clear_session()
    return np.asarray(probabilities, np.float64)


def _settings(config, folds, budget, repeats) -> dict:
    return {
        "config": workdirs.config_as_dict(config),
        "folds": folds,
        "budget": budget,
        "repeats": repeats,
    }


def _check_settings(workdir: str, settings: dict, overwrite: bool):
    """Refuses a directory that is not an audit's, or holds an audit of other settings."""
    path = os.path.join(workdir, SETTINGS_FILE)
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        stored["config"] = config_renames.upgrade(stored.get("config", {}))
        if stored == json.loads(json.dumps(workdirs.json_safe(settings))) or overwrite:
            return
        differing = [k for k in ("folds", "budget", "repeats") if stored.get(k) != settings[k]]
        differing += ["config"] if stored.get("config") != settings["config"] else []
        raise WorkdirError(
            f"{workdir} holds an audit of other settings ({', '.join(differing)} differ): use "
            "another --workdir, or --overwrite to delete it and start afresh."
        )
    if os.path.isdir(workdir) and set(os.listdir(workdir)) - {workdirs.LOCK_FILE}:
        raise WorkdirError(
            f"{workdir} has files but no {SETTINGS_FILE}: it is not an audit directory. Give "
            "a new or empty directory."
        )


def run_audit(
    config: ml_collections.ConfigDict,
    workdir: str,
    folds: int = DEFAULT_FOLDS,
    budget: float = DEFAULT_BUDGET,
    repeats: int = 1,
    overwrite: bool = False,
    progress: Callable[[str], None] = print,
) -> dict:
    """Audits the config's sources in `workdir` (module docstring) and writes the report.

    Args:
        config: a config as `launch.train` takes it; the audit trains its method.
        folds: the cross-fitting folds of the labelled target.
        budget: the fraction of `train.steps` an audit run trains (0 < budget <= 1).
        repeats: audits on new folds and training seeds, pooled (the same labels).
        overwrite: delete an audit of other settings in `workdir` and start afresh.
        progress: called with one line per finished run (and its ETA).

    Returns:
        the report (`audit.json`): the per-source changes and verdicts, and the
        recommended sources to leave out.

    Raises:
        UserError: too few labels for `folds`, no source, a budget outside (0, 1], a
            directory in use or of another audit.
    """
    if not 0.0 < budget <= 1.0:
        raise UserError(f"--budget is a fraction of train.steps in (0, 1], got {budget}.")
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {repeats}.")
    config = experiment.resolve_config(config)
    if not config.data.use_sources:
        raise UserError(f"method {config.method!r} trains without sources: nothing to audit.")
    data = experiment.build_data(config)
    if not data.sources:
        raise UserError(
            "the task has no source (or data.drop_sources leaves none): nothing to audit."
        )
    examples, labels = labelled_arrays(data.target.labelled)
    check_folds(labels, data.target_class_names, folds)
    settings = _settings(config, folds, budget, repeats)
    workdirs.check_is_directory(workdir)
    descriptor, left_by = workdirs.acquire_lock(workdir)
    try:
        _check_settings(workdir, settings, overwrite)
        workdirs.log_taken_over(workdir, left_by)
        if overwrite:
            shutil.rmtree(os.path.join(workdir, "runs"), ignore_errors=True)
            for name in (SETTINGS_FILE, *REPORT_FILES):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(workdir, name))
        workdirs.write_json(os.path.join(workdir, SETTINGS_FILE), settings)
        with _quiet_retracing():
            records = _run_all(config, data, examples, labels, settings, workdir, progress)
        report = summarize_audit(records, [s.name for s in data.sources], settings)
        write_report(report, workdir)
    finally:
        if descriptor is not None:
            workdirs.release_lock(workdir, descriptor)
    return report


@contextlib.contextmanager
def _quiet_retracing():
    """Silences TensorFlow's retracing warning: every audit run builds a new model, so its
    functions are traced anew by design."""

    def keep(record):
        return "triggered tf.function retracing" not in record.getMessage()

    logger = tf.get_logger()
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _run_all(config, data, examples, labels, settings, workdir, progress) -> list[dict]:
    """Every (repeat, fold, candidate) run, each loaded when finished before, else trained."""
    folds, repeats = settings["folds"], settings["repeats"]
    steps = audit_steps(config, settings["budget"])
    todo = [
        (r, f, c) for r in range(repeats) for f in range(folds) for c in candidates(config, data)
    ]
    records, durations = [], []
    for index, (r, f, candidate) in enumerate(todo):
        directory = os.path.join(workdir, "runs", f"repeat_{r}", f"fold_{f}")
        path = os.path.join(directory, candidate.file_name)
        if os.path.exists(path):
            with open(path) as file:
                records.append(json.load(file))
            continue
        assignment = stratified_folds(labels, folds, seed=config.seed + 1000 * r)
        held_out = assignment == f
        started = time.time()
        probabilities = run_candidate(
            candidate.configured(config),
            fold_data(data, examples, labels, held_out, candidate.drop),
            steps,
            seed=config.seed + 1000 * r + f,
        )
        record = {
            "repeat": r,
            "fold": f,
            "candidate": candidate.name,
            "examples": np.flatnonzero(held_out).tolist(),
            "correct": (probabilities.argmax(axis=1) == labels[held_out]).astype(int).tolist(),
            "true_class_probability": probabilities[np.arange(held_out.sum()), labels[held_out]]
            .round(6)
            .tolist(),
            "seconds": round(time.time() - started, 2),
        }
        os.makedirs(directory, exist_ok=True)
        workdirs.write_json(path, record)
        records.append(record)
        durations.append(record["seconds"])
        left = (len(todo) - index - 1) * float(np.mean(durations))
        progress(
            f"[{index + 1}/{len(todo)}] repeat {r} fold {f} {candidate.name}: held-out accuracy "
            f"{np.mean(record['correct']):.3f} ({record['seconds']:.0f} s); about "
            f"{left / 60:.1f} min left"
        )
    return records


def verdict(ci_low: float, ci_high: float) -> str:
    """`HURTS` when leaving the source out gains (the whole interval above 0), `HELPS`
    when it loses, else `CANNOT_TELL` (an interval that cannot be computed included)."""
    if ci_low > 0:
        return HURTS
    if ci_high < 0:
        return HELPS
    return CANNOT_TELL


def _mean_interval(differences: np.ndarray, t_quantile: bool) -> tuple[float, float, float]:
    """The mean of `differences` and its 95% interval (t or normal), NaN below two."""
    n = len(differences)
    if n < 2:
        mean = float(differences.mean()) if n else float("nan")
        return mean, float("nan"), float("nan")
    quantile = scipy.stats.t.ppf(0.975, n - 1) if t_quantile else scipy.stats.norm.ppf(0.975)
    mean = float(differences.mean())
    half = float(quantile * differences.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half


def paired_change(
    records: Sequence[dict], candidate: str, statistic: str = DEFAULT_STATISTIC
) -> dict:
    """The held-out change of `candidate` against every source ("all"), paired.

    Args:
        records: an audit's runs (each: repeat, fold, candidate, correct,
            true_class_probability).
        statistic: what the 95% interval, and so the verdict, is of:
            "<measure>_by_<unit>". The measure: "probability", the held-out images'
            predicted probability of their true class, or "accuracy". The unit:
            "fold", a t interval over the (repeat, fold) pairs' mean changes (the
            images of a fold share one trained model), or "image", a normal
            interval over the images' paired changes.

    Returns:
        {"change": the held-out accuracy change, "probability_change": the true
        class's probability change, "ci_low", "ci_high": the interval of
        `statistic`'s change, "interval_of": `statistic`, "pairs": the (repeat,
        fold) pairs both ran, "folds_ahead": those where the candidate is ahead}.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}.")
    runs = {(r["repeat"], r["fold"], r["candidate"]): r for r in records}
    pairs = sorted((r, f) for r, f, c in runs if c == ALL and (r, f, candidate) in runs)

    def differences(field: str, per_image: bool) -> np.ndarray:
        changes = [np.subtract(runs[(*p, candidate)][field], runs[(*p, ALL)][field]) for p in pairs]
        if not per_image:
            changes = [[float(np.mean(c))] for c in changes]
        return np.concatenate(changes) if changes else np.zeros([0])

    by_fold = differences("correct", per_image=False)
    field = "true_class_probability" if statistic.startswith("probability") else "correct"
    by_image = statistic.endswith("by_image")
    _, low, high = _mean_interval(differences(field, by_image), t_quantile=not by_image)
    return {
        "change": float(by_fold.mean()) if len(by_fold) else float("nan"),
        "probability_change": float(differences("true_class_probability", True).mean())
        if pairs
        else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "interval_of": statistic,
        "pairs": len(pairs),
        "folds_ahead": int((by_fold > 0).sum()),
    }


def summarize_audit(
    records: Sequence[dict],
    source_names: Sequence[str],
    settings: dict,
    statistic: str = DEFAULT_STATISTIC,
) -> dict:
    """The report of an audit's runs: per source the paired change from leaving it out
    (`paired_change`, its interval the verdict) and, where it was run, from learning its
    label relation; the recommendation takes, per source, the better of the two that
    gains with the whole interval above 0 (neither: the source stays as it is)."""
    ran = {r["candidate"] for r in records}
    sources, drop, learn = {}, [], []
    for name in source_names:
        without = paired_change(records, f"without:{name}", statistic)
        entry = {**without, "verdict": verdict(without["ci_low"], without["ci_high"])}
        options = [(without["change"], "drop")] if entry["verdict"] == HURTS else []
        if f"learned:{name}" in ran:
            learned = paired_change(records, f"learned:{name}", statistic)
            entry["learned"] = learned
            if learned["ci_low"] > 0:
                options.append((learned["change"], "learn"))
        sources[name] = entry
        if options:
            (drop if max(options)[1] == "drop" else learn).append(name)
    config = settings["config"]
    all_accuracy = [float(np.mean(r["correct"])) for r in records if r["candidate"] == ALL]
    return {
        "task": config["data"]["task"],
        "method": config["method"],
        "seed": config["seed"],
        "folds": settings["folds"],
        "budget": settings["budget"],
        "repeats": settings["repeats"],
        "labelled_examples": len(
            {e for r in records if r["candidate"] == ALL for e in r["examples"]}
        ),
        "held_out_accuracy_all": float(np.mean(all_accuracy)) if all_accuracy else float("nan"),
        "audit_seconds": round(sum(r["seconds"] for r in records), 1),
        "interval_of": statistic,
        "sources": sources,
        "recommended_drop_sources": drop,
        "recommended_learned_relations": learn,
    }


def with_recommendation(
    config: ml_collections.ConfigDict, workdir: str
) -> ml_collections.ConfigDict:
    """A copy of `config` that follows the finished audit in `workdir`: the sources it
    found to hurt are left out (`data.drop_sources`, added to any already left out), and
    those it found better with their label relation learned get a label adapter
    (`step.label_adapter`, `step.adapter_sources`).

    Raises:
        UserError: no finished audit there, or an audit of another task or seed (the
            seed draws the labelled target the audit judged the sources on).
    """
    report = load_report(workdir)
    for field, value in (("task", config.data.task), ("seed", config.seed)):
        if report[field] != value:
            raise UserError(
                f"the audit in {workdir} is of {field} {report[field]!r}, the config's is "
                f"{value!r}: audit this config first (python -m launch.audit)."
            )
    config = ml_collections.ConfigDict(config.to_dict())
    dropped = tuple(config.data.get("drop_sources") or ())
    config.data.drop_sources = dropped + tuple(
        s for s in report["recommended_drop_sources"] if s not in dropped
    )
    learn = tuple(report.get("recommended_learned_relations") or ())
    if learn:  # as the audit's "learned:<source>" candidates trained
        only = tuple(config.step.get("adapter_sources") or ())
        adapted = config.step.get("label_adapter", False)
        config.step.adapter_sources = (*only, *learn) if adapted else learn
        config.step.label_adapter = True
    return config


def load_report(workdir: str) -> dict:
    """A finished audit's `audit.json`; a `UserError` when there is none."""
    path = os.path.join(workdir, "audit.json")
    if not os.path.exists(path):
        raise UserError(
            f"no finished audit in {workdir} (no audit.json): run python -m launch.audit "
            f"--config=... --workdir={workdir} first (a killed audit resumes)."
        )
    with open(path) as f:
        return json.load(f)


INTERVAL_NAMES = {
    "probability_by_fold": "true-class probability change, paired by fold",
    "accuracy_by_fold": "accuracy change, paired by fold",
    "accuracy_by_image": "accuracy change, paired by image",
    "probability_by_image": "true-class probability change, paired by image",
}


def _cells(entry: dict, statistic: str) -> str:
    """The accuracy and probability changes, the verdict's statistic with its interval."""
    interval = f" [{entry['ci_low']:+.3f}, {entry['ci_high']:+.3f}]"
    on_probability = statistic.startswith("probability")
    return (
        f"{entry['change']:+.3f}{'' if on_probability else interval} | "
        f"{entry['probability_change']:+.3f}{interval if on_probability else ''}"
    )


def audit_markdown(report: dict) -> str:
    """The report a person reads: a row per source, its change, interval and verdict."""
    learned = any("learned" in s for s in report["sources"].values())
    statistic = report.get("interval_of", DEFAULT_STATISTIC)
    accuracy, probability = "accuracy change", "true-class probability change"
    if statistic.startswith("probability"):
        probability += " [95% CI]"
    else:
        accuracy += " [95% CI]"
    lines = [
        f"# Source audit: {report['task']}, method {report['method']}, seed {report['seed']}",
        "",
        f"{report['labelled_examples']} labelled target images in {report['folds']} folds"
        f" x {report['repeats']} repeat(s); each run trains {report['budget']:g} of the"
        f" config's steps. Held-out accuracy with every source: "
        f"{report['held_out_accuracy_all']:.3f}. Changes are without the source minus with"
        f" every source; the interval and verdict are of the {INTERVAL_NAMES[statistic]}.",
        "",
        f"| source | {accuracy} | {probability} | verdict |"
        + (" with its label relation learned: accuracy | probability |" if learned else ""),
        "|---|---|---|---|" + ("---|---|" if learned else ""),
    ]
    for name, s in sorted(report["sources"].items(), key=lambda item: -item[1]["change"]):
        row = f"| {name} | {_cells(s, statistic)} | {s['verdict']} |"
        if learned:
            row += f" {_cells(s['learned'], statistic)} |" if "learned" in s else " | |"
        lines.append(row)
    drop, learn = report["recommended_drop_sources"], report["recommended_learned_relations"]
    advice = [f"leave out {', '.join(drop)}"] if drop else []
    advice += [f"learn the label relation of {', '.join(learn)}"] if learn else []
    lines += [
        "",
        "A source **hurts** when leaving it out gains, the whole 95% interval above 0; it "
        "**helps** when the interval is below 0; otherwise this many labels cannot tell "
        "(--repeats=2 or more labels narrow the interval: docs/audit.md).",
        "",
        "Recommended: "
        + ("; ".join(advice) + "." if advice else "keep every source as it is.")
        + " Train on it with `python -m launch.train --config=... --workdir=... --audit=<this "
        "directory>`.",
    ]
    return "\n".join(lines) + "\n"


@quiet_missing_glyphs()
def plot_audit(report: dict, path: str):
    """A bar a source: the change without it of the verdict's statistic, with its interval."""
    statistic = report.get("interval_of", DEFAULT_STATISTIC)
    centre = "probability_change" if statistic.startswith("probability") else "change"
    names = sorted(report["sources"], key=lambda n: report["sources"][n][centre])
    figure = Figure(figsize=(6.5, 1.2 + 0.45 * len(names)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = {HURTS: "tab:red", HELPS: "tab:green", CANNOT_TELL: "tab:grey"}
    for y, name in enumerate(names):
        s = report["sources"][name]
        low, high = s["ci_low"], s["ci_high"]
        errors = None
        if np.isfinite([low, high]).all():
            errors = [[max(s[centre] - low, 0.0)], [max(high - s[centre], 0.0)]]
        axes.barh(y, s[centre], color=colours[s["verdict"]], xerr=errors, capsize=3)
    axes.set_yticks(range(len(names)), names, fontsize=8)
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.set_xlabel(f"without the source: {INTERVAL_NAMES[statistic]} (red: hurts, green: helps)")
    axes.set_title(f"source audit: {report['task']}, seed {report['seed']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_report(report: dict, workdir: str):
    """Writes `audit.json`, `audit.md` and `audit.png` in `workdir`."""
    workdirs.write_json(os.path.join(workdir, "audit.json"), report)
    with open(os.path.join(workdir, "audit.md"), "w") as f:
        f.write(audit_markdown(report))
    plot_audit(report, os.path.join(workdir, "audit.png"))
