"""Networks: the trunks f_theta a config names (`config.model.trunk`).

- `trunks.py`: `small_cnn`, the trunk of the digit tasks (images `[B, H, W, C]`);
- `backbones.py`: `keras_backbone`, a pretrained `keras.applications` (or
  keras-hub) image backbone with its own preprocessing and a feature layer;
- `video_trunks.py`: `video_cnn` and `frame_encoder`, trunks of clips
  `[B, T, H, W, C]`, and their layers.

`TRUNKS` maps a trunk's name to the function that builds it; `build_trunk`
builds one by name (`trunk_builder`: its function, checked). Any other Keras layer works as a trunk too: pass it to
`GradMixModel`, or add it to `TRUNKS` to name it in configs.
"""

from __future__ import annotations

import inspect

from gradmix_tf.errors import ConfigError
from gradmix_tf.networks.backbones import keras_backbone
from gradmix_tf.networks.trunks import small_cnn
from gradmix_tf.networks.video_trunks import frame_encoder, video_cnn

TRUNKS = {
    "small_cnn": small_cnn,
    "keras_backbone": keras_backbone,
    "video_cnn": video_cnn,
    "frame_encoder": frame_encoder,
}
"""Trunk name (`config.model.trunk`) -> the function that builds the trunk."""


def trunk_builder(name: str):
    """The function that builds trunk `name` (see `TRUNKS`).

    Raises:
        ConfigError: when `name` is not a known trunk.
    """
    if name not in TRUNKS:
        raise ConfigError(f"unknown trunk {name!r}; known trunks: {', '.join(TRUNKS)}.")
    return TRUNKS[name]


def build_trunk(name: str, input_shape=None, **kwargs):
    """Builds trunk `name` with the keyword arguments of its function; a trunk built for
    a fixed input (a keras.applications backbone) gets `input_shape` unless given one."""
    builder = trunk_builder(name)
    if input_shape is not None and "input_shape" in inspect.signature(builder).parameters:
        kwargs.setdefault("input_shape", tuple(input_shape))
    return builder(**kwargs)


__all__ = ["TRUNKS", "build_trunk", "trunk_builder"]
