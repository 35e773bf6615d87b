"""Test configuration: quiet TensorFlow's C++ and Python logs before it is imported."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")
