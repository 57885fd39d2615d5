"""A procedurally generated video benchmark whose labels need temporal reasoning.

Every clip shows one main object moving over a textured, noisy background among smaller
distractors. The label is the kind of motion of the main object. Classes come in pairs that
are each other's time reversal (right/left, down/up, clockwise/counter-clockwise spin, grow/
shrink, fade in/out, clockwise/counter-clockwise orbit), and every nuisance parameter is
drawn from a distribution that is symmetric under reversal, so a reversed clip is a valid
clip of the partner class and a single frame carries no information about the label.

Clips are deterministic functions of (seed, split, index) and can be rendered at any
number of frames and size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from .transforms import normalize

__all__ = ["SyntheticMotion", "CLASSES", "REVERSED_CLASS", "SPLITS", "render_clip"]

CLASSES = (
    "move_right",
    "move_left",
    "move_down",
    "move_up",
    "spin_clockwise",
    "spin_counterclockwise",
    "grow",
    "shrink",
    "fade_in",
    "fade_out",
    "orbit_clockwise",
    "orbit_counterclockwise",
)
# Class k reversed in time is class k ^ 1.
REVERSED_CLASS = tuple(k ^ 1 for k in range(len(CLASSES)))
SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES = {"train": 9600, "val": 600, "test": 1200}
_SHAPES = ("ellipse", "rectangle", "triangle", "diamond")


@dataclass
class _Track:
    """Per-frame pose of one object: centre (x, y), half-sizes (a, b), angle, opacity."""

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: np.ndarray
    alpha: np.ndarray
    shape: str
    color: np.ndarray


def _ramp(frames: int, start: float, stop: float) -> np.ndarray:
    """Values from start to stop at a constant rate over the clip."""
    return np.linspace(start, stop, frames)


# Outward edge normals of a unit equilateral triangle (circumradius 1, inradius 1/2).
_TRIANGLE_NORMALS = np.array([[math.cos(t), math.sin(t)] for t in (math.pi / 3, math.pi, -math.pi / 3)])


def _shape_field(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A normalised distance that is < 1 inside a unit shape (local coordinates), 1 on its outline."""
    if shape == "ellipse":
        return np.sqrt(u * u + v * v)
    if shape == "rectangle":
        return np.maximum(np.abs(u), np.abs(v))
    if shape == "diamond":
        return np.abs(u) + np.abs(v)
    return np.maximum.reduce([(nx * u + ny * v) * 2.0 for nx, ny in _TRIANGLE_NORMALS])


def _main_track(rng: np.random.Generator, label: int, frames: int) -> _Track:
    """Pose of the main object over time, in units of the frame size (0..1). Every quantity
    that changes over time is a ramp centred on the clip's middle whose direction is the
    class's sign: from the same random draws, class 2k+1 is exactly class 2k played backwards."""
    kind, backwards = divmod(label, 2)
    sign = -1.0 if backwards else 1.0
    size = rng.uniform(0.11, 0.18)
    aspect = rng.uniform(1.8, 2.8)  # elongated, so that spin is visible
    a = np.full(frames, size * aspect**0.5)
    b = np.full(frames, size / aspect**0.5)
    angle = np.full(frames, rng.uniform(0, 2 * math.pi))
    alpha = np.ones(frames)
    # A slow drift in a random direction on every class: motion alone is not the label.
    drift, heading = rng.uniform(0.0, 0.06), rng.uniform(0, 2 * math.pi)
    x = rng.uniform(0.3, 0.7) + sign * _ramp(frames, -drift / 2, drift / 2) * math.cos(heading)
    y = rng.uniform(0.3, 0.7) + sign * _ramp(frames, -drift / 2, drift / 2) * math.sin(heading)

    if kind in (0, 1):  # translation along x (kind 0) or y (kind 1)
        distance = rng.uniform(0.3, 0.5)
        path = sign * _ramp(frames, -distance / 2, distance / 2)
        if kind == 0:
            x = x + path
        else:
            y = y + path
    elif kind == 2:  # spin in place, 25-55 degrees a frame: under 90, so the direction is unambiguous
        turn = (frames - 1) * math.radians(rng.uniform(25, 55))
        angle = angle + sign * _ramp(frames, -turn / 2, turn / 2)
    elif kind == 3:  # grow / shrink
        half_log = math.log(rng.uniform(2.0, 3.0)) / 2
        scale = np.exp(sign * _ramp(frames, -half_log, half_log))
        a, b = a * scale, b * scale
    elif kind == 4:  # fade in / out
        low = rng.uniform(0.0, 0.15)
        alpha = _ramp(frames, low, 1.0) if sign > 0 else _ramp(frames, 1.0, low)
    else:  # orbit; image y points down, so increasing phase turns clockwise on screen
        radius = rng.uniform(0.16, 0.24)
        span = rng.uniform(1.0 * math.pi, 1.6 * math.pi)
        phase = rng.uniform(0, 2 * math.pi) + sign * _ramp(frames, -span / 2, span / 2)
        x = x + radius * np.cos(phase)
        y = y + radius * np.sin(phase)
    color = rng.uniform(0.0, 1.0, 3)
    color[rng.integers(3)] = rng.choice([0.05, 0.95])  # saturated, so it stands out
    return _Track(x, y, a, b, angle, alpha, str(rng.choice(_SHAPES)), color)


def _distractor_track(rng: np.random.Generator, frames: int) -> _Track:
    size = rng.uniform(0.03, 0.06)
    aspect = rng.uniform(1.0, 2.0)
    start = rng.uniform(0.1, 0.9, 2)
    heading = rng.uniform(0, 2 * math.pi)
    distance = rng.uniform(0.0, 0.25)
    t = np.linspace(-0.5, 0.5, frames)
    spin = rng.uniform(-1.0, 1.0)
    return _Track(
        start[0] + distance * math.cos(heading) * t,
        start[1] + distance * math.sin(heading) * t,
        np.full(frames, size * aspect**0.5),
        np.full(frames, size / aspect**0.5),
        rng.uniform(0, 2 * math.pi) + spin * t,
        np.ones(frames) * rng.uniform(0.6, 1.0),
        str(rng.choice(_SHAPES)),
        rng.uniform(0.0, 1.0, 3),
    )


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth coloured texture: a gradient plus bilinearly upsampled coarse noise."""
    base = rng.uniform(0.2, 0.8, 3)
    grid = rng.normal(0, rng.uniform(0.05, 0.15), (3, 6, 6))
    coarse = torch.nn.functional.interpolate(
        torch.from_numpy(grid)[None].float(), size=(height, width), mode="bilinear", align_corners=False
    )[0].numpy()
    ys, xs = np.mgrid[0:height, 0:width]
    tilt = rng.normal(0, 0.1, (3, 2))
    gradient = tilt[:, :1, None] * (xs / width - 0.5) + tilt[:, 1:, None] * (ys / height - 0.5)
    return (base[:, None, None] + coarse + gradient).astype(np.float32)


def render_clip(seed: int, split: int, index: int, label: int, frames: int, height: int, width: int) -> np.ndarray:
    """Render one clip as float32 (3, T, H, W) in [0, 1]."""
    rng = np.random.default_rng([seed, split, index, label])
    background = _background(rng, height, width)
    tracks = [_distractor_track(rng, frames) for _ in range(rng.integers(1, 3))]
    main = _main_track(rng, label, frames)
    tracks.insert(int(rng.integers(len(tracks) + 1)), main)  # random depth order
    scale = float(min(height, width))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ys, xs = (ys + 0.5) / scale, (xs + 0.5) / scale
    edge = 1.0 / scale  # about one pixel of soft edge
    noise_level = rng.uniform(0.02, 0.06)
    clip = np.empty((3, frames, height, width), np.float32)
    for t in range(frames):
        frame = background.copy()
        for tr in tracks:
            c, s = math.cos(tr.angle[t]), math.sin(tr.angle[t])
            px, py = xs - tr.x[t] * width / scale, ys - tr.y[t] * height / scale
            u, v = (c * px + s * py) / tr.a[t], (-s * px + c * py) / tr.b[t]
            field = _shape_field(tr.shape, u, v)
            cover = np.clip((1.0 - field) * min(tr.a[t], tr.b[t]) / edge + 0.5, 0.0, 1.0) * tr.alpha[t]
            frame += cover[None] * (tr.color[:, None, None] - frame)
        clip[:, t] = frame + rng.normal(0, noise_level, frame.shape).astype(np.float32)
    return np.clip(clip, 0.0, 1.0)


class SyntheticMotion(Dataset):
    """The built-in temporal benchmark. Items are `(clip, label)` with `clip` a normalised
    float tensor (3, T, H, W) (mean 0.45, std 0.225, as for Kinetics) and balanced labels.

    `reverse=True` plays every clip backwards and `single_frame=True` repeats its middle frame:
    the label stays that of the original clip (used to show the task needs temporal order).
    """

    classes = CLASSES

    def __init__(
        self,
        split: str = "train",
        frames: int = 8,
        size: int = 96,
        num_clips: int | None = None,
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
        reverse: bool = False,
        single_frame: bool = False,
    ):
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        if frames < 2:
            raise InputError(f"the synthetic benchmark needs at least 2 frames per clip, got {frames}")
        self.split, self.frames, self.seed = split, frames, seed
        self.height, self.width = height or size, width or size
        if min(self.height, self.width) < 16:
            raise InputError(f"frames of at least 16x16 pixels are needed, got {self.height}x{self.width}")
        self.num_clips = DEFAULT_SIZES[split] if num_clips is None else num_clips
        self.reverse, self.single_frame = reverse, single_frame
        self.labels = [i % len(CLASSES) for i in range(self.num_clips)]

    def __len__(self) -> int:
        return self.num_clips

    def raw_clip(self, index: int) -> np.ndarray:
        """The clip as 8-bit frames (T, H, W, 3), like decoded video, before the reverse and
        single-frame views."""
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip {index} out of range for {self.num_clips} clips")
        clip = render_clip(
            self.seed, SPLITS[self.split], index, self.labels[index], self.frames, self.height, self.width
        )
        return np.round(clip.transpose(1, 2, 3, 0) * 255).astype(np.uint8)

    def __getitem__(self, index: int):
        frames = self.raw_clip(index)
        if self.reverse:
            frames = frames[::-1]
        if self.single_frame:
            frames = np.repeat(frames[self.frames // 2 : self.frames // 2 + 1], self.frames, axis=0)
        return normalize(torch.from_numpy(np.ascontiguousarray(frames))), self.labels[index]

    def item_name(self, index: int) -> str:
        return f"synthetic {self.split} clip {index}"

    def describe(self) -> str:
        return (
            f"synthetic:{self.split} ({self.num_clips} clips, {self.frames}x{self.height}x{self.width}, "
            f"seed {self.seed})"
        )
