r"""Throughput of video training on this machine: input pipeline vs training step.

    python -m launch.bench_video --config=configs/actions.py --steps=30

Builds the config's data and model as `launch.train` does, then times
1. the input pipeline alone (multi-stream batches pulled from `train_batches`),
2. the training step alone (`model.fit` on one batch held in memory, repeated),
3. both together (`model.fit` on the pipeline).
Each after a warm-up (tracing, cache filling). Prints one JSON line with seconds a
step and clips a second, counting every clip of every stream (sources, target,
unlabelled) a step consumes.
"""

import json
import time

import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags

from gradmix_tf import experiment
from launch import errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py[:arg]).")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps in each measurement.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps before each measurement.")
flags.mark_flags_as_required(["config"])


def clips_per_batch(batch) -> int:
    return sum(int(x.shape[0]) for x in tf.nest.flatten(batch) if x.shape.rank == 5)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = experiment.resolve_config(_CONFIG.value)
    experiment.seed_everything(config)
    started = time.perf_counter()
    data = experiment.build_data(config)
    model = experiment.build_model(config, data)
    setup_seconds = time.perf_counter() - started
    steps, warmup = _STEPS.value, _WARMUP.value

    iterator = iter(experiment.train_batches(data, config))
    batch = None
    for _ in range(warmup):
        batch = next(iterator)
    clips = clips_per_batch(batch)
    started = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    input_seconds = (time.perf_counter() - started) / steps

    in_memory = tf.data.Dataset.from_tensors(batch).repeat()
    model.fit(in_memory, epochs=1, steps_per_epoch=warmup, verbose=0, shuffle=False)
    started = time.perf_counter()
    model.fit(in_memory, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    step_seconds = (time.perf_counter() - started) / steps

    dataset = experiment.train_batches(data, config)
    model.fit(dataset, epochs=1, steps_per_epoch=warmup, verbose=0, shuffle=False)
    started = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    fit_seconds = (time.perf_counter() - started) / steps

    print(
        json.dumps(
            {
                "config_trunk": config.model.trunk,
                "clip_shape": list(data.image_shape),
                "clips_per_step": clips,
                "setup_seconds": round(setup_seconds, 2),
                "input_pipeline_seconds_per_step": round(input_seconds, 4),
                "train_step_seconds": round(step_seconds, 4),
                "fit_seconds_per_step": round(fit_seconds, 4),
                "input_pipeline_clips_per_second": round(clips / input_seconds, 1),
                "train_step_clips_per_second": round(clips / step_seconds, 1),
                "fit_clips_per_second": round(clips / fit_seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    errors.run(main)
