"""Distributed training through `tf.distribute`: the strategy, the data, who writes.

`GradMixModel` runs unchanged on one device, on several devices of one host
(`MirroredStrategy`) or on several hosts (`MultiWorkerMirroredStrategy`,
configured by the `TF_CONFIG` environment variable): build and compile the
model under `strategy.scope()`, pass the global batch size to the data, and
`fit`. Inside the step every stream's gradient is all-reduced before the
mixing weights are solved, so the weights come from the global gradients and
are the same on every replica; the optimizer receives the local mixed
gradients and sums them across replicas itself (docs/algorithm.md, "Scaling").

    strategy = make_strategy("mirrored")
    with strategy.scope():
        model = build_model(config, data)
    model.fit(data.train_dataset(global_batch_size, seed=0), ...)

Only the chief worker writes the work directory (`is_chief`); the others
write what a collective save needs into a private temporary directory
(`worker_directory`) that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from gradmix_tf.errors import ConfigError

STRATEGIES = ("none", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def make_strategy(name: str = "none", devices=None) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy called `name`.

    Args:
        name: "none" (the default strategy: one device), "mirrored" (every
            GPU of this host, or every logical CPU when there is no GPU) or
            "multi_worker" (`MultiWorkerMirroredStrategy`; the cluster comes
            from `TF_CONFIG`). Create a multi-worker strategy before any
            TensorFlow op runs.
        devices: "mirrored" only: the devices to mirror on (default above).
    """
    check_strategy(name)
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if devices is None:
            devices = [d.name for d in tf.config.list_logical_devices("GPU")]
            devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(list(devices))
    if name == "multi_worker":
        if devices is not None:
            raise ConfigError("devices applies to 'mirrored' only; workers use their local GPUs.")
        if "TF_CONFIG" not in os.environ:
            raise ConfigError(
                "distribute='multi_worker' needs the cluster in the TF_CONFIG environment "
                'variable, e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}} (index: this worker\'s place).'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise AssertionError(name)  # (checked above)


def check_strategy(name: str) -> str:
    """`name` if it is a strategy `make_strategy` makes."""
    if name not in STRATEGIES:
        known = ", ".join(map(repr, STRATEGIES))
        raise ConfigError(f"train.distribute must be one of {known}; got {name!r}.")
    return name


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the work directory: True unless it is a
    multi-worker strategy's non-chief worker."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:  # a local (single-worker) multi-worker strategy
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return task_type == "chief"
    return task_type == "worker" and task_id == 0


def task_id() -> int:
    """This worker's index in `TF_CONFIG` (0 without one)."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    return int(config.get("task", {}).get("index", 0))


def worker_directory(directory: str) -> str:
    """Where a non-chief worker writes what the chief writes to `directory`:
    a fresh temporary directory (remove it with `remove_worker_directory`)."""
    return tempfile.mkdtemp(prefix=f"worker{task_id()}_{os.path.basename(directory)}_")


def remove_worker_directory(directory: str, written: str):
    """Deletes `written` when it is a worker's private copy of `directory`."""
    if os.path.abspath(written) != os.path.abspath(directory):
        shutil.rmtree(written, ignore_errors=True)


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Shards across workers by element: each worker reads its part of every
    global batch (the streams are generated in memory, not read from files)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def check_precision(precision: str) -> str:
    """`precision` if it is a Keras dtype policy this project trains with."""
    if precision not in PRECISIONS:
        known = ", ".join(map(repr, PRECISIONS))
        raise ConfigError(f"train.precision must be one of {known}; got {precision!r}.")
    return precision


@contextlib.contextmanager
def precision_policy(precision: str = "float32"):
    """Builds the layers made inside it with the Keras dtype policy `precision`.

    "mixed_float16" and "mixed_bfloat16" compute in half precision and keep
    the variables in float32; with "mixed_float16" `compile` wraps the
    optimizer in a `LossScaleOptimizer` and `GradMixModel` scales each
    stream's loss and unscales its gradient (float32) before the mixing
    weights are solved. The previous global policy is restored on exit.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(check_precision(precision))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def jit_compile_option(value) -> bool | str:
    """`compile(jit_compile=...)` from the config's `train.jit_compile`.

    "auto" lets Keras decide (XLA on a GPU or TPU, never under a multi-device
    strategy); "on" compiles the whole step with XLA, which needs one device
    (Keras 3 does not compile a step under `tf.distribute`); "off" never.
    """
    options = {"auto": "auto", "on": True, "off": False, True: True, False: False}
    if value not in options:
        raise ConfigError(f"train.jit_compile must be 'auto', 'on' or 'off', got {value!r}.")
    value = options[value]
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if value is True and replicas > 1:
        raise ConfigError(
            f"train.jit_compile='on' compiles the whole step with XLA, which Keras 3 cannot do "
            f"under tf.distribute ({replicas} replicas): use 'auto' or 'off' (the mixing-weight "
            "solve alone is still compiled with step.jit_mixing_weights=True)."
        )
    return value


# --- Inside a replica's step -------------------------------------------------------------
def num_replicas() -> int:
    """The replicas training in sync under the current strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def all_reduce_sum(tensors) -> list:
    """The sums of `tensors` over every replica (the tensors themselves on one)."""
    if num_replicas() == 1:
        return list(tensors)
    context = tf.distribute.get_replica_context()
    return context.all_reduce(tf.distribute.ReduceOp.SUM, list(tensors))


def reducible_logs(logs: dict) -> dict:
    """A step's `logs` as Keras can average them across workers.

    Under MultiWorkerMirroredStrategy, Keras 3 averages each log of a step
    over its axis 0 (`reduce_per_replica`), which fails on scalars
    (tensorflow/tensorflow#72388): there every log gets a leading axis of 1,
    which the average removes again.
    """
    if not isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}


def merges_updates() -> bool:
    """Whether the strategy in scope synchronises an optimizer step with `merge_call`
    (MirroredStrategy): a condition around the step then needs `replica_cond`."""
    return tf.distribute.has_strategy() and not (
        tf.__internal__.distribute.strategy_supports_no_merge_call()
    )


def replica_cond(predicate, true_fn, false_fn, true_args=(), false_args=()):
    """`true_fn(*true_args)` if `predicate` else `false_fn(*false_args)`, from inside a replica.

    `predicate` and `true_args` must be the same on every replica (all-reduced);
    `false_fn` (e.g. an optimizer step) runs on every replica with its own
    `false_args`. Under a strategy that synchronises replicas with
    `merge_call` (MirroredStrategy), a `tf.cond` around an optimizer step must
    run in cross-replica context, with `false_fn` called for each replica, as
    Keras's `LossScaleOptimizer` does; elsewhere it is a plain `tf.cond`.
    """
    if not merges_updates():
        tf.cond(predicate, lambda: true_fn(*true_args), lambda: false_fn(*false_args))
        return

    def cross_replica(strategy, predicate, true_args, false_args):
        local = strategy.experimental_local_results  # the same on every replica: take the first
        predicate = local(predicate)[0]
        true_args = [local(arg)[0] for arg in true_args]

        def each_replica():
            strategy.extended.call_for_each_replica(false_fn, false_args)

        tf.cond(predicate, lambda: true_fn(*true_args), each_replica)

    tf.distribute.get_replica_context().merge_call(
        cross_replica, args=(predicate, tuple(true_args), tuple(false_args))
    )
