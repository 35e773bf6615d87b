"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 train what one process trains.

The smoke digits run (`configs/digits.py:smoke`, two epochs, pseudo-labels
refreshed after each) as two workers (`--distribute=multi_worker`, `TF_CONFIG`),
each one CPU replica with half of every global batch, and as one process. The
chief writes the work directory (checkpoints, results, export); the other
worker leaves nothing behind; the final weights of both runs agree.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [
    sys.executable,
    "-m",
    "launch.train",
    "--config=configs/digits.py:smoke",
    "--config.train.steps=20",
    "--config.train.verbose=0",
]
MODEL_PREFIX = "model/"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start(workdir: str, tmpdir: str, extra=(), tf_config=None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=tmpdir)
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    os.makedirs(tmpdir, exist_ok=True)
    return subprocess.Popen(
        [*TRAIN, f"--workdir={workdir}", *extra],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: int = 240) -> str:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    return stdout


def model_values(workdir: str) -> dict:
    """The model's variables in the newest checkpoint of a work directory."""
    path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    assert path is not None and path.endswith("ckpt-20"), path
    reader = tf.train.load_checkpoint(path)
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith(MODEL_PREFIX)]
    return {n: reader.get_tensor(n) for n in names}


@pytest.mark.slow  # three processes (two workers and the reference): ~30-60 s
def test_two_workers_train_what_one_process_trains(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workdir, single = str(tmp_path / "multi_worker"), str(tmp_path / "single")
    workers = [
        start(
            workdir,
            str(tmp_path / f"tmp{i}"),
            ["--distribute=multi_worker"],
            {"cluster": cluster, "task": {"type": "worker", "index": i}},
        )
        for i in range(2)
    ]
    reference = start(single, str(tmp_path / "tmp_single"))
    outputs = [finish(p) for p in workers]
    finish(reference)

    # Both workers report the same evaluation; only the chief wrote.
    results = [json.loads(out[out.index("{") :]) for out in outputs]
    assert results[0]["target_test_accuracy"] == results[1]["target_test_accuracy"]
    assert results[0]["steps"] == results[1]["steps"] == 20
    for name in ("config.json", "results.json", "train_log.csv", "export", "checkpoints"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert os.listdir(tmp_path / "tmp1") == [], "the non-chief worker left files behind"
    assert results[0]["pseudo_label_acceptance"] > 0.0  # the refresh ran under the strategy

    # The same model as one process with the same global batch and seed.
    got, expected = model_values(workdir), model_values(single)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        if name.startswith(MODEL_PREFIX + "pseudo_label"):
            continue  # the table is compared below (labels are exact, weights close)
        np.testing.assert_allclose(got[name], value, atol=1e-4, rtol=1e-4, err_msg=name)
    labels = MODEL_PREFIX + "pseudo_labels/.ATTRIBUTES/VARIABLE_VALUE"
    np.testing.assert_array_equal(got[labels], expected[labels])
    with open(os.path.join(single, "results.json")) as f:
        single_results = json.load(f)
    assert abs(results[0]["target_test_accuracy"] - single_results["target_test_accuracy"]) <= 0.01
