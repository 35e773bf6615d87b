"""One experiment from a config: data -> model -> fit with callbacks -> evaluate -> export.

The launchers (`launch/train.py`, `launch/evaluate.py`) are thin wrappers
around `train_and_evaluate` and `evaluate_workdir`. A work directory holds:

    config.json         the resolved config (method presets applied)
    checkpoints/        tf.train checkpoints (model, optimizer, GradMix state)
    tensorboard/        TensorBoard logs (losses, mixing weights, rho, r_t, ...)
    mixing_weights.npz  the streams x layers weights over training
    train_log.csv       per-epoch logs
    results.json        target test accuracy, final mixing weights, timings
    export/             the target model as a SavedModel (`serve` endpoint)

A work directory records one experiment (`gradmix_tf.workdir`): a rerun with
another config is refused before anything is written, a finished run is
reported as it is (`force_eval` evaluates it again, `overwrite` starts afresh).

Resuming. Running `train_and_evaluate` again on a work directory continues
from its newest checkpoint that restores (`restore_latest`) and ends with the
same weights and results as a run that was never interrupted; only the steps
since that checkpoint are repeated. This rests on three facts:

- checkpoints fall on epoch boundaries only (`Checkpointer`; `resolve_config`
  requires `train.steps` and `train.checkpoint_every_steps` to be multiples
  of `train.steps_per_epoch`), so a checkpoint at step N resumes with
  `fit(initial_epoch=N // steps_per_epoch)` and no partial epoch;
- the batches are a deterministic function of the seed, and the resumed run
  skips the N batches already consumed (`train_batches`);
- a checkpoint holds every piece of state (`training_checkpoint`): weights,
  GradMix state and pseudo-label table, optimizer with its step, seed
  generators. The per-epoch logs (`train_log.csv`, `mixing_weights.npz`)
  are cut back to the checkpoint's step before training continues.
"""

from __future__ import annotations

import csv
import os
import re
import time

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from gradmix_tf import config_renames, distribute
from gradmix_tf import workdir as workdirs
from gradmix_tf.callbacks.checkpoints import Checkpointer, batches_consumed, restore_latest
from gradmix_tf.callbacks.label_relations import (
    LabelRelationEstimator,
    argmax_mismatches,
    save_relation_heatmap,
)
from gradmix_tf.callbacks.mixing_summaries import MixingWeightsLogger
from gradmix_tf.callbacks.pseudo_labels import PseudoLabeler
from gradmix_tf.callbacks.skipped_batches import SkippedBatchesGuard, skipped_batches
from gradmix_tf.callbacks.train_log import TrainLogCSV
from gradmix_tf.config_checks import check_config
from gradmix_tf.data.streams import DataError, MultiStreamData
from gradmix_tf.errors import CheckpointError, ConfigError, TrainingStoppedError
from gradmix_tf.export.saved_model import export_target_model
from gradmix_tf.networks import build_trunk
from gradmix_tf.tasks import load_task
from gradmix_tf.training.checks import check_model_matches_data
from gradmix_tf.training.gradmix_model import GradMixModel
from gradmix_tf.training.options import GradMixOptions

# Each method is GradMix's trainer with some fields fixed (same data, network,
# optimizer, step budget and seeds): the baselines differ only by these
# overrides (docs/algorithm.md, "Baselines").
_NO_EXTRAS = {"step.adaptive_learning_rate": False, "pseudo_labels.enabled": False}
# The closed-form rule as reconstructed from the paper (the default until the study of
# docs/RESULTS.md, "Choosing the default mixing rule"): dot-product alignment, per-layer
# normalisation, pseudo-labels.
_CLOSED_FORM = {
    "step.rule": "closed_form",
    "step.alignment": "dot",
    "pseudo_labels.enabled": True,
}
# The persistent rule (the configs' default rule) with its cosine alignment.
_PERSISTENT = {"step.rule": "persistent", "step.alignment": "cosine"}
# The baselines and the closed form: dot alignment as before the default changed.
_BASELINE = {**_NO_EXTRAS, "step.alignment": "dot"}
METHODS = {
    # The default: the config's own values (configs/digits.py: the persistent rule with
    # cosine alignment, no pseudo-labels, the adaptive learning rate).
    "gradmix": {},
    "closed_form": _CLOSED_FORM,
    # Ablations of the closed form.
    "closed_form_global": {**_CLOSED_FORM, "step.granularity": "stream"},
    "closed_form_no_adaptive_lr": {**_CLOSED_FORM, "step.adaptive_learning_rate": False},
    "closed_form_no_pseudo_labels": {**_CLOSED_FORM, "pseudo_labels.enabled": False},
    # The persistent rule (docs/algorithm.md, "Mixing rules"), with and without pseudo-labels.
    "persistent_pseudo_labels": {**_PERSISTENT, "pseudo_labels.enabled": True},
    "persistent": {**_PERSISTENT, "pseudo_labels.enabled": False},
    # The closed form with cosine alignment and absolute weights (no per-layer normalisation:
    # w = max(cos, 0), a source that disagrees with the target everywhere takes nothing).
    "closed_form_cosine_gate": {
        "step.rule": "closed_form",
        "step.alignment": "cosine",
        "step.normalization": "none",
        "pseudo_labels.enabled": False,
    },
    # Baselines.
    "target_only": {"data.use_sources": False, "step.rule": "closed_form", **_BASELINE},
    "joint": {"step.rule": "uniform", **_BASELINE},
    "pretrain_finetune": {"step.rule": "pretrain_finetune", **_BASELINE},
    "example_reweighting": {"step.rule": "example_reweighting", **_BASELINE},
    "pcgrad": {"step.rule": "pcgrad", **_BASELINE},
    # The upper reference: every target example labelled, no sources.
    "oracle": {
        "data.use_sources": False,
        "data.shots_per_class": 0,
        "step.rule": "closed_form",
        **_BASELINE,
    },
}
BASELINES = ("target_only", "joint", "pretrain_finetune", "example_reweighting", "pcgrad", "oracle")
"""The methods that are not GradMix's rules: the baselines and the upper reference."""


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks a config and applies its method's preset; returns a copy.

    Raises:
        ConfigError: (a ValueError) naming the first field whose value the run cannot use
            (`gradmix_tf.config_checks`), before any data is loaded.
    """
    if config.method not in METHODS:
        renamed = config_renames.method_name(config.method)
        if renamed != config.method:
            raise ConfigError(f"method {config.method!r} is now called {renamed!r}.")
        raise ConfigError(f"unknown method {config.method!r}; known methods: {', '.join(METHODS)}.")
    resolved = ml_collections.ConfigDict(config.to_dict())
    for field, value in METHODS[config.method].items():
        group, name = field.split(".")
        resolved[group][name] = value
    check_config(resolved)
    return resolved


def build_data(config: ml_collections.ConfigDict) -> MultiStreamData:
    shots = config.data.shots_per_class or None  # 0: every target example labelled
    # Task-specific options (data directories, class subsets, clip length, ...).
    options = dict(config.data.get("task_options") or {})
    data = load_task(
        config.data.task,
        seed=config.seed,
        shots_per_class=shots,
        max_per_class=config.data.max_per_class or None,
        **options,
    )
    if not config.data.use_sources:
        return MultiStreamData([], data.target)
    dropped = tuple(config.data.get("drop_sources") or ())
    if dropped:  # a leave-one-source-out ablation
        names = [s.name for s in data.sources]
        unknown = [n for n in dropped if n not in names]
        if unknown:
            raise DataError(
                f"data.drop_sources names {unknown}, not sources of task "
                f"{config.data.task!r}: its sources are {names}."
            )
        data = MultiStreamData([s for s in data.sources if s.name not in dropped], data.target)
    return data


def build_model(config: ml_collections.ConfigDict, data: MultiStreamData) -> GradMixModel:
    """The GradMixModel of a config, built and compiled (in the current strategy scope)."""
    model_config = dict(config.model)
    name = model_config.pop("trunk")
    model_config.setdefault("input_shape", data.image_shape)  # if the trunk takes one
    trunk = build_trunk(name, **model_config)
    unlabelled = data.target.unlabelled
    model = GradMixModel(
        trunk,
        data.target_class_names,
        [s.class_names for s in data.sources],
        [s.name for s in data.sources],
        num_unlabelled=unlabelled.size if config.pseudo_labels.enabled and unlabelled else 0,
        options=GradMixOptions.from_config(config),
        source_label_relations=[s.label_relation for s in data.sources],
    )
    model.build((None, *data.image_shape))
    check_model_matches_data(model, data)
    model.compile(
        optimizer=build_optimizer(config),
        jit_compile=distribute.jit_compile_option(config.train.get("jit_compile", "auto")),
    )
    return model


def build_optimizer(config: ml_collections.ConfigDict) -> keras.optimizers.Optimizer:
    opt = config.optimizer
    learning_rate = opt.learning_rate
    if opt.schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, config.train.steps)
    elif opt.schedule != "constant":
        raise ConfigError(
            f"optimizer.schedule must be 'constant' or 'cosine', got {opt.schedule!r}."
        )
    if opt.name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if opt.name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=opt.momentum)
    raise ConfigError(f"optimizer.name must be 'adam' or 'sgd', got {opt.name!r}.")


def train_batches(
    data: MultiStreamData, config: ml_collections.ConfigDict, start_step: int = 0
) -> tf.data.Dataset:
    """The training batches of a run from step `start_step` on.

    The pipeline is a deterministic function of the seed, so a run resumed at
    step N sees the batches an uninterrupted run sees from step N on: the
    first N are produced and dropped, which costs a small fraction of
    training them (no model runs on them).
    """
    dataset = data.train_dataset(
        config.train.batch_size, seed=config.seed, max_shift=config.data.max_shift
    )
    return dataset.skip(start_step) if start_step else dataset


def resume_epoch(start_step: int, steps_per_epoch: int) -> int:
    """The `initial_epoch` of a run resumed at `start_step` (an epoch boundary)."""
    if start_step % steps_per_epoch:
        raise ValueError(
            f"the checkpoint is at step {start_step}, inside an epoch of {steps_per_epoch} "
            "steps: it cannot be resumed exactly. Resume with the train.steps_per_epoch it "
            "was written with, or start in a new work directory."
        )
    return start_step // steps_per_epoch


def _cut_logs_back(workdir: str, start_step: int, steps_per_epoch: int, mixing_logger):
    """Drops what an interrupted run logged after its checkpoint at `start_step`.

    The epochs from `start_step` on are trained again: their `train_log.csv`
    rows go, and `mixing_logger` continues the saved history up to `start_step`.
    """
    log_path = os.path.join(workdir, "train_log.csv")
    if os.path.exists(log_path):
        with open(log_path, newline="") as f:
            header, *rows = list(csv.reader(f)) or [[]]
        done = start_step // steps_per_epoch
        kept = [header, *(row for row in rows if row and int(row[0]) < done)]
        kept = kept if done and header else []
        with open(log_path + ".partial", "w", newline="") as f:
            csv.writer(f).writerows(kept)  # empty for a new run: CSVLogger writes a header
        os.replace(log_path + ".partial", log_path)
    history_path = mixing_logger.history_path
    if not (start_step and history_path and os.path.exists(history_path)):
        return
    model = mixing_logger.model
    with np.load(history_path) as history:
        layout = (history["stream_names"].tolist(), history["layer_names"].tolist())
        if layout != (list(model.stream_names), list(model.mixing_layer_names)):
            return
        kept = history["steps"] <= start_step
        mixing_logger.steps = history["steps"][kept].tolist()
        mixing_logger.weights = list(history["weights"][kept])


def algorithm_callbacks(config, data, model, log_dir: str | None = None) -> list:
    """The callbacks that are part of the method (pseudo-labels, the label relations'
    estimate, the guard on skipped batches), without the run's logs and checkpoints;
    `log_dir`: the TensorBoard directory of the label relations (None: not logged)."""
    callbacks = []
    unlabelled = data.target.unlabelled
    if model.num_unlabelled:
        pl = config.pseudo_labels
        callbacks.append(
            PseudoLabeler(
                unlabelled,
                warmup_epochs=pl.warmup_epochs,
                refresh_every=pl.refresh_every,
                threshold=pl.threshold,
                class_balance=pl.class_balance,
                batch_size=config.train.eval_batch_size,
                ema_decay=pl.ema_decay or None,
            )
        )
    options = model.options
    if model.label_adapters and (options.adapter_warmup_epochs or options.adapter_refresh_every):
        callbacks.append(
            LabelRelationEstimator(
                data.sources,
                warmup_epochs=options.adapter_warmup_epochs,
                trusted=data.target.labelled,
                estimate=options.adapter_estimate,
                refresh_every=options.adapter_refresh_every,
                batch_size=config.train.eval_batch_size,
                log_dir=log_dir,
            )
        )
    # Before the logs and the checkpoint of an epoch it stops.
    return callbacks + [SkippedBatchesGuard()]


def _callbacks(config, workdir, data, model, start_step=0):
    callbacks = algorithm_callbacks(
        config, data, model, os.path.join(workdir, "tensorboard", "label_relations")
    )
    mixing_logger = MixingWeightsLogger(
        os.path.join(workdir, "tensorboard", "mixing"),
        every_n_steps=config.train.log_every_steps,
        history_path=os.path.join(workdir, "mixing_weights.npz"),
    )
    mixing_logger.set_model(model)
    _cut_logs_back(workdir, start_step, config.train.steps_per_epoch, mixing_logger)
    callbacks += [
        mixing_logger,
        keras.callbacks.TensorBoard(
            os.path.join(workdir, "tensorboard"), update_freq=config.train.log_every_steps
        ),
        TrainLogCSV(os.path.join(workdir, "train_log.csv")),
        # Last: a checkpoint includes the epoch-end changes of the callbacks above.
        Checkpointer(
            os.path.join(workdir, "checkpoints"), every_n_steps=config.train.checkpoint_every_steps
        ),
    ]
    return callbacks


def seed_everything(config):
    """Seeds Python, numpy, TensorFlow and Keras from `config.seed` (and makes ops
    deterministic with `train.deterministic`)."""
    keras.utils.set_random_seed(config.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()


def evaluate(model: GradMixModel, data: MultiStreamData, batch_size: int) -> dict:
    metrics = model.evaluate(data.test_dataset(batch_size), return_dict=True, verbose=0)
    return {"target_test_accuracy": metrics["accuracy"], "target_test_loss": metrics["loss"]}


def mixing_weight_summary(model: GradMixModel) -> dict:
    """The last step's mixing weights: mean over layers per stream, and in full."""
    matrix = model.mixing_weights.numpy()  # [S, L]
    layers = [name.split("/", 1)[-1] for name in model.mixing_layer_names]
    return {
        "mixing_weights": {s: float(matrix[i].mean()) for i, s in enumerate(model.stream_names)},
        "mixing_weights_per_layer": {
            s: dict(zip(layers, map(float, matrix[i]))) for i, s in enumerate(model.stream_names)
        },
    }


def label_relation_summary(model: GradMixModel) -> dict:
    """Each label adapter's relation M_s and how many rows' argmax leave the name match."""
    names = [n for n, a in zip(model.source_names, model.stream_adapters) if a is not None]
    summary = {}
    for name, adapter in zip(names, model.label_adapters):
        relation = adapter.relation()
        summary[name] = {
            "argmax_mismatches": argmax_mismatches(relation, adapter.matches),
            "relation": relation.round(4).tolist(),
        }
    return summary


def save_label_relations(model: GradMixModel, workdir: str):
    """A heat map PNG of each label adapter's relation, `label_relation_<source>.png`."""
    adapters = dict(zip(model.source_names, model.stream_adapters))
    for k, name in enumerate(model.source_names):
        if adapters[name] is None:
            continue
        save_relation_heatmap(
            model.label_adapters[adapters[name]].relation(),
            model.target_class_names,
            model.source_class_names[k],
            os.path.join(workdir, f"label_relation_{name}.png"),
            title=f"label relation of {name}",
        )


def fit(model, data, config, callbacks, start_step: int = 0):
    """Trains from `start_step` to `train.steps`; a non-finite stop is a `TrainingStoppedError`."""
    train = config.train
    try:
        model.fit(
            distribute.shard_by_data(train_batches(data, config, start_step)),
            epochs=train.steps // train.steps_per_epoch,
            initial_epoch=resume_epoch(start_step, train.steps_per_epoch),
            steps_per_epoch=train.steps_per_epoch,
            callbacks=callbacks,
            verbose=train.verbose,
            shuffle=False,  # the data contract shuffles (Keras would warn it ignores shuffle)
        )
    except tf.errors.InvalidArgumentError as error:
        found = re.search(r"Non-finite \(NaN or Inf\).*?nothing was updated\.", error.message)
        if not found:
            raise
        raise TrainingStoppedError(
            f"{found.group(0)} The last checkpoint is intact: check that stream's data, or "
            "rerun with --config.train.on_nonfinite=skip to resume from it skipping such "
            "batches; a lower optimizer.learning_rate trains another run (another --workdir, "
            "or --overwrite)."
        ) from None


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    overwrite: bool = False,
    force_eval: bool = False,
) -> dict:
    """Trains (resuming from `workdir` if it has a checkpoint), evaluates and exports.

    A work directory records one experiment (`gradmix_tf.workdir`). Before anything is
    written, under the directory's lock: a directory in use by another run, one with files
    but no `config.json`, or one holding a run of another config is refused (`WorkdirError`,
    the differing fields named); `overwrite` deletes the run of another config and starts
    afresh; a finished run returns its stored results, trains and writes nothing
    (`force_eval` evaluates and exports it again, keeping its `train_seconds`). A rerun
    after a kill resumes from the newest checkpoint that restores and ends with the
    uninterrupted run's weights and results (module docstring). The export is written
    before `results.json`, which marks the run finished.
    """
    config = resolve_config(config)
    shared = config.train.get("distribute", "none") == "multi_worker"  # by every worker
    with workdirs.opened(workdir, config, overwrite, lock=not shared) as stored:
        return _train_and_evaluate_opened(config, workdir, stored, overwrite, force_eval)


def _train_and_evaluate_opened(config, workdir, stored, overwrite, force_eval) -> dict:
    """`train_and_evaluate` in a work directory `workdirs.opened`."""
    finished = workdirs.finished_results(workdir, config.train.steps) if stored else None
    if finished and not force_eval:
        logging.info(
            "%s holds a finished run (%d steps, target test accuracy %.4f): nothing to do. "
            "--force_eval evaluates and exports it again; --overwrite trains it afresh.",
            workdir,
            finished.get("steps", config.train.steps),
            finished.get("target_test_accuracy", float("nan")),
        )
        return finished
    workdirs.check_writable(workdir)
    # The strategy first: a multi-worker strategy must exist before any op runs.
    strategy = distribute.make_strategy(config.train.get("distribute", "none"))
    chief = distribute.is_chief(strategy)
    # Only the chief writes `workdir`; other workers write a private copy.
    write_dir = workdir if chief else distribute.worker_directory(workdir)
    seed_everything(config)

    data = build_data(config)
    with strategy.scope(), distribute.precision_policy(config.train.get("precision", "float32")):
        model = build_model(config, data)
    checkpoints = os.path.join(workdir, "checkpoints")
    if overwrite and chief:
        workdirs.clear_run_files(workdir, keep=("config.json",))  # rewritten just below
    start_step = 0 if overwrite else restore_latest(model, checkpoints) or 0
    if 0 < start_step < config.train.steps:
        logging.info("Resuming from step %d (checkpoint in %s)", start_step, checkpoints)
    elif start_step:
        logging.info("Restored the last checkpoint (step %d): evaluating and exporting", start_step)
    # Written once the data, the model and the checkpoints are known to be usable.
    workdirs.write_json(
        os.path.join(write_dir, "config.json"), config.to_json_best_effort(indent=2)
    )

    train = config.train
    started = time.time()
    if start_step < train.steps:
        fit(model, data, config, _callbacks(config, write_dir, data, model, start_step), start_step)
    train_seconds = time.time() - started
    if finished:  # evaluated again: the training time is the one measured when it trained
        train_seconds = finished.get("train_seconds", train_seconds)

    results = {
        "method": config.method,
        "task": config.data.task,
        "seed": config.seed,
        **evaluate(model, data, train.eval_batch_size),
        "steps": int(model.optimizer.iterations.numpy()),
        "batches": batches_consumed(model),
        "train_seconds": train_seconds,
        "nonfinite_skipped": skipped_batches(model),
        **mixing_weight_summary(model),
    }
    if model.label_adapters:
        results["label_relations"] = label_relation_summary(model)
    if model.num_unlabelled:
        results["pseudo_label_acceptance"] = float(model.pseudo_label_acceptance.numpy())
        results["pseudo_label_precision"] = float(model.pseudo_label_precision.numpy())
    if not chief:
        distribute.remove_worker_directory(workdir, write_dir)
        return results
    if model.label_adapters:
        save_label_relations(model, workdir)
    if results["nonfinite_skipped"]:
        logging.warning(
            "%d of %d batches were skipped for a non-finite loss or gradient.",
            results["nonfinite_skipped"],
            results["batches"],
        )
    workdirs.write_directory(  # whole or not at all, and before results.json
        os.path.join(workdir, "export"),
        lambda path: export_target_model(model, path, data.image_shape, data.target_class_names),
    )
    workdirs.write_json(os.path.join(workdir, "results.json"), results)  # last: finished
    logging.info(
        "Target test accuracy %.4f; results in %s", results["target_test_accuracy"], workdir
    )
    return results


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a work directory was trained with (`NotAWorkdirError` without one)."""
    return workdirs.load_config(workdir)


def evaluate_workdir(workdir: str, on_save_error=None) -> dict:
    """Re-evaluates the latest checkpoint of a work directory on the target test set.

    The results are saved as `evaluation.json`; when that write fails (a read-only
    directory), `on_save_error(error)` is called and the results are returned all the
    same (None: the error is raised).
    """
    config = load_workdir_config(workdir)
    seed_everything(config)
    data = build_data(config)
    with distribute.precision_policy(config.train.get("precision", "float32")):
        model = build_model(config, data)
    step = restore_latest(model, os.path.join(workdir, "checkpoints"))
    if step is None:
        raise CheckpointError(
            f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: the run saved none yet "
            "(one is written every train.checkpoint_every_steps steps)."
        )
    results = {"step": step, **evaluate(model, data, config.train.eval_batch_size)}
    try:
        workdirs.write_json(os.path.join(workdir, "evaluation.json"), results)
    except OSError as error:
        if on_save_error is None:
            raise
        on_save_error(error)
    return results
