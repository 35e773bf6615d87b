r"""Times one GradMix training step against joint training, side by side.

    python -m launch.bench_step --config=configs/digits.py
    python -m launch.bench_step --config=configs/digits.py --num_sources=2 --jit_step
    python -m launch.bench_step --config=configs/digits.py --config.model.filters=64,128,256
    python -m launch.bench_step --config=configs/backbone.py            # MobileNetV3Small
    python -m launch.bench_step --config=configs/backbone.py --config.model.backbone=ResNet50

What is compared, in one process, on the same network (the config's trunk,
a target head and one head a source label space), the same optimizer and the
same batches (the config's task; source k reads the task's source k mod K0,
so any number of sources K can be timed; every stream has
`train.batch_size` examples, no pseudo-labelled stream):

- `gradmix`: `GradMixModel.train_step` with the config's GradMix options:
  one forward/backward pass a stream (K sources and the labelled target),
  the layer-wise mixing weights, the mixed gradient, the adaptive learning
  rate, one optimizer step.
- `one_pass`: the same GradMix step with `gradient_memory="one_pass"`: every
  stream's gradient from one forward and one backward pass over the concatenated
  batch (`gradmix_tf.training.one_pass`; batch normalisation still normalises
  each stream's rows on their own).
- `joint`: what a user writes for joint training: ONE forward/backward pass
  on the concatenated batch of all K + 1 streams (each stream's examples
  through its own head, the sum of the streams' mean losses), one optimizer
  step. This is the reference of the step-time ratio.
- `uniform`: the project's own joint-training path, `GradMixModel` with
  `rule="uniform"` and no adaptive learning rate (`--config.method=joint`):
  one pass a stream, every weight 1.

Each step is one traced `tf.function` (`--jit_step` compiles it with XLA),
without AutoGraph, as Keras's `fit` traces a `train_step` (AutoGraph rewrites
every function the step calls, and took a third of GradMix's first step).
After `--warmup` steps of each method, `--repeats` rounds each time
`--steps` steps of every method in turn (the order rotates every round); the
table gives the median over rounds of the time a step, the examples a second
((K + 1) * batch size a step) and the peak memory the step adds to what was
allocated before it (TensorFlow's CPU allocator statistics; on a GPU the
device's), the largest over rounds, and the time of each method's first step
(`trace s`: tracing the step into a graph, optimising it, and running it
once), which a run pays once. The last line is the GradMix / joint step-time
ratios at K = 2 (or the first K timed): one_pass's, then gradmix's.

Any trunk a config names is timed: `configs/backbone.py` is a keras.applications
backbone by name (`--config.model.backbone=ResNet50`, `EfficientNetB0`, ...).
"""

from __future__ import annotations

import os

# The CPU allocator keeps the peak-memory statistics only when it is a BFC allocator.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import dataclasses  # noqa: E402
import gc  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gradmix_tf import experiment  # noqa: E402
from gradmix_tf.data.streams import MultiStreamData  # noqa: E402
from gradmix_tf.training.gradmix_model import GradMixModel  # noqa: E402
from gradmix_tf.training.step_context import cross_entropy  # noqa: E402
from launch import errors  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py[:arg]).")
_NUM_SOURCES = flags.DEFINE_list("num_sources", ["1", "2", "4", "8"], "The values of K to time.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Interleaved rounds; the table gives medians.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps of each method in a round.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps of each method first (tracing).")
_JIT_STEP = flags.DEFINE_bool("jit_step", False, "Compile each whole step with XLA.")
_INTER_OP_THREADS = flags.DEFINE_integer(
    "inter_op_threads",
    0,
    "TensorFlow's inter-op threads (0: its default). 1 runs independent ops one after "
    "another: GradMix's per-stream passes then no longer overlap on a multi-core CPU.",
)
flags.mark_flags_as_required(["config"])

METHODS = ("gradmix", "one_pass", "joint", "uniform")


def make_batches(config, data, num_sources: int, count: int) -> list[dict]:
    """`count` batches of K sources and the labelled target, as tensors."""
    dataset = data.train_dataset(
        config.train.batch_size, seed=config.seed, max_shift=config.data.max_shift
    )
    batches = []
    for element in dataset.take(count):
        sources = element["sources"]
        batches.append(
            {
                "sources": tuple(sources[k % len(sources)] for k in range(num_sources)),
                "target": element["target"],
            }
        )
    return batches


def make_model(config, data, num_sources: int, **overrides) -> GradMixModel:
    """The config's GradMixModel (`experiment.build_model`) for K sources, no
    pseudo-labelled stream, compiled; `overrides` replace `config.step` fields."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.pseudo_labels.enabled = False
    for field, value in overrides.items():
        config.step[field] = value
    sources = [
        dataclasses.replace(data.sources[k % len(data.sources)], name=f"source_{k + 1}")
        for k in range(num_sources)
    ]
    return experiment.build_model(config, MultiStreamData(sources, data.target))


def joint_step_function(model: GradMixModel):
    """Joint training as a user writes it: one pass on the concatenated batch."""
    optimizer = model.optimizer
    variables = model.trainable_variables
    heads = list(model.stream_heads) + [0]  # the K sources, then the target
    adapters = list(model.stream_adapters) + [None]  # a label adapter predicts through h_T

    def step(data):
        pairs = list(data["sources"]) + [data["target"]]
        sizes = [tf.shape(x)[0] for x, _ in pairs]
        with tf.GradientTape() as tape:
            features = model.trunk(tf.concat([x for x, _ in pairs], axis=0), training=True)
            loss = 0.0
            parts = zip(tf.split(features, sizes), pairs, heads, adapters)
            for part, (_, y), head, adapter in parts:
                if adapter is None:
                    loss += tf.reduce_mean(cross_entropy(y, model.heads[head](part, training=True)))
                    continue
                logits = model.heads[0](part, training=True)
                loss += tf.reduce_mean(model.label_adapters[adapter].loss(y, logits))
        grads = tape.gradient(loss, variables)
        optimizer.apply([tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)])
        return {"loss": loss}

    return step


def _device() -> str:
    return "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"


def _memory(device: str, reset: bool = False) -> dict | None:
    try:
        if reset:
            tf.config.experimental.reset_memory_stats(device)
        return tf.config.experimental.get_memory_info(device)
    except ValueError:  # no allocator statistics (CPU without the BFC allocator)
        return None


def time_round(step, batches, steps: int, device: str) -> tuple[float, float | None]:
    """(seconds a step, peak MiB added by the steps) over `steps` steps."""
    before = _memory(device, reset=True)
    started = time.perf_counter()
    for i in range(steps):
        logs = step(batches[i % len(batches)])
    float(logs["loss"])  # waits for the last step
    seconds = (time.perf_counter() - started) / steps
    after = _memory(device)
    peak = None if before is None else (after["peak"] - before["current"]) / 2**20
    return seconds, peak


def gradient_mib(model: GradMixModel) -> float:
    """The size of one gradient copy of the target's path, MiB."""
    return sum(int(np.prod(v.shape)) * 4 for v in model.path_variables) / 2**20


def benchmark(config, num_sources: int, repeats: int, steps: int, warmup: int, jit: bool):
    """{method: (ms a step, examples a second, peak MiB, trace s)} for K = num_sources."""
    data = experiment.build_data(config)
    batches = make_batches(config, data, num_sources, count=max(steps, 4))
    keras.utils.set_random_seed(config.seed)
    models = {
        "gradmix": make_model(config, data, num_sources),
        "one_pass": make_model(config, data, num_sources, gradient_memory="one_pass"),
        "joint": make_model(
            config, data, num_sources, rule="uniform", adaptive_learning_rate=False
        ),
        "uniform": make_model(
            config, data, num_sources, rule="uniform", adaptive_learning_rate=False
        ),
    }
    for model in models.values():
        model.jit_compile = jit  # (a step compiled with XLA skips a non-finite batch)
    for model in models.values():  # the same initial weights (rules' own state aside)
        for variable, value in zip(
            model.trainable_variables, models["gradmix"].trainable_variables
        ):
            variable.assign(value)
    functions = {
        "gradmix": models["gradmix"].train_step,
        "one_pass": models["one_pass"].train_step,
        "joint": joint_step_function(models["joint"]),
        "uniform": models["uniform"].train_step,
    }
    step_functions = {  # traced as Keras's `fit` traces a train_step: without AutoGraph
        m: tf.function(f, jit_compile=jit, autograph=False) for m, f in functions.items()
    }
    device = _device()
    traces = {}
    for method, step in step_functions.items():
        gc.collect()  # (each method's first step from the same collector state)
        started = time.perf_counter()
        float(step(batches[0])["loss"])  # tracing, graph optimisation and one step
        traces[method] = time.perf_counter() - started
        time_round(step, batches, warmup, device)
    times = {m: [] for m in METHODS}
    peaks = {m: [] for m in METHODS}
    for r in range(repeats):
        order = METHODS[r % len(METHODS) :] + METHODS[: r % len(METHODS)]
        for method in order:
            seconds, peak = time_round(step_functions[method], batches, steps, device)
            times[method].append(seconds)
            peaks[method].append(peak)
    examples = (num_sources + 1) * config.train.batch_size
    table = {}
    for method in METHODS:
        seconds = statistics.median(times[method])
        peak = None if peaks[method][0] is None else max(peaks[method])
        table[method] = (1000.0 * seconds, examples / seconds, peak, traces[method])
    return table, gradient_mib(models["gradmix"])


def format_row(num_sources, method, row, reference_ms) -> str:
    ms, per_second, peak, trace = row
    peak_text = "n/a" if peak is None else f"{peak:8.1f}"
    return (
        f"| {num_sources:2d} | {method:8s} | {ms:8.1f} | {per_second:8.0f} | {peak_text:>8s} "
        f"| {trace:7.2f} | {ms / reference_ms:5.2f} |"
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _INTER_OP_THREADS.value:
        tf.config.threading.set_inter_op_parallelism_threads(_INTER_OP_THREADS.value)
    config = experiment.resolve_config(_CONFIG.value)
    try:
        counts = [int(k) for k in _NUM_SOURCES.value]
    except ValueError:
        counts = [0]
    if not counts or min(counts) < 1:
        raise app.UsageError(f"--num_sources must be positive integers, got {_NUM_SOURCES.value}.")
    if min(_REPEATS.value, _STEPS.value) < 1 or _WARMUP.value < 1:
        raise app.UsageError("--repeats, --steps and --warmup must be at least 1.")
    print(
        f"bench_step: {config.model.trunk} {dict(config.model)}, batch {config.train.batch_size} "
        f"a stream, optimizer {config.optimizer.name}, XLA step {_JIT_STEP.value}, "
        f"inter-op threads {_INTER_OP_THREADS.value or 'default'}, "
        f"TF {tf.__version__}, Keras {keras.__version__}, device {_device()}; "
        f"{_REPEATS.value} rounds x {_STEPS.value} steps, medians."
    )
    print("|  K | method   | ms/step  | ex/s     | peak MiB | trace s | ratio |")
    print("|---:|----------|---------:|---------:|---------:|--------:|------:|")
    ratios = {}
    for num_sources in counts:
        table, grad_mib = benchmark(
            config, num_sources, _REPEATS.value, _STEPS.value, _WARMUP.value, _JIT_STEP.value
        )
        reference = table["joint"][0]
        for method in METHODS:
            print(format_row(num_sources, method, table[method], reference), flush=True)
        ratios[num_sources] = {m: table[m][0] / reference for m in ("one_pass", "gradmix")}
    print(f"one gradient copy of the target's path: {grad_mib:.2f} MiB")
    k = 2 if 2 in ratios else counts[0]
    for method, ratio in ratios[k].items():
        print(f"{method}/joint step-time ratio (K={k}): {ratio:.2f}")


if __name__ == "__main__":
    errors.run(main)
